"""Test helpers: tree comparison and finite-difference gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


def assert_trees_all_close(a, b, rtol: float = 1e-6, atol: float = 1e-6) -> None:
    """Asserts two pytrees have the same structure, leaf shapes and (close) leaf values."""
    sa, sb = jax.tree.structure(a), jax.tree.structure(b)
    assert sa == sb, f"tree structures differ: {sa} vs {sb}"
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b),
                            strict=True):
        x, y = np.asarray(x), np.asarray(y)
        name = jax.tree_util.keystr(path) or "<root>"
        assert x.shape == y.shape, f"{name}: shape {x.shape} vs {y.shape}"
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=name)


def fd_gradient(f, params, eps: float = 1e-5):
    """Central finite-difference gradient of a scalar ``f(params)`` w.r.t. every coordinate.

    All ``2 * size`` perturbed evaluations run in one vmapped, jitted call. Returns a pytree
    shaped like ``params``.
    """
    flat, unravel = ravel_pytree(params)
    eye = jnp.eye(flat.size, dtype=flat.dtype)
    flat_f = jax.jit(jax.vmap(lambda v: f(unravel(v))))
    plus, minus = flat_f(flat + eps * eye), flat_f(flat - eps * eye)
    return unravel((plus - minus) / (2 * eps))


def tree_dot(a, b):
    """Sum over leaves of the elementwise product of two pytrees of the same structure."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                               strict=True))


def tree_sub(a, b):
    return jax.tree.map(lambda x, y: x - y, a, b)
