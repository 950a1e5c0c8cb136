"""MAML (Finn et al., 2017), first-order MAML and the MAML++ options (Antoniou et al., 2019)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from metajax._src.adapt import (
    LossFn,
    _check_lr,
    _repeat,
    adapt,
    check_steps,
    make_inner_step,
    with_aux,
)
from metajax._src.outer import apply_outer_update, init_state, mean_task_gradient
from metajax._src.types import MetaLearner, MetaState, Params, PyTree, TaskBatch, num_tasks


def task_metrics(loss, aux: dict, *, prefix: str = "") -> dict[str, jax.Array]:
    """Names a loss and its auxiliary outputs as metrics, e.g. ``{"loss": .., "accuracy": ..}``."""
    return {prefix + "loss": loss, **{prefix + k: v for k, v in aux.items()}}


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

    Example:
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


def _per_step_lr_inner_step(loss, rates: PyTree, *, first_order: bool):
    """One SGD inner step whose rate for leaf ``k`` at inner step ``t`` is ``rates[k][t]``.

    The carry is ``(params, t)``. Steps past the last learned rate reuse the last one
    (``t`` is clipped), so the same rates can adapt for longer at test time.
    """
    grad_fn = jax.grad(lambda p, b: loss(p, b)[0])

    def step(carry, support):
        params, t = carry
        grads = grad_fn(params, support)
        if first_order:
            grads = jax.lax.stop_gradient(grads)
        i = jnp.minimum(t, jax.tree.leaves(rates)[0].shape[0] - 1)
        new = jax.tree.map(lambda p, g, a: p - a[i] * g, params, grads, rates)
        return new, t + 1

    return step


def maml(
    loss_fn: LossFn,
    outer_opt: optax.GradientTransformation,
    *,
    inner_steps: int,
    inner_lr: Any = None,
    first_order: bool = False,
    inner_opt: optax.GradientTransformation | None = None,
    has_aux: bool = False,
    task_batching: str = "auto",
    remat: bool = False,
    unroll: int | bool | None = None,
    track_pre_adaptation: bool = True,
    per_step_lr: bool = False,
    multi_step_loss: bool = False,
    msl_anneal_steps: int | None = None,
    msl_min_weight: float | None = None,
    first_order_until: int | None = None,
) -> MetaLearner:
    """Model-Agnostic Meta-Learning: learns an initialisation that adapts fast.

    Each ``step`` adapts every task of the batch at once (``jax.vmap`` over the task axis)
    with :func:`metajax.adapt` on its support set, evaluates the adapted parameters on the
    query set, and applies one ``outer_opt`` update on the mean query loss.

    The MAML++ options (Antoniou et al., 2019, "How to train your MAML") are off by default:

    - ``per_step_lr`` (LSLR): one learned SGD rate per parameter leaf (layer weight or bias)
      and per inner step, meta-learned with the initialisation. The meta-parameters become
      ``{"init": params, "lr": rates}`` where every leaf of ``rates`` has shape
      ``[inner_steps]``, initialised to ``inner_lr``. ``adapt_setup`` gives test-time SGD
      the *last* inner step's rates for every step (one rate per leaf; the same as training
      when ``inner_steps == 1``).
    - ``multi_step_loss`` (MSL): the objective is the weighted sum of the query losses after
      every inner step, with :func:`msl_weights` of the outer step (uniform at first, annealed
      onto the final step over ``msl_anneal_steps``). ``loss`` stays the final query loss.
    - ``first_order_until=N`` (derivative-order annealing): first-order meta-gradients for
      outer steps ``< N``, exact second-order ones afterwards. Both gradient programs are
      compiled and ``lax.cond`` on ``state.step`` runs only one of them per step, so the
      early steps cost what FOMAML costs (under a ``vmap`` of ``step``, both run).

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
        task_batching: how the task axis is batched: ``"auto"`` (per backend and model),
            ``"vmap"`` or ``"conv_per_task"``; see :func:`metajax.task_vmap`.
        remat: checkpoint each inner step to save memory (see :func:`metajax.adapt`).
        unroll: inner-loop unrolling (see :func:`metajax.adapt`).
        track_pre_adaptation: also report the query loss before adaptation (``pre_loss``), at
            the cost of one extra forward pass per task.
        per_step_lr: learn per-leaf, per-step inner SGD rates (MAML++ LSLR); ``inner_lr``
            (a scalar, or a pytree of scalars shaped like the params' leaves) initialises them.
            Not with ``inner_opt``.
        multi_step_loss: optimise the annealed weighted sum of the query losses after every
            inner step (MAML++ MSL); needs ``msl_anneal_steps``.
        msl_anneal_steps: outer steps over which the MSL weights anneal onto the last step.
        msl_min_weight: final weight of each non-final step (default ``0.03 / inner_steps``,
            as in the MAML++ code; ``0.0`` ends at plain MAML's objective).
        first_order_until: use first-order meta-gradients while ``state.step`` is below this
            outer step, then second-order ones (not with ``first_order=True``).

    Returns:
        A :class:`MetaLearner` ``(init, step, adapt_setup)``. ``step(state, tasks)`` returns the
        new state and metrics ``{"loss", "pre_loss", <aux>, "pre_<aux>"}`` averaged over tasks,
        where ``loss`` is the post-adaptation query loss that was minimised (with
        ``multi_step_loss``, the weighted objective is reported as ``msl_loss``).
        ``adapt_setup`` is ``None`` unless ``per_step_lr``.

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
    _check_maml_options(inner_steps=inner_steps, inner_lr=inner_lr, first_order=first_order,
                        inner_opt=inner_opt, per_step_lr=per_step_lr,
                        multi_step_loss=multi_step_loss, msl_anneal_steps=msl_anneal_steps,
                        msl_min_weight=msl_min_weight, first_order_until=first_order_until)
    loss = with_aux(loss_fn, has_aux=has_aux)

    def inner_loop(meta: Params, support, record, fo: bool):
        """Adapts on ``support``; returns ``(adapted, record(params) after every step)``."""
        if per_step_lr:
            step = _per_step_lr_inner_step(loss, meta["lr"], first_order=fo)
            carry = (meta["init"], jnp.zeros((), jnp.int32))
        elif record is None:
            return adapt(loss_fn, meta, support, steps=inner_steps, lr=inner_lr, first_order=fo,
                         inner_opt=inner_opt, has_aux=has_aux, remat=remat, unroll=unroll), None
        else:
            _check_lr(inner_lr, meta, inner_opt)
            step = make_inner_step(loss_fn, lr=inner_lr, first_order=fo, inner_opt=inner_opt,
                                   has_aux=has_aux)
            carry = (meta, inner_opt.init(meta) if inner_opt is not None else None)
        return _repeat(step, carry, support, steps=inner_steps, remat=remat, unroll=unroll,
                       record=record)

    def task_objective(meta: Params, support, query, weights, *, fo: bool):
        if multi_step_loss:  # query loss after every inner step, weighted
            _, (step_losses, step_aux) = inner_loop(meta, support, lambda p: loss(p, query), fo)
            post, aux = step_losses[-1], jax.tree.map(lambda a: a[-1], step_aux)
            objective = jnp.dot(weights, step_losses)
        else:
            adapted, _ = inner_loop(meta, support, None, fo)
            post, aux = loss(adapted, query)
            objective = post
        metrics = task_metrics(post, aux)
        if multi_step_loss:
            metrics["msl_loss"] = objective
        if track_pre_adaptation:
            params = meta["init"] if per_step_lr else meta
            pre, pre_aux = loss(jax.lax.stop_gradient(params), query)
            metrics.update(task_metrics(pre, pre_aux, prefix="pre_"))
        return objective, metrics

    def meta_grad(meta: Params, tasks: TaskBatch, weights, *, fo: bool):
        meta_grad = mean_task_gradient(
            lambda m, support, query: task_objective(m, support, query, weights, fo=fo),
            task_batching=task_batching)
        return meta_grad(meta, tasks)

    def init(params: Params) -> MetaState:
        meta = {"init": params, "lr": _init_rates(params)} if per_step_lr else params
        return init_state(outer_opt, meta)

    def _init_rates(params: Params) -> Params:
        lr_struct = jax.tree.structure(inner_lr)
        if jax.tree_util.treedef_is_leaf(lr_struct) and jnp.ndim(inner_lr) == 0:
            rates = jax.tree.map(lambda _: inner_lr, params)
        elif lr_struct == jax.tree.structure(params) and all(
                jnp.ndim(a) == 0 for a in jax.tree.leaves(inner_lr)):
            rates = inner_lr
        else:
            raise ValueError("With per_step_lr=True, `inner_lr` must be a scalar or a pytree of "
                             "scalars (one per parameter leaf) with the structure of `params`; "
                             f"got structure {lr_struct}.")
        return jax.tree.map(lambda p, a: jnp.full((inner_steps,), a, jnp.result_type(p)),
                            params, rates)

    def step(state: MetaState, tasks: TaskBatch):
        num_tasks(tasks)
        weights = None
        if multi_step_loss:
            weights = msl_weights(state.step, inner_steps=inner_steps,
                                  anneal_steps=msl_anneal_steps, min_weight=msl_min_weight)
        if first_order_until is None:
            grads, metrics = meta_grad(state.params, tasks, weights, fo=first_order)
        else:  # runs one branch per step: the early steps cost what FOMAML costs
            grads, metrics = jax.lax.cond(
                state.step < first_order_until, functools.partial(meta_grad, fo=True),
                functools.partial(meta_grad, fo=False), state.params, tasks, weights)
        return apply_outer_update(outer_opt, state, grads), metrics

    adapt_setup = None
    if per_step_lr:
        def adapt_setup(meta: Params) -> tuple[Params, Params]:
            return meta["init"], jax.tree.map(lambda a: a[-1], meta["lr"])

    return MetaLearner(init=init, step=step, adapt_setup=adapt_setup)


def _check_maml_options(*, inner_steps, inner_lr, first_order, inner_opt, per_step_lr,
                        multi_step_loss, msl_anneal_steps, msl_min_weight, first_order_until):
    if per_step_lr:
        if inner_opt is not None:
            raise ValueError("`per_step_lr=True` learns SGD step sizes; it cannot be combined "
                             "with `inner_opt`.")
        if inner_lr is None:
            raise ValueError("`per_step_lr=True` needs `inner_lr` (a scalar or per-leaf scalars) "
                             "to initialise the learned per-step rates.")
    if multi_step_loss:
        if msl_anneal_steps is None:
            raise ValueError("`multi_step_loss=True` needs `msl_anneal_steps` (outer steps over "
                             "which the loss weights anneal onto the final inner step).")
        msl_weights(0, inner_steps=inner_steps, anneal_steps=msl_anneal_steps,
                    min_weight=msl_min_weight)  # validates both options
    elif msl_anneal_steps is not None or msl_min_weight is not None:
        raise ValueError("`msl_anneal_steps` and `msl_min_weight` only apply with "
                         "multi_step_loss=True.")
    if first_order_until is not None:
        check_steps(first_order_until, name="first_order_until", allow_zero=True)
        if first_order:
            raise ValueError("`first_order_until` anneals from first to second order; it "
                             "cannot be combined with first_order=True.")


def fomaml(
    loss_fn: LossFn,
    outer_opt: optax.GradientTransformation,
    *,
    inner_steps: int,
    inner_lr: Any = None,
    **options: Any,
) -> MetaLearner:
    """First-order MAML: :func:`maml` with ``first_order=True``.

    The inner gradients are treated as constants, so the meta-gradient of a task is the
    query-loss gradient at the adapted parameters (no Hessian-vector products).

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar`` (or ``(scalar, aux)`` with ``has_aux``).
        outer_opt: the Optax optimizer of the meta-parameters.
        inner_steps: number of inner gradient steps per task.
        inner_lr: inner SGD step size (scalar or per-parameter pytree).
        **options: any other keyword option of :func:`maml` except ``first_order``.

    Returns:
        The :class:`MetaLearner` of :func:`maml`.

    Example:
        >>> import jax, jax.numpy as jnp, optax, metajax
        >>> loss = lambda w, b: jnp.mean((b[0] * w - b[1]) ** 2)
        >>> learner = metajax.fomaml(loss, optax.sgd(0.1), inner_steps=2, inner_lr=0.1)
        >>> x = jnp.ones((4, 5)); tasks = metajax.TaskBatch((x, 2 * x), (x, 2 * x))
        >>> state, metrics = learner.step(learner.init(jnp.array(0.0)), tasks)
        >>> round(float(state.params), 4)  # -0.1 * d/dw' (w' - 2)^2 at w' = 0.72
        0.256
    """
    if "first_order" in options:
        raise TypeError("fomaml() sets first_order=True itself; use metajax.maml to choose.")
    return maml(loss_fn, outer_opt, inner_steps=inner_steps, inner_lr=inner_lr,
                first_order=True, **options)
