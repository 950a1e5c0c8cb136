"""Disjoint meta-train / meta-validation / meta-test task streams."""

from __future__ import annotations

import jax

SPLITS = ("train", "val", "test")


def split_key(seed: int, split: str) -> jax.Array:
    """Returns the root PRNG key of one task stream.

    The three streams of a seed are derived with ``fold_in`` on distinct integers, so
    meta-train, meta-validation and meta-test tasks come from disjoint random streams.

    Args:
        seed: the experiment seed (a Python int, or a traced integer inside ``vmap``).
        split: one of ``"train"``, ``"val"``, ``"test"``.
    """
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}; got {split!r}.")
    return jax.random.fold_in(jax.random.PRNGKey(seed), 1000 + SPLITS.index(split))
