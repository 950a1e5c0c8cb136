"""Meta-SGD (Li et al., 2017): meta-learned initialisation and per-parameter inner step sizes."""

from __future__ import annotations

from typing import Any

import optax

from metajax._src.core.adapt import LossFn, per_parameter_rates
from metajax._src.core.batching import TaskBatching
from metajax._src.core.outer import gradient_learner, gradient_order
from metajax._src.core.types import MetaLearner


def metasgd(
    loss_fn: LossFn,
    outer_opt: optax.GradientTransformation,
    *,
    inner_steps: int = 1,
    init_lr: Any,
    first_order: bool = False,
    has_aux: bool = False,
    task_batching: TaskBatching | None = None,
    remat: bool = False,
    unroll: int | bool | None = None,
    track_pre_adaptation: bool = True,
    axis_name: str | None = None,
) -> MetaLearner:
    """Meta-SGD: learns where to start and, per parameter, how far to step.

    The meta-parameters are :class:`metajax.LearnedRates` ``(init, lr)`` where ``lr`` has the
    shape of ``params`` (one learned step size per scalar parameter, direction included: a rate may
    turn negative). A task is adapted by ``inner_steps`` steps of
    ``params <- params - rates * grad`` on its support set (the same rates at every step), and
    both ``init`` and ``rates`` are meta-learned through the query loss, exactly as MAML
    meta-learns ``init`` (second order unless ``first_order``).

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar`` (or ``(scalar, aux)`` with ``has_aux``).
        outer_opt: the Optax optimizer of the meta-parameters (init and rates together).
        inner_steps: inner steps per task (the paper uses 1).
        init_lr: initial value of the rates: a scalar, or a pytree like ``params`` whose leaves
            are scalars or arrays of the parameter's shape.
        first_order: treat inner gradients as constants (the rates still get their gradient
            ``-grad`` through the update).
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
        task_batching: how the task axis is batched; ``None``: :func:`metajax.default_batching`.
        remat: checkpoint each inner step (see :func:`metajax.adapt`).
        unroll: inner-loop unrolling (see :func:`metajax.adapt`).
        track_pre_adaptation: also report the query loss before adaptation (``pre_loss``).
        axis_name: the mapped axis the meta-batch is split over (see :func:`metajax.maml`).

    Returns:
        A :class:`MetaLearner` ``(init, step, adaptation)``; ``init(params)`` builds the
        meta-parameters and ``adaptation(meta) == Adaptation(meta.init, meta.lr)``. Metrics as
        in :func:`metajax.maml`. The assembly :func:`metajax.gradient_learner` with
        ``inner=metajax.per_parameter_rates(init_lr)``.

    Examples:
        >>> import jax, jax.numpy as jnp, optax, metajax
        >>> loss = lambda w, b: jnp.mean((b[0] @ w - b[1]) ** 2)
        >>> learner = metajax.metasgd(loss, optax.adam(1e-2), init_lr=0.1)
        >>> state = learner.init(jnp.zeros(3))
        >>> state.params.lr
        Array([0.1, 0.1, 0.1], dtype=float32)
        >>> x = jnp.ones((4, 5, 3)); tasks = metajax.TaskBatch((x, x[..., 0]), (x, x[..., 0]))
        >>> state, metrics = jax.jit(learner.step)(state, tasks)
        >>> learner.adaptation(state.params).lr.shape
        (3,)
    """
    return gradient_learner(
        loss_fn, outer_opt, inner=per_parameter_rates(init_lr), inner_steps=inner_steps,
        order=gradient_order(first_order=first_order), has_aux=has_aux,
        task_batching=task_batching, remat=remat, unroll=unroll,
        track_pre_adaptation=track_pre_adaptation, axis_name=axis_name)
