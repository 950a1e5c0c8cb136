"""Evaluation on held-out tasks: per-task metrics after 0..N adaptation steps, with 95% CIs."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax._src.core.adapt import LossFn, adapt_trajectory, check_steps, with_aux
from metajax._src.core.batching import TaskBatching, resolve_batching
from metajax._src.core.outer import task_metrics
from metajax._src.core.types import Params, TaskBatch, num_tasks


class Summary(NamedTuple):
    """Mean and half-width of the 95% normal confidence interval of a per-task metric.

    ``n`` counts the finite values the mean is over; ``nonfinite`` the NaN or infinite ones
    left out (tables show them as "k of N non-finite").
    """

    mean: float
    ci95: float
    n: int
    nonfinite: int = 0


def mean_ci95(values: Any) -> Summary:
    """Summarises per-task values as mean ± 1.96 standard errors (sample std, ``ddof=1``).

    Non-finite values (diverged tasks) are counted in ``nonfinite`` and left out of the mean,
    so that a few of them do not turn the whole summary into NaN; with none finite the mean is
    NaN.

    Examples:
        >>> s = mean_ci95([1.0, 2.0, 3.0])
        >>> round(s.mean, 3), round(s.ci95, 3)
        (2.0, 1.132)
        >>> s = mean_ci95([1.0, float("nan"), 3.0])
        >>> s.mean, s.n, s.nonfinite
        (2.0, 2, 1)
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("`values` is empty; need at least one per-task value.")
    finite = np.isfinite(v)
    bad = int(v.size - finite.sum())
    v = v[finite]
    if v.size == 0:
        return Summary(float("nan"), float("nan"), 0, bad)
    ci = 1.96 * v.std(ddof=1) / math.sqrt(v.size) if v.size > 1 else float("nan")
    return Summary(float(v.mean()), float(ci), int(v.size), bad)


def make_evaluator(
    loss_fn: LossFn,
    *,
    steps: Sequence[int] = (0, 1, 5, 10),
    lr: Any = None,
    inner_opt: optax.GradientTransformation | None = None,
    has_aux: bool = False,
    chunk_size: int | None = None,
    task_batching: TaskBatching | None = None,
) -> Callable[[Params, TaskBatch], dict[str, jax.Array]]:
    """Builds a pure, jittable ``evaluate(params, tasks) -> {metric: [len(steps), n_tasks]}``.

    Each task is adapted once for ``max(steps)`` steps on its support set; the query loss
    (and aux metrics) are recorded after each number of steps in ``steps``.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar`` (or ``(scalar, aux)`` with ``has_aux``).
        steps: the adaptation step counts to report (``0`` = no adaptation).
        lr: inner SGD step size (scalar or per-parameter pytree); ``None`` with ``inner_opt``.
        inner_opt: optional Optax inner optimizer.
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
        chunk_size: evaluate this many tasks at a time (``lax.map`` over vmapped chunks) to
            bound memory; ``None`` vmaps over all tasks at once.
        task_batching: how tasks are batched; ``None``: :func:`metajax.default_batching`
            (keeps conv nets fast on CPU).

    Returns:
        ``evaluate(params, tasks)``, returning a dict of arrays ``[len(steps), n_tasks]``.
    """
    steps = tuple(check_steps(s, name="steps", allow_zero=True) for s in steps)
    if not steps:
        raise ValueError("`steps` must name at least one number of adaptation steps.")
    loss = with_aux(loss_fn, has_aux=has_aux)
    index = jnp.asarray(steps)
    batching = resolve_batching(task_batching)

    def one_task(params, support, query):
        record = lambda p: task_metrics(*loss(p, query))  # noqa: E731
        traj = adapt_trajectory(loss_fn, params, support, record, steps=max(steps), lr=lr,
                                inner_opt=inner_opt, has_aux=has_aux)
        return jax.tree.map(lambda t: t[index], traj)

    def evaluate(params: Params, tasks: TaskBatch) -> dict[str, jax.Array]:
        num_tasks(tasks)
        batched = batching.map(lambda sq: one_task(params, *sq), 0)
        out = _in_chunks(batched, (tasks.support, tasks.query), chunk_size)
        return jax.tree.map(lambda t: t.T, out)  # [tasks, steps] -> [steps, tasks]

    return evaluate


def _in_chunks(batched, xs, chunk_size: int | None):
    """``batched(xs)`` computed ``chunk_size`` tasks at a time (``lax.map`` over chunks)."""
    n = jax.tree.leaves(xs)[0].shape[0]
    if chunk_size is None or chunk_size >= n:
        return batched(xs)
    full = n - n % chunk_size
    chunks = jax.tree.map(lambda x: x[:full].reshape(-1, chunk_size, *x.shape[1:]), xs)
    out = jax.tree.map(lambda y: y.reshape(full, *y.shape[2:]), jax.lax.map(batched, chunks))
    if full == n:
        return out
    rest = batched(jax.tree.map(lambda x: x[full:], xs))
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), out, rest)


def evaluate(
    loss_fn: LossFn,
    params: Params,
    tasks: TaskBatch,
    *,
    steps: Sequence[int] = (0, 1, 5, 10),
    lr: Any = None,
    inner_opt: optax.GradientTransformation | None = None,
    has_aux: bool = False,
    chunk_size: int | None = None,
) -> dict[int, dict[str, np.ndarray]]:
    """Adapts every held-out task and returns per-task query metrics per number of steps.

    A convenience wrapper around :func:`make_evaluator` (compiled once per call).

    Returns:
        ``{n_steps: {metric: per-task numpy array}}``; summarise with :func:`mean_ci95`.

    Examples:
        >>> import jax, jax.numpy as jnp, metajax
        >>> loss = lambda w, b: jnp.mean((b[0] * w - b[1]) ** 2)
        >>> x = jnp.ones((3, 4)); tasks = metajax.TaskBatch((x, 2 * x), (x, 2 * x))
        >>> out = metajax.evaluate(loss, jnp.array(0.0), tasks, steps=(0, 1), lr=0.25)
        >>> [round(float(out[s]["loss"].mean()), 3) for s in (0, 1)]
        [4.0, 1.0]
    """
    fn = make_evaluator(loss_fn, steps=steps, lr=lr, inner_opt=inner_opt, has_aux=has_aux,
                        chunk_size=chunk_size)
    out = jax.device_get(jax.jit(fn)(params, tasks))
    return {s: {k: np.asarray(v[i]) for k, v in out.items()} for i, s in enumerate(steps)}


def summarize(per_step: dict[int, dict[str, np.ndarray]]) -> dict[str, dict[str, dict]]:
    """Turns :func:`evaluate` output into ``{metric: {n_steps: {"mean", "ci95", "n",
    "nonfinite"}}}`` (see :func:`mean_ci95`)."""
    table: dict[str, dict[str, dict]] = {}
    for s, metrics in per_step.items():
        for name, values in metrics.items():
            table.setdefault(name, {})[str(s)] = mean_ci95(values)._asdict()
    return table
