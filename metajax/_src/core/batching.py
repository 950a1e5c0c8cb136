"""The task-batching seam: how a learner batches its per-task functions over the task axis.

Every learner of metajax writes the single-task function (adapt on the support set, score on
the query set) and hands it to a :class:`TaskBatching`, the one place where the task axis is
batched. :func:`vmap_batching` is plain ``jax.vmap``. A backend engine may offer another
(:func:`metajax.cpu.conv_batching` runs conv nets with per-task weights one convolution per task,
which XLA:CPU runs much faster than ``vmap``'s grouped convolutions). A learner given
``task_batching=None`` resolves :func:`default_batching` once, when it is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from metajax._src.core.types import Metrics, Params, PyTree, TaskBatch, num_tasks

TaskObjective = Callable[[Params, PyTree, PyTree], tuple[jax.Array, Metrics]]
MetaGrad = Callable[[Params, TaskBatch], tuple[Params, Metrics]]


class TaskBatching(NamedTuple):
    """How per-task functions are batched over the task axis (a pair of pure builders).

    Attributes:
        map: ``map(fun, in_axes) -> batched``, with ``jax.vmap``'s signature and results
            (outputs stacked along axis 0); used for evaluation and other forward passes.
        mean_gradient: ``mean_gradient(task_objective) -> meta_grad`` where
            ``task_objective(params, support, query) -> (objective, metrics)`` is one task's
            objective and ``meta_grad(params, tasks) -> (grads, metrics)`` the gradient of its
            mean over ``tasks`` with the task-averaged metrics.

    Examples:
        >>> import jax.numpy as jnp, metajax
        >>> batching = metajax.vmap_batching()
        >>> objective = lambda w, s, q: (jnp.mean((w * s - q) ** 2), {})
        >>> tasks = metajax.TaskBatch(jnp.ones((4, 3)), jnp.ones((4, 3)))
        >>> grads, _ = batching.mean_gradient(objective)(jnp.array(0.0), tasks)
        >>> round(float(grads), 5)
        -2.0
    """

    map: Callable[[Callable, Any], Callable]
    mean_gradient: Callable[[TaskObjective], MetaGrad]


def mean_over_tasks(task_objective: TaskObjective, *, map_tasks: Callable = jax.vmap
                    ) -> Callable[[Params, TaskBatch], tuple[jax.Array, Metrics]]:
    """``meta_loss(params, tasks)``: the mean over tasks of ``task_objective(params, s, q)``.

    The parameters are shared (``in_axes=None``), support and query split along the task
    axis; the metrics are averaged over tasks too.
    """
    batched = map_tasks(task_objective, (None, 0, 0))

    def meta_loss(params: Params, tasks: TaskBatch):
        num_tasks(tasks)
        per_task, metrics = batched(params, tasks.support, tasks.query)
        return jnp.mean(per_task), jax.tree.map(jnp.mean, metrics)

    return meta_loss


def vmap_batching() -> TaskBatching:
    """Plain ``jax.vmap`` over tasks: the meta-gradient is ``jax.grad`` of the task mean.

    The sum over tasks folds into the backward pass. Right for every model on GPU and TPU, and
    for models without per-task convolutions (MLPs, metric heads) everywhere.
    """

    def mean_gradient(task_objective: TaskObjective) -> MetaGrad:
        return jax.grad(mean_over_tasks(task_objective), has_aux=True)

    return TaskBatching(map=lambda fun, in_axes=0: jax.vmap(fun, in_axes=in_axes),
                        mean_gradient=mean_gradient)


def default_batching() -> TaskBatching:
    """The task batching for the default backend: the CPU engine on CPU, ``vmap`` elsewhere.

    On CPU this imports :mod:`metajax.cpu` (its :func:`~metajax.cpu.conv_batching` falls back to
    ``vmap`` for models without per-task convolutions); on GPU and TPU nothing is imported.
    """
    if jax.default_backend() == "cpu":
        from metajax._src.cpu.batching import conv_batching  # the one seam into the engine

        return conv_batching()
    return vmap_batching()


def resolve_batching(task_batching: TaskBatching | None, *,
                     name: str = "task_batching") -> TaskBatching:
    """``task_batching``, or :func:`default_batching` when it is ``None``.

    Raises:
        TypeError: ``task_batching`` is neither ``None`` nor a :class:`TaskBatching`.
    """
    if task_batching is None:
        return default_batching()
    if not isinstance(task_batching, TaskBatching):
        raise TypeError(f"`{name}` must be None (the default for this backend) or a "
                        "metajax.TaskBatching, e.g. metajax.vmap_batching() or "
                        f"metajax.cpu.conv_batching(); got {task_batching!r}.")
    return task_batching
