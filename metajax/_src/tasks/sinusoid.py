"""Sinusoid regression tasks (Finn et al., 2017, Sec. 5.1)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metajax._src.core.checks import check_int
from metajax._src.core.types import TaskBatch


class SinusoidParams(NamedTuple):
    """Per-task amplitude and phase; ``y = amplitude * sin(x - phase)``."""

    amplitude: jax.Array
    phase: jax.Array


def sinusoid_curve(params: SinusoidParams, x: jax.Array) -> jax.Array:
    """Evaluates each task's true function at ``x`` (shape ``[tasks, n, 1]``)."""
    return params.amplitude[:, None, None] * jnp.sin(x - params.phase[:, None, None])


def sinusoid(
    key: jax.Array,
    n_tasks: int,
    *,
    k_shot: int = 10,
    n_query: int = 10,
    amplitude: tuple[float, float] = (0.1, 5.0),
    phase: tuple[float, float] = (0.0, jnp.pi),
    x_range: tuple[float, float] = (-5.0, 5.0),
    return_params: bool = False,
) -> TaskBatch | tuple[TaskBatch, SinusoidParams]:
    """Samples sinusoid regression tasks; jittable (all sizes are static).

    Amplitude ~ U[0.1, 5], phase ~ U[0, pi], inputs ~ U[-5, 5], as in the MAML paper.

    Args:
        key: PRNG key.
        n_tasks: number of tasks.
        k_shot: support points per task.
        n_query: query points per task.
        amplitude: range of the uniform amplitude distribution.
        phase: range of the uniform phase distribution.
        x_range: range of the uniform input distribution.
        return_params: also return the tasks' :class:`SinusoidParams` (for plotting).

    Returns:
        A :class:`TaskBatch` with ``support = (x, y)`` of shape ``[n_tasks, k_shot, 1]`` each and
        ``query`` of shape ``[n_tasks, n_query, 1]``; with ``return_params``, ``(tasks, params)``.

    Examples:
        >>> import jax
        >>> tasks = sinusoid(jax.random.PRNGKey(0), 25, k_shot=5)
        >>> tasks.support[0].shape
        (25, 5, 1)
    """
    for name, value in (("n_tasks", n_tasks), ("k_shot", k_shot), ("n_query", n_query)):
        check_int(name, value, 1)
    k_amp, k_phase, k_x = jax.random.split(key, 3)
    params = SinusoidParams(
        amplitude=jax.random.uniform(k_amp, (n_tasks,), minval=amplitude[0], maxval=amplitude[1]),
        phase=jax.random.uniform(k_phase, (n_tasks,), minval=phase[0], maxval=phase[1]),
    )
    x = jax.random.uniform(k_x, (n_tasks, k_shot + n_query, 1), minval=x_range[0],
                           maxval=x_range[1])
    y = sinusoid_curve(params, x)
    tasks = TaskBatch(support=(x[:, :k_shot], y[:, :k_shot]), query=(x[:, k_shot:], y[:, k_shot:]))
    return (tasks, params) if return_params else tasks
