"""Checks of context / target task batches, and conversion of ``(x, y)`` tasks to ``Points``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from metajax._src.core.types import Points, TaskBatch


def _concrete(a):
    try:
        return np.asarray(a)
    except jax.errors.TracerArrayConversionError:
        return None


def _check_set(name: str, points) -> None:
    if not isinstance(points, Points):
        raise TypeError(f"`{name}` must be metajax.Points(x, y, mask); got "
                        f"{type(points).__name__}.")
    x, y, mask = (np.shape(a) for a in points)
    if len(x) < 2 or len(y) != len(x):
        raise ValueError(f"`{name}.x` and `{name}.y` must be [..., n, dim] arrays of the same "
                         f"rank; got shapes {x} and {y}.")
    if x[:-1] != y[:-1]:
        raise ValueError(f"`{name}.x` {x} and `{name}.y` {y} disagree on the number of points "
                         "(all axes but the last must match).")
    if mask != x[:-1]:
        raise ValueError(f"`{name}.mask` must have shape {x[:-1]} (x's shape without its last "
                         f"axis); got {mask}.")


def check_process_tasks(tasks: TaskBatch, *, name: str = "tasks", batched: bool = True) -> int:
    """Checks a context / target ``TaskBatch`` of :class:`metajax.Points`; returns its size.

    Every task needs at least one context point (checked when the mask is concrete) and the
    context and targets must agree on ``x`` and ``y`` sizes.

    Raises:
        TypeError: if ``tasks`` is not a ``TaskBatch`` of ``Points``.
        ValueError: naming the array whose shape is wrong, or the task without context.

    Examples:
        >>> import jax.numpy as jnp
        >>> x = jnp.zeros((2, 3, 1))
        >>> c = Points(x, x, jnp.array([[1, 1, 0], [0, 0, 0]]))
        >>> check_process_tasks(TaskBatch(c, c))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: `tasks.support` has no context point in task 1 (mask all false); ...
    """
    if not isinstance(tasks, TaskBatch):
        raise TypeError(f"`{name}` must be a metajax.TaskBatch(support=Points, query=Points); "
                        f"got {type(tasks).__name__}.")
    context, target = tasks
    _check_set(f"{name}.support", context)
    _check_set(f"{name}.query", target)
    rank = 3 if batched else 2
    if np.ndim(context.x) != rank or np.ndim(target.x) != rank:
        what = "[tasks, n, dim]" if batched else "[n, dim]"
        raise ValueError(f"`{name}` points must be {what} arrays; got support.x "
                         f"{np.shape(context.x)} and query.x {np.shape(target.x)}.")
    for field in ("x", "y"):
        c, t = np.shape(getattr(context, field)), np.shape(getattr(target, field))
        if c[-1] != t[-1] or (batched and c[0] != t[0]):
            raise ValueError(f"`{name}.support.{field}` {c} and `{name}.query.{field}` {t} "
                             "disagree (the task axis and the last axis must match).")
    mask = _concrete(context.mask)
    if mask is not None:
        counts = mask.reshape(-1, mask.shape[-1]).astype(bool).sum(-1)
        if (counts == 0).any():
            raise ValueError(f"`{name}.support` has no context point in task "
                             f"{int(np.argmin(counts))} (mask all false); every task needs at "
                             "least one.")
    return int(np.shape(context.x)[0]) if batched else 1


def as_points(tasks: TaskBatch, *, targets_include_context: bool = True) -> TaskBatch:
    """Turns a ``TaskBatch`` of ``(x, y)`` support / query sets into context / target ``Points``.

    The support becomes the context; the targets are the query points, preceded by the support
    points with ``targets_include_context`` (how neural processes are trained).

    Examples:
        >>> import jax
        >>> from metajax.tasks import sinusoid
        >>> tasks = as_points(sinusoid(jax.random.PRNGKey(0), 2, k_shot=5, n_query=10))
        >>> tasks.support.x.shape, tasks.query.x.shape
        ((2, 5, 1), (2, 15, 1))
    """
    (xs, ys), (xq, yq) = tasks
    context = Points(xs, ys, jnp.ones(xs.shape[:-1], bool))
    if targets_include_context:
        xq, yq = jnp.concatenate([xs, xq], axis=-2), jnp.concatenate([ys, yq], axis=-2)
    return TaskBatch(context, Points(xq, yq, jnp.ones(xq.shape[:-1], bool)))
