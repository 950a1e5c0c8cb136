"""Honest baselines on the meta-learner interface: joint pre-training, and learning-rate tuning."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax._src.core.adapt import LossFn, with_aux
from metajax._src.core.chunking import map_task_chunks
from metajax._src.core.evaluate import make_evaluator
from metajax._src.core.outer import gradient_step, init_state, mean_task_gradient, task_metrics
from metajax._src.core.types import MetaLearner, MetaState, Params, TaskBatch


def pretrain(loss_fn: LossFn, opt: optax.GradientTransformation, *,
             has_aux: bool = False, axis_name: str | None = None) -> MetaLearner:
    """Joint training on all tasks at once (the "pretrained" baseline of the MAML paper).

    One ``step`` minimises the mean over tasks of the loss on each task's support and query
    data, ignoring task identity. The resulting parameters are then fine-tuned per task at
    evaluation time, exactly like a meta-learned initialisation.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar`` (or ``(scalar, aux)`` with ``has_aux``).
        opt: the Optax optimizer.
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
        axis_name: the mapped axis the meta-batch is split over (see :func:`metajax.maml`).

    Returns:
        A :class:`MetaLearner` with the same ``init``/``step`` shape as :func:`metajax.maml`.
    """
    loss = with_aux(loss_fn, has_aux=has_aux)

    def task_loss(params, support, query):
        ls, _ = loss(params, support)
        lq, aux = loss(params, query)
        return (ls + lq) / 2, task_metrics(lq, aux)

    def init(params: Params) -> MetaState:
        return init_state(opt, params)

    return MetaLearner(init=init, step=gradient_step(mean_task_gradient(task_loss), opt,
                                                      axis_name=axis_name))


def select_lr(
    loss_fn: LossFn,
    params: Params,
    tasks: TaskBatch,
    *,
    lrs: Sequence[float],
    steps: int,
    has_aux: bool = False,
    metric: str = "loss",
    higher_is_better: bool = False,
    chunk_size: int | None = None,
) -> tuple[float, dict[float, float]]:
    """Picks the fine-tuning step size of a baseline on meta-validation tasks.

    Each candidate adapts every task for ``steps`` SGD steps; the one with the best mean
    query ``metric`` wins. Used so that baselines are compared at their own best step size.

    Args:
        loss_fn: the task loss.
        params: where fine-tuning starts.
        tasks: the validation tasks.
        lrs: the candidate step sizes.
        steps: SGD steps per task.
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
        metric: the metric compared.
        higher_is_better: whether a larger ``metric`` is better.
        chunk_size: evaluate this many tasks per compiled call (see
            :func:`metajax.experiment.evaluate_methods`); ``None``: all at once.

    Returns:
        ``(best_lr, {lr: mean metric})``.
    """
    if not lrs:
        raise ValueError("`lrs` must list at least one candidate learning rate.")
    scores: dict[float, float] = {}
    evaluate = lr_evaluator(loss_fn, steps, has_aux)
    for lr in lrs:
        out = map_task_chunks(lambda t, lr=lr: evaluate(params, t, jnp.float32(lr)), tasks,
                              chunk_size=chunk_size, out_axis=1)
        value = float(np.mean(out[metric]))
        scores[float(lr)] = value if np.isfinite(value) else (-np.inf if higher_is_better
                                                              else np.inf)
    pick = max if higher_is_better else min
    return pick(scores, key=scores.get), scores


@functools.lru_cache(maxsize=16)
def lr_evaluator(loss_fn: LossFn, steps: int, has_aux: bool):
    """Jitted ``evaluate(params, tasks, lr)`` (lr traced), shared by the calls of one loss."""
    return jax.jit(lambda p, t, lr: make_evaluator(loss_fn, steps=(steps,), lr=lr,
                                                   has_aux=has_aux)(p, t))



def adam_with_clipping(learning_rate: float, *, clip_grad_norm: float = 0.0
                       ) -> optax.GradientTransformation:
    """Adam, optionally after clipping the meta-gradient's global norm (``0`` = no clipping).

    Examples:
        >>> opt = adam_with_clipping(1e-3, clip_grad_norm=10.0)
        >>> state = opt.init({"w": jnp.zeros(2)})
    """
    if clip_grad_norm < 0:
        raise ValueError(f"`clip_grad_norm` must be >= 0 (0 disables); got {clip_grad_norm}.")
    adam = optax.adam(learning_rate)
    return optax.chain(optax.clip_by_global_norm(clip_grad_norm), adam) if clip_grad_norm else adam
