"""MAML (Finn et al., 2017) and first-order MAML as a :class:`MetaLearner`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from metajax._src.adapt import LossFn, adapt, check_steps, with_aux
from metajax._src.types import MetaLearner, MetaState, Params, TaskBatch, num_tasks


def task_metrics(loss, aux: dict, *, prefix: str = "") -> dict[str, jax.Array]:
    """Names a loss and its auxiliary outputs as metrics, e.g. ``{"loss": .., "accuracy": ..}``."""
    return {prefix + "loss": loss, **{prefix + k: v for k, v in aux.items()}}


def maml(
    loss_fn: LossFn,
    outer_opt: optax.GradientTransformation,
    *,
    inner_steps: int,
    inner_lr: Any = None,
    first_order: bool = False,
    inner_opt: optax.GradientTransformation | None = None,
    has_aux: bool = False,
    remat: bool = False,
    unroll: int | bool | None = None,
    track_pre_adaptation: bool = True,
) -> MetaLearner:
    """Model-Agnostic Meta-Learning: learns an initialisation that adapts fast.

    Each ``step`` adapts every task of the batch at once (``jax.vmap`` over the task axis)
    with :func:`metajax.adapt` on its support set, evaluates the adapted parameters on the
    query set, and applies one ``outer_opt`` update on the mean query loss.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar`` (or ``(scalar, aux)`` with ``has_aux``).
        outer_opt: the Optax optimizer of the meta-parameters.
        inner_steps: number of inner gradient steps per task (static int >= 1).
        inner_lr: inner SGD step size, a scalar or per-parameter pytree; ``None`` with
            ``inner_opt``.
        first_order: drop second-order terms (FOMAML).
        inner_opt: optional Optax inner optimizer, differentiated through.
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``; aux values (e.g. accuracy) are
            averaged over tasks into the metrics.
        remat: checkpoint each inner step to save memory (see :func:`metajax.adapt`).
        unroll: inner-loop unrolling (see :func:`metajax.adapt`).
        track_pre_adaptation: also report the query loss before adaptation (``pre_loss``), at
            the cost of one extra forward pass per task.

    Returns:
        A :class:`MetaLearner` ``(init, step)``. ``step(state, tasks)`` returns the new state
        and metrics ``{"loss", "pre_loss", <aux>, "pre_<aux>"}`` averaged over tasks, where
        ``loss`` is the post-adaptation query loss that was minimised.

    Example:
        >>> import jax, jax.numpy as jnp, optax, metajax
        >>> loss = lambda w, b: jnp.mean((b[0] * w - b[1]) ** 2)
        >>> learner = metajax.maml(loss, optax.adam(1e-2), inner_steps=1, inner_lr=0.1)
        >>> state = learner.init(jnp.array(0.0))
        >>> tasks = metajax.TaskBatch((jnp.ones((8, 5)), jnp.ones((8, 5))),
        ...                           (jnp.ones((8, 5)), jnp.ones((8, 5))))
        >>> state, metrics = jax.jit(learner.step)(state, tasks)
        >>> sorted(metrics)
        ['loss', 'pre_loss']
    """
    check_steps(inner_steps, name="inner_steps")
    loss = with_aux(loss_fn, has_aux=has_aux)

    def task_objective(params: Params, support, query):
        adapted = adapt(loss_fn, params, support, steps=inner_steps, lr=inner_lr,
                        first_order=first_order, inner_opt=inner_opt, has_aux=has_aux,
                        remat=remat, unroll=unroll)
        post, aux = loss(adapted, query)
        metrics = task_metrics(post, aux)
        if track_pre_adaptation:
            pre, pre_aux = loss(jax.lax.stop_gradient(params), query)
            metrics.update(task_metrics(pre, pre_aux, prefix="pre_"))
        return post, metrics

    # The single place where tasks are batched: params shared, support/query per task.
    batched_objective = jax.vmap(task_objective, in_axes=(None, 0, 0))

    def meta_loss(params: Params, tasks: TaskBatch):
        per_task, metrics = batched_objective(params, tasks.support, tasks.query)
        return jnp.mean(per_task), jax.tree.map(jnp.mean, metrics)

    def init(params: Params) -> MetaState:
        return MetaState(params=params, opt_state=outer_opt.init(params),
                         step=jnp.zeros((), jnp.int32))

    def step(state: MetaState, tasks: TaskBatch):
        num_tasks(tasks)
        grads, metrics = jax.grad(meta_loss, has_aux=True)(state.params, tasks)
        updates, opt_state = outer_opt.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return MetaState(params, opt_state, state.step + 1), metrics

    return MetaLearner(init=init, step=step)
