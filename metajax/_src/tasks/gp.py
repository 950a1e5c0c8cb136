"""Gaussian-process regression tasks (the neural-process benchmark) and their exact oracle.

Each task is a function drawn from a GP with an exponentiated-quadratic (EQ) kernel
``k(x, x') = sigma_f**2 exp(-|x - x'|**2 / (2 lengthscale**2))``, observed with Gaussian noise
of standard deviation ``noise`` (DeepMind's neural-process notebooks: lengthscale 0.4,
``sigma_f`` 1, noise 0.02, x in [-2, 2]). :func:`gp_posterior` is the exact predictive
distribution under the true kernel: the best any model can do on these tasks.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metajax._src.core.checks import check_int
from metajax._src.core.types import Points, TaskBatch


class GPKernel(NamedTuple):
    """Per-task EQ-kernel hyper-parameters (arrays with the task axis first, or scalars)."""

    lengthscale: jax.Array
    sigma_f: jax.Array


def eq_kernel(x1: jax.Array, x2: jax.Array, lengthscale, sigma_f) -> jax.Array:
    """The EQ kernel matrix ``[n, m]`` between ``x1 [n, d]`` and ``x2 [m, d]``.

    Examples:
        >>> import jax.numpy as jnp
        >>> k = eq_kernel(jnp.zeros((1, 1)), jnp.array([[0.0], [1.0]]), 1.0, 2.0)
        >>> [round(float(v), 4) for v in k[0]]
        [4.0, 2.4261]
    """
    d2 = jnp.sum(((x1[:, None, :] - x2[None, :, :]) / lengthscale) ** 2, axis=-1)
    return sigma_f**2 * jnp.exp(-0.5 * d2)


def _range(name: str, value) -> tuple[float, float]:
    lo, hi = (value, value) if isinstance(value, (int, float)) else tuple(value)
    if not 0 < lo <= hi:
        raise ValueError(f"`{name}` must be a positive float or a (low, high) range with "
                         f"0 < low <= high; got {value!r}.")
    return float(lo), float(hi)


def _count_range(name: str, value, low: int) -> tuple[int, int]:
    lo, hi = value if isinstance(value, tuple) else (value, value)
    check_int(f"{name}[0]", lo, low)
    check_int(f"{name}[1]", hi, lo)
    return int(lo), int(hi)


def gp_curves(
    key: jax.Array,
    n_tasks: int,
    *,
    context: int | tuple[int, int] = (3, 10),
    extra_targets: int | tuple[int, int] = (2, 10),
    grid: int | None = None,
    lengthscale: float | tuple[float, float] = 0.4,
    sigma_f: float | tuple[float, float] = 1.0,
    noise: float = 0.02,
    x_range: tuple[float, float] = (-2.0, 2.0),
    return_kernel: bool = False,
) -> TaskBatch | tuple[TaskBatch, GPKernel]:
    """Samples GP regression tasks as context / target :class:`metajax.Points`; jittable.

    Every task draws its own number of context points, uniform in ``context`` (inclusive), and
    holds them in ``max(context)`` padded slots (``mask`` marks the real ones). Training tasks
    (``grid=None``) have targets = the context points plus a number of further points uniform in
    ``extra_targets``, all at inputs uniform in ``x_range``. Test tasks (``grid=n``) observe the
    function on ``n`` evenly spaced inputs of ``x_range``, all of them targets, with a random
    subset as the context, as in DeepMind's notebooks (400 points).

    Args:
        key: PRNG key.
        n_tasks: number of tasks.
        context: number of context points per task, or a ``(low, high)`` range.
        extra_targets: number of target points beyond the context, or a range (training tasks).
        grid: number of evenly spaced target inputs (test tasks); ``None`` for training tasks.
        lengthscale: the kernel's lengthscale, or a ``(low, high)`` range to draw it per task.
        sigma_f: the kernel's signal standard deviation, or a range to draw it per task.
        noise: observation-noise standard deviation (added to every ``y``).
        x_range: the input interval.
        return_kernel: also return the tasks' :class:`GPKernel`.

    Returns:
        A ``TaskBatch(support=Points, query=Points)``; with ``return_kernel``, ``(tasks,
        kernel)``. Shapes: context ``[n_tasks, max(context), 1]``, targets ``[n_tasks, n, 1]``
        with ``n = max(context) + max(extra_targets)`` or ``grid``.

    Examples:
        >>> import jax
        >>> tasks = gp_curves(jax.random.PRNGKey(0), 4)
        >>> tasks.support.x.shape, tasks.query.x.shape
        ((4, 10, 1), (4, 20, 1))
        >>> bool((tasks.support.mask.sum(1) >= 3).all())
        True
    """
    check_int("n_tasks", n_tasks, 1)
    c_lo, c_hi = _count_range("context", context, 1)
    ls_lo, ls_hi = _range("lengthscale", lengthscale)
    sf_lo, sf_hi = _range("sigma_f", sigma_f)
    if not noise > 0:
        raise ValueError(f"`noise` must be a positive float; got {noise!r}.")
    if grid is not None:
        check_int("grid", grid, c_hi)
    k_ls, k_sf, k_x, k_nc, k_nt, k_y = jax.random.split(key, 6)
    kernel = GPKernel(jax.random.uniform(k_ls, (n_tasks,), minval=ls_lo, maxval=ls_hi),
                      jax.random.uniform(k_sf, (n_tasks,), minval=sf_lo, maxval=sf_hi))
    n_context = jax.random.randint(k_nc, (n_tasks,), c_lo, c_hi + 1)
    if grid is None:
        t_lo, t_hi = _count_range("extra_targets", extra_targets, 0)
        n = c_hi + t_hi
        x = jax.random.uniform(k_x, (n_tasks, n, 1), minval=x_range[0], maxval=x_range[1])
        n_target = n_context + jax.random.randint(k_nt, (n_tasks,), t_lo, t_hi + 1)
        order = jnp.broadcast_to(jnp.arange(n), (n_tasks, n))
    else:
        n = grid
        step = (x_range[1] - x_range[0]) / grid
        x = jnp.broadcast_to((x_range[0] + step * jnp.arange(grid))[None, :, None],
                             (n_tasks, grid, 1))
        n_target = jnp.full((n_tasks,), grid)
        order = jax.vmap(lambda k: jax.random.permutation(k, grid))(jax.random.split(k_x,
                                                                                     n_tasks))
    y = jax.vmap(_sample_function, in_axes=(0, 0, 0, 0, None))(
        jax.random.split(k_y, n_tasks), x, kernel.lengthscale, kernel.sigma_f, noise)
    slots = jnp.arange(n)
    xc = jnp.take_along_axis(x, order[:, :c_hi, None], axis=1)
    yc = jnp.take_along_axis(y, order[:, :c_hi, None], axis=1)
    tasks = TaskBatch(
        support=Points(xc, yc, slots[None, :c_hi] < n_context[:, None]),
        query=Points(x, y, slots[None, :] < n_target[:, None]),
    )
    return (tasks, kernel) if return_kernel else tasks


def _sample_function(key, x, lengthscale, sigma_f, noise):
    cov = eq_kernel(x, x, lengthscale, sigma_f) + noise**2 * jnp.eye(x.shape[0])
    chol = jnp.linalg.cholesky(cov)
    return chol @ jax.random.normal(key, (x.shape[0], 1))


def gp_posterior(context: Points, x_target: jax.Array, lengthscale, sigma_f,
                 noise: float) -> tuple[jax.Array, jax.Array]:
    """The exact GP predictive distribution of noisy targets given one task's context.

    Padded context entries (``mask`` false) are ignored.

    Args:
        context: one task's context ``Points`` (``x [n, dx]``, ``y [n, 1]``, ``mask [n]``).
        x_target: ``[m, dx]`` target inputs.
        lengthscale: the true kernel's lengthscale.
        sigma_f: the true kernel's signal standard deviation.
        noise: the observation-noise standard deviation.

    Returns:
        ``(mean, std)`` of ``y`` at each target, each ``[m, 1]``.

    Examples:
        >>> import jax.numpy as jnp
        >>> c = Points(jnp.zeros((2, 1)), jnp.ones((2, 1)), jnp.array([True, False]))
        >>> mean, std = gp_posterior(c, jnp.zeros((1, 1)), 1.0, 1.0, 0.1)
        >>> round(float(mean[0, 0]), 4)  # 1 / (1 + 0.01)
        0.9901
    """
    mask = jnp.asarray(context.mask, bool)
    pair = mask[:, None] & mask[None, :]
    k_cc = eq_kernel(context.x, context.x, lengthscale, sigma_f)
    eye = jnp.eye(mask.shape[0])
    a = jnp.where(pair, k_cc + noise**2 * eye, eye)
    k_tc = eq_kernel(x_target, context.x, lengthscale, sigma_f) * mask[None, :]
    chol = jnp.linalg.cholesky(a)
    y = jnp.where(mask[:, None], context.y, 0.0)
    alpha = jax.scipy.linalg.cho_solve((chol, True), y)
    mean = k_tc @ alpha
    v = jax.scipy.linalg.solve_triangular(chol, k_tc.T, lower=True)
    var = sigma_f**2 + noise**2 - jnp.sum(v**2, axis=0)
    return mean, jnp.sqrt(jnp.maximum(var, 1e-12))[:, None]
