"""Few-point linear regression tasks: ``y = w . x + b + noise``."""

from __future__ import annotations

import jax

from metajax._src.core.checks import check_int
from metajax._src.core.types import TaskBatch


def linear_regression(
    key: jax.Array,
    n_tasks: int,
    *,
    k_shot: int = 5,
    n_query: int = 10,
    dim: int = 1,
    w_mean: float = 0.0,
    w_std: float = 1.0,
    b_mean: float = 0.0,
    b_std: float = 1.0,
    noise_std: float = 0.1,
    x_range: tuple[float, float] = (-5.0, 5.0),
) -> TaskBatch:
    """Samples linear regression tasks; jittable.

    Each task draws ``w ~ N(w_mean, w_std^2 I_dim)`` and ``b ~ N(b_mean, b_std^2)``; inputs are
    ``x ~ U[x_range]^dim`` and targets ``y = w . x + b + eps`` with ``eps ~ N(0, noise_std^2)``.

    Args:
        key: PRNG key.
        n_tasks: number of tasks.
        k_shot: support points per task.
        n_query: query points per task.
        dim: input dimension.
        w_mean: mean of every weight.
        w_std: standard deviation of every weight.
        b_mean: mean of the bias.
        b_std: standard deviation of the bias.
        noise_std: observation noise.
        x_range: range of the uniform inputs.

    Returns:
        A :class:`TaskBatch` with ``support = (x [n_tasks, k_shot, dim], y [n_tasks, k_shot, 1])``
        and the query likewise with ``n_query`` points.

    Examples:
        >>> import jax
        >>> linear_regression(jax.random.PRNGKey(0), 3, dim=2).query[0].shape
        (3, 10, 2)
    """
    for name, value in (("n_tasks", n_tasks), ("k_shot", k_shot), ("n_query", n_query),
                        ("dim", dim)):
        check_int(name, value, 1)
    k_w, k_b, k_x, k_eps = jax.random.split(key, 4)
    n = k_shot + n_query
    w = w_mean + w_std * jax.random.normal(k_w, (n_tasks, dim, 1))
    b = b_mean + b_std * jax.random.normal(k_b, (n_tasks, 1, 1))
    x = jax.random.uniform(k_x, (n_tasks, n, dim), minval=x_range[0], maxval=x_range[1])
    y = x @ w + b + noise_std * jax.random.normal(k_eps, (n_tasks, n, 1))
    return TaskBatch(support=(x[:, :k_shot], y[:, :k_shot]), query=(x[:, k_shot:], y[:, k_shot:]))
