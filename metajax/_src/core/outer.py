"""The outer loop of gradient-based meta-learners, as small pieces a learner assembles.

A gradient-based meta-learner is four choices:

* the **inner update** (:class:`metajax.InnerUpdate`): how a task adapts (SGD, learned
  per-step or per-parameter rates, any Optax optimizer);
* the **objective** (:class:`QueryObjective`): the final query loss, or MAML++'s annealed
  multi-step loss;
* the **meta-gradient order** (:func:`second_order`, :func:`first_order`,
  :func:`order_annealing`);
* the **task batching** (:class:`metajax.TaskBatching`): how the single-task objective is
  batched over the meta-batch.

:func:`gradient_learner` assembles them into a :class:`metajax.MetaLearner`; ``maml``,
``fomaml``, MAML++, Meta-SGD and ANIL are such assemblies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from metajax._src.core.adapt import InnerUpdate, LossFn, adapt_with, check_steps, with_aux
from metajax._src.core.batching import MetaGrad, TaskBatching, TaskObjective, resolve_batching
from metajax._src.core.types import (
    Adaptation,
    LearnedRates,
    MetaLearner,
    MetaState,
    Metrics,
    Params,
    TaskBatch,
    num_tasks,
)


def task_metrics(loss, aux: dict, *, prefix: str = "") -> dict[str, jax.Array]:
    """Names a loss and its auxiliary outputs as metrics, e.g. ``{"loss": .., "accuracy": ..}``."""
    return {prefix + "loss": loss, **{prefix + k: v for k, v in aux.items()}}


# --- objectives --------------------------------------------------------------------------

class QueryObjective(NamedTuple):
    """How a task's query losses become its meta-objective.

    Attributes:
        per_step: whether the objective reads the query loss after *every* inner step (then
            ``value`` gets an array ``[inner_steps]``), or only after the last one (a scalar).
        value: ``value(outer_step, query_losses) -> objective``.
        name: the metric the objective is reported as, when it is not the final ``loss``.
    """

    per_step: bool
    value: Callable[[jax.Array, jax.Array], jax.Array]
    name: str | None = None


def final_query_loss() -> QueryObjective:
    """The query loss after the last inner step (MAML's objective)."""
    return QueryObjective(per_step=False, value=lambda outer_step, loss: loss)


def msl_weights(
    step: Any, *, inner_steps: int, anneal_steps: int, min_weight: float | None = None
) -> jax.Array:
    """MAML++ multi-step-loss weights of the query losses after inner steps ``1..inner_steps``.

    At outer step 0 every inner step weighs ``1 / inner_steps``. The non-final weights then
    decay linearly to ``min_weight`` over ``anneal_steps`` outer steps while the final weight
    grows; the weights always sum to 1 (Antoniou et al., 2019, Sec. 4, "multi-step loss
    optimization"; the floor defaults to the paper code's ``0.03 / inner_steps``).

    Args:
        step: the outer step (int or scalar array; traced inside ``step``).
        inner_steps: number of inner steps (static).
        anneal_steps: outer steps over which the weights move to the final step; ``0`` puts
            the weights at their end point from the start.
        min_weight: floor of the non-final weights; ``0.0`` ends at ``(0, ..., 0, 1)``.

    Returns:
        A float array of shape ``[inner_steps]``.

    Examples:
        >>> w = msl_weights(0, inner_steps=4, anneal_steps=100)
        >>> [round(float(v), 3) for v in w]
        [0.25, 0.25, 0.25, 0.25]
        >>> [round(float(v), 3) for v in msl_weights(100, inner_steps=4, anneal_steps=100,
        ...                                            min_weight=0.0)]
        [0.0, 0.0, 0.0, 1.0]
    """
    check_steps(inner_steps, name="inner_steps")
    check_steps(anneal_steps, name="msl_anneal_steps", allow_zero=True)
    floor = 0.03 / inner_steps if min_weight is None else float(min_weight)
    if not 0.0 <= floor <= 1.0 / inner_steps:
        raise ValueError(f"`msl_min_weight` must be in [0, 1/inner_steps] = [0, "
                         f"{1.0 / inner_steps:g}]; got {min_weight!r}.")
    frac = (jnp.asarray(1.0) if anneal_steps == 0
            else jnp.asarray(step, jnp.result_type(float)) / anneal_steps)
    early = jnp.maximum((1.0 - frac) / inner_steps, floor)
    weights = jnp.full((inner_steps,), early)
    return weights.at[-1].set(1.0 - (inner_steps - 1) * early)


def multi_step_loss(*, inner_steps: int, anneal_steps: int,
                    min_weight: float | None = None) -> QueryObjective:
    """MAML++'s multi-step loss: the :func:`msl_weights`-weighted query losses of every step.

    Reported as ``msl_loss``; ``loss`` stays the final query loss.

    Examples:
        >>> import jax.numpy as jnp
        >>> objective = multi_step_loss(inner_steps=2, anneal_steps=10, min_weight=0.0)
        >>> float(objective.value(10, jnp.array([3.0, 1.0])))
        1.0
    """
    msl_weights(0, inner_steps=inner_steps, anneal_steps=anneal_steps,
                min_weight=min_weight)  # validates the options now

    def value(outer_step, losses):
        weights = msl_weights(outer_step, inner_steps=inner_steps, anneal_steps=anneal_steps,
                              min_weight=min_weight)
        return jnp.dot(weights, losses)

    return QueryObjective(per_step=True, value=value, name="msl_loss")


# --- meta-gradient order -------------------------------------------------------------------

# ``order(outer_step, meta_grad_of, params, tasks) -> (grads, metrics)``, where
# ``meta_grad_of(first_order: bool)`` is the meta-gradient function of that order.
GradientOrder = Callable[[jax.Array, Callable[[bool], MetaGrad], Params, TaskBatch],
                         tuple[Params, Metrics]]


def second_order() -> GradientOrder:
    """The exact meta-gradient, differentiated through the inner loop's gradients."""
    return lambda outer_step, meta_grad_of, params, tasks: meta_grad_of(False)(params, tasks)


def first_order() -> GradientOrder:
    """The first-order meta-gradient (FOMAML): inner gradients treated as constants."""
    return lambda outer_step, meta_grad_of, params, tasks: meta_grad_of(True)(params, tasks)


_first_order = first_order  # gradient_order's keyword argument shadows the name there


def order_annealing(first_order_until: int) -> GradientOrder:
    """First-order meta-gradients for outer steps ``< first_order_until``, exact ones after
    (MAML++'s derivative-order annealing).

    Both programs are compiled and ``lax.cond`` on the outer step runs only one of them per
    step, so the early steps cost what FOMAML costs (under a ``vmap`` of ``step``, both run).
    """
    check_steps(first_order_until, name="first_order_until", allow_zero=True)

    def order(outer_step, meta_grad_of, params, tasks):
        return lax.cond(outer_step < first_order_until, meta_grad_of(True), meta_grad_of(False),
                        params, tasks)

    return order


def gradient_order(*, first_order: bool = False,
                   first_order_until: int | None = None) -> GradientOrder:
    """The order of the keyword options every gradient learner takes: :func:`first_order`
    with ``first_order=True``, :func:`order_annealing` with ``first_order_until``, else
    :func:`second_order`.

    Raises:
        ValueError: both ``first_order`` and ``first_order_until`` are given.
    """
    if first_order_until is None:
        return _first_order() if first_order else second_order()
    if first_order:
        raise ValueError("`first_order_until` anneals from first to second order; it cannot be "
                         "combined with first_order=True.")
    return order_annealing(first_order_until)


# --- the outer update ----------------------------------------------------------------------

def tree_pmean(tree: Any, axis_name: str) -> Any:
    """``lax.pmean(tree, axis_name)`` as one collective per dtype instead of one per leaf.

    The leaves of each dtype are joined into one vector, averaged, and split back. Across CPU
    processes every collective is a gloo all-reduce of its own, about 4 ms each on an idle
    2-core machine whatever its size: ``lax.pmean`` of Conv4's 18 parameter arrays took
    70 ms, this 4 ms (``docs/design/cpu-engine.md``).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> tree = {"w": jnp.ones((2, 2, 3)), "b": jnp.arange(4.0).reshape(2, 2)}  # 2 shards
        >>> out = jax.vmap(lambda t: tree_pmean(t, "i"), axis_name="i")(tree)
        >>> out["b"].tolist(), out["w"].shape
        ([[1.0, 2.0], [1.0, 2.0]], (2, 2, 3))
    """
    leaves, treedef = jax.tree.flatten(tree)
    groups: dict[Any, list[int]] = {}
    for i, leaf in enumerate(leaves):
        groups.setdefault(jnp.result_type(leaf), []).append(i)
    out = list(leaves)
    for indices in groups.values():
        joined = lax.pmean(jnp.concatenate([jnp.ravel(leaves[i]) for i in indices]), axis_name)
        bounds = np.cumsum([0] + [np.size(leaves[i]) for i in indices])
        for i, lo, hi in zip(indices, bounds[:-1], bounds[1:], strict=True):
            out[i] = joined[lo:hi].reshape(np.shape(leaves[i]))
    return jax.tree.unflatten(treedef, out)


def init_state(outer_opt: optax.GradientTransformation, meta: Params) -> MetaState:
    """A fresh :class:`MetaState` for meta-parameters ``meta`` at step 0."""
    return MetaState(params=meta, opt_state=outer_opt.init(meta), step=jnp.zeros((), jnp.int32))


def apply_outer_update(outer_opt: optax.GradientTransformation, state: MetaState,
                       grads: Params, *, axis_name: str | None = None) -> MetaState:
    """One ``outer_opt`` update of ``state.params`` with meta-gradient ``grads``.

    ``grads`` is the mean over this device's tasks. With ``axis_name`` (the step runs under
    ``shard_map`` over that axis, each device on its share of the meta-batch) it is first
    averaged over the devices (:func:`tree_pmean`), so every device applies the mean over the
    whole meta-batch.
    """
    if axis_name is not None:
        grads = tree_pmean(grads, axis_name)
    updates, opt_state = outer_opt.update(grads, state.opt_state, state.params)
    return MetaState(optax.apply_updates(state.params, updates), opt_state, state.step + 1)


def gradient_step(meta_grad: MetaGrad, outer_opt: optax.GradientTransformation, *,
                  axis_name: str | None = None
                  ) -> Callable[[MetaState, TaskBatch], tuple[MetaState, Metrics]]:
    """``step(state, tasks)``: one outer update along ``meta_grad(params, tasks)``."""

    def step(state: MetaState, tasks: TaskBatch):
        num_tasks(tasks)
        grads, metrics = meta_grad(state.params, tasks)
        return apply_outer_update(outer_opt, state, grads, axis_name=axis_name), metrics

    return step


def mean_task_gradient(task_objective: TaskObjective, *,
                       task_batching: TaskBatching | None = None) -> MetaGrad:
    """``meta_grad(params, tasks) -> (grads, metrics)``: the gradient of the task mean of
    ``task_objective(params, support, query) -> (objective, metrics)``, batched by
    ``task_batching`` (default: :func:`metajax.default_batching`)."""
    return resolve_batching(task_batching).mean_gradient(task_objective)


# --- the assembly --------------------------------------------------------------------------

class Partition(NamedTuple):
    """Which part of the parameters the inner loop adapts (ANIL: the head only).

    Attributes:
        split: ``split(params) -> (adapted, frozen)``.
        merge: ``merge(adapted, frozen) -> params``.
    """

    split: Callable[[Params], tuple[Any, Any]]
    merge: Callable[[Any, Any], Params]


def gradient_learner(
    loss_fn: LossFn,
    outer_opt: optax.GradientTransformation,
    *,
    inner: InnerUpdate,
    inner_steps: int,
    objective: QueryObjective | None = None,
    order: GradientOrder | None = None,
    partition: Partition | None = None,
    adaptation: Callable[[Params], Adaptation] | None = None,
    has_aux: bool = False,
    task_batching: TaskBatching | None = None,
    remat: bool = False,
    unroll: int | bool | None = None,
    track_pre_adaptation: bool = True,
    axis_name: str | None = None,
) -> MetaLearner:
    """A gradient-based meta-learner assembled from its pieces (see the module docstring).

    Each ``step`` adapts every task (``inner_steps`` updates of ``inner`` on its support set,
    differentiated through), scores it on its query set with ``objective``, and applies one
    ``outer_opt`` update along the mean meta-gradient of the chosen ``order``.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar`` (or ``(scalar, aux)`` with ``has_aux``).
        outer_opt: the Optax optimizer of the meta-parameters.
        inner: the inner update rule. If it learns rates (``inner.init`` returns them), the
            meta-parameters are :class:`metajax.LearnedRates` ``(init, lr)``.
        inner_steps: inner updates per task (static int >= 1).
        objective: default :func:`final_query_loss`.
        order: default :func:`second_order`.
        partition: adapt only part of the parameters (default: all of them).
        adaptation: the test-time :class:`metajax.Adaptation` of the meta-parameters (default:
            ``inner``'s, from the initialisation).
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``; aux values (e.g. accuracy) are
            averaged over tasks into the metrics.
        task_batching: how tasks are batched; ``None`` resolves
            :func:`metajax.default_batching` now.
        remat: checkpoint each inner step to save memory (see :func:`metajax.adapt`).
        unroll: inner-loop unrolling (see :func:`metajax.adapt`).
        track_pre_adaptation: also report the query loss before adaptation (``pre_loss``).
        axis_name: the mapped axis the meta-batch is split over (under ``shard_map``, e.g.
            :func:`metajax.distributed.process_step`): the meta-gradient is averaged over it.

    Returns:
        A :class:`metajax.MetaLearner` ``(init, step, adaptation)``. ``step`` reports
        ``{"loss", "pre_loss", <aux>, "pre_<aux>"}`` averaged over tasks (and the objective
        under its own name when it is not ``loss``).
    """
    check_steps(inner_steps, name="inner_steps")
    objective = final_query_loss() if objective is None else objective
    order = second_order() if order is None else order
    batching = resolve_batching(task_batching)
    loss = with_aux(loss_fn, has_aux=has_aux)

    def start_and_rates(meta):
        return (meta.init, meta.lr) if isinstance(meta, LearnedRates) else (meta, None)

    def task_objective(meta: Params, support, query, outer_step, *, fo: bool):
        start, rates = start_and_rates(meta)
        adapted_part, frozen = (start, None) if partition is None else partition.split(start)
        merge = (lambda a: a) if partition is None else (lambda a: partition.merge(a, frozen))
        part_loss = loss_fn if partition is None else (lambda p, b: loss_fn(merge(p), b))
        record = (lambda p: loss(merge(p), query)) if objective.per_step else None
        adapted, records = adapt_with(part_loss, inner.optimizer(rates), adapted_part, support,
                                      steps=inner_steps, first_order=fo, has_aux=has_aux,
                                      remat=remat, unroll=unroll, record=record)
        if objective.per_step:
            step_losses, step_aux = records
            post, aux = step_losses[-1], jax.tree.map(lambda a: a[-1], step_aux)
            value = objective.value(outer_step, step_losses)
        else:
            post, aux = loss(merge(adapted), query)
            value = objective.value(outer_step, post)
        metrics = task_metrics(post, aux)
        if objective.name is not None:
            metrics[objective.name] = value
        if track_pre_adaptation:
            pre, pre_aux = loss(jax.lax.stop_gradient(start), query)
            metrics.update(task_metrics(pre, pre_aux, prefix="pre_"))
        return value, metrics

    def meta_grad_of(outer_step):
        def of(fo: bool) -> MetaGrad:
            return batching.mean_gradient(
                lambda m, s, q: task_objective(m, s, q, outer_step, fo=fo))
        return of

    def init(params: Params) -> MetaState:
        rates = inner.init(params)
        meta = params if rates is None else LearnedRates(init=params, lr=rates)
        return init_state(outer_opt, meta)

    def step(state: MetaState, tasks: TaskBatch):
        num_tasks(tasks)
        grads, metrics = order(state.step, meta_grad_of(state.step), state.params, tasks)
        return apply_outer_update(outer_opt, state, grads, axis_name=axis_name), metrics

    def default_adaptation(meta: Params) -> Adaptation:
        return inner.adaptation(*start_and_rates(meta))

    return MetaLearner(init=init, step=step,
                       adaptation=default_adaptation if adaptation is None else adaptation)
