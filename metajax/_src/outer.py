"""The outer loop shared by gradient-based meta-learners: batch a per-task objective over the
task axis, initialise the state, and apply one Optax update of the meta-parameters."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from metajax._src.types import MetaState, Metrics, Params, PyTree, TaskBatch, num_tasks

TaskObjective = Callable[[Params, PyTree, PyTree], tuple[jax.Array, Metrics]]
MetaLoss = Callable[[Params, TaskBatch], tuple[jax.Array, Metrics]]


def mean_over_tasks(task_objective: TaskObjective) -> MetaLoss:
    """``meta_loss(params, tasks)``: the mean over tasks of ``task_objective(params, s, q)``.

    The single place where a learner batches tasks: ``jax.vmap`` with the meta-parameters
    shared (``in_axes=None``) and support/query split along the task axis. Metrics are
    averaged over tasks too.
    """
    batched = jax.vmap(task_objective, in_axes=(None, 0, 0))

    def meta_loss(params: Params, tasks: TaskBatch):
        per_task, metrics = batched(params, tasks.support, tasks.query)
        return jnp.mean(per_task), jax.tree.map(jnp.mean, metrics)

    return meta_loss


def init_state(outer_opt: optax.GradientTransformation, meta: Params) -> MetaState:
    """A fresh :class:`MetaState` for meta-parameters ``meta`` at step 0."""
    return MetaState(params=meta, opt_state=outer_opt.init(meta), step=jnp.zeros((), jnp.int32))


def apply_outer_update(outer_opt: optax.GradientTransformation, state: MetaState,
                       grads: Params) -> MetaState:
    """One ``outer_opt`` update of ``state.params`` with meta-gradient ``grads``."""
    updates, opt_state = outer_opt.update(grads, state.opt_state, state.params)
    return MetaState(optax.apply_updates(state.params, updates), opt_state, state.step + 1)


def gradient_step(meta_loss: MetaLoss, outer_opt: optax.GradientTransformation
                  ) -> Callable[[MetaState, TaskBatch], tuple[MetaState, Metrics]]:
    """``step(state, tasks)``: differentiate ``meta_loss`` and apply one outer update."""

    def step(state: MetaState, tasks: TaskBatch):
        num_tasks(tasks)
        grads, metrics = jax.grad(meta_loss, has_aux=True)(state.params, tasks)
        return apply_outer_update(outer_opt, state, grads), metrics

    return step
