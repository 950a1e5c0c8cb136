"""N-way K-shot episodes sampled on device from a class-indexed image array."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from metajax._src.core.checks import check_int
from metajax._src.core.types import TaskBatch


def _subset(key: jax.Array, n: int, k: int, batch: tuple[int, ...] = ()) -> jax.Array:
    """``k`` distinct indices of ``range(n)`` in uniformly random order (per ``batch`` entry).

    The positions of the ``k`` largest of ``n`` i.i.d. uniforms: always distinct, and a
    uniformly random ordered subset up to float ties (negligible). Compiles faster than
    ``jax.random.choice(..., replace=False)``, a multi-round sort-based permutation.
    """
    return jax.lax.top_k(jax.random.uniform(key, (*batch, n)), k)[1].astype(jnp.int32)


def rot90(images: jax.Array, k: jax.Array) -> jax.Array:
    """Rotates ``[..., H, W, C]`` images counter-clockwise by ``k`` (traced) quarter turns."""
    branches = [lambda a, i=i: jnp.rot90(a, i, axes=(-3, -2)) for i in range(4)]
    return jax.lax.switch(k, branches, images)


def episodes(
    key: jax.Array,
    dataset_images,
    n_tasks: int,
    *,
    n_way: int,
    k_shot: int,
    n_query: int,
    rotate: bool = False,
    invert: bool = False,
) -> TaskBatch:
    """Samples a meta-batch of N-way K-shot classification episodes, all at once.

    Pure and jittable (``n_tasks``, ``n_way``, ``k_shot``, ``n_query`` and the flags are
    static: bind them with ``functools.partial``). For each of the ``n_tasks`` episodes
    (``jax.vmap``, no Python loop): ``n_way`` distinct classes are drawn, in random order,
    and class ``i`` of that order gets label ``i`` (so the class-to-label map is a fresh
    random permutation per episode); ``k_shot + n_query`` distinct examples are drawn per
    class, the first ``k_shot`` for the support set and the rest for the query set; the
    examples of each set are then shuffled.

    Args:
        key: PRNG key; the episodes are a deterministic function of it.
        dataset_images: ``[n_classes, n_examples, H, W, C]``, ``uint8`` (scaled by 1/255) or
            float (taken as already in [0, 1]); a ``jax.Array`` kept on device, or numpy.
        n_tasks: episodes in the meta-batch.
        n_way: classes per episode.
        k_shot: support examples per class.
        n_query: query examples per class.
        rotate: rotate all examples of a class within an episode by the same random multiple
            of 90 degrees (the MAML Omniglot augmentation; needs square images).
        invert: return ``1 - x`` (Omniglot strokes become 1 on a 0 background, as in MAML).

    Returns:
        ``TaskBatch(support=(x, y), query=(x, y))`` with ``x`` float32
        ``[n_tasks, n_way * k_shot (or n_query), H, W, C]`` in [0, 1] and ``y`` int32.

    Raises:
        ValueError: ``n_way`` above the number of classes, ``k_shot + n_query`` above the
            examples per class, bad counts or image shapes (each naming the argument).

    Examples:
        >>> import functools, jax, jax.numpy as jnp
        >>> images = jnp.zeros((10, 20, 28, 28, 1), jnp.uint8)  # e.g. jnp.asarray(ds.images)
        >>> sample = jax.jit(functools.partial(episodes, n_tasks=4, n_way=5, k_shot=1,
        ...                                    n_query=15))
        >>> batch = sample(jax.random.PRNGKey(0), images)
        >>> batch.support[0].shape, batch.query[1].shape
        ((4, 5, 28, 28, 1), (4, 75))
    """
    n_tasks = check_int("n_tasks", n_tasks, 1)
    n_way = check_int("n_way", n_way, 1)
    k_shot = check_int("k_shot", k_shot, 1)
    n_query = check_int("n_query", n_query, 1)
    shape = np.shape(dataset_images)
    if len(shape) != 5:
        raise ValueError(f"`dataset_images` must be [n_classes, n_examples, H, W, C]; got shape "
                         f"{shape}. Add a channel axis (images[..., None]) for grayscale.")
    n_classes, n_examples, height, width, _ = shape
    if n_way > n_classes:
        raise ValueError(f"`n_way` ({n_way}) is larger than the number of classes in "
                         f"`dataset_images` ({n_classes}).")
    if k_shot + n_query > n_examples:
        raise ValueError(f"`k_shot` + `n_query` ({k_shot} + {n_query}) is larger than the "
                         f"number of examples per class in `dataset_images` ({n_examples}).")
    if rotate and height != width:
        raise ValueError(f"`rotate=True` needs square images; `dataset_images` are "
                         f"{height}x{width}.")
    images = jnp.asarray(dataset_images)
    n_per_class = k_shot + n_query

    def one_episode(key):
        k_cls, k_ex, k_rot, k_sup, k_qry = jax.random.split(key, 5)
        classes = _subset(k_cls, n_classes, n_way)
        examples = _subset(k_ex, n_examples, n_per_class, batch=(n_way,))
        x = images[classes[:, None], examples]  # [n_way, k_shot + n_query, H, W, C]
        if rotate:
            quarter_turns = jax.random.randint(k_rot, (n_way,), 0, 4)
            x = jax.vmap(rot90)(x, quarter_turns)
        y = jnp.broadcast_to(jnp.arange(n_way, dtype=jnp.int32)[:, None], (n_way, n_per_class))

        def take(part, shuffle_key):
            xs = x[:, part].reshape(-1, *x.shape[2:])
            ys = y[:, part].reshape(-1)
            order = _subset(shuffle_key, ys.shape[0], ys.shape[0])
            return xs[order], ys[order]

        return take(slice(0, k_shot), k_sup), take(slice(k_shot, None), k_qry)

    support, query = jax.vmap(one_episode)(jax.random.split(key, n_tasks))

    def to_float(pair):
        x, y = pair
        x = x.astype(jnp.float32)
        if jnp.issubdtype(images.dtype, jnp.integer):
            x = x / 255.0
        return (1.0 - x if invert else x), y

    return TaskBatch(support=to_float(support), query=to_float(query))
