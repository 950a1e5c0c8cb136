"""MAML (Finn et al., 2017), first-order MAML and MAML++ (Antoniou et al., 2019), assembled
from the outer loop's pieces (:mod:`metajax._src.core.outer`)."""

from __future__ import annotations

from typing import Any

import optax

from metajax._src.core.adapt import (
    InnerUpdate,
    LossFn,
    optax_update,
    per_step_rates,
    sgd_update,
)
from metajax._src.core.batching import TaskBatching
from metajax._src.core.outer import (
    QueryObjective,
    final_query_loss,
    gradient_learner,
    gradient_order,
)
from metajax._src.core.outer import (
    multi_step_loss as multi_step_objective,
)
from metajax._src.core.types import MetaLearner


def maml(
    loss_fn: LossFn,
    outer_opt: optax.GradientTransformation,
    *,
    inner_steps: int,
    inner_lr: Any = None,
    first_order: bool = False,
    inner_opt: optax.GradientTransformation | None = None,
    has_aux: bool = False,
    task_batching: TaskBatching | None = None,
    remat: bool = False,
    unroll: int | bool | None = None,
    track_pre_adaptation: bool = True,
    per_step_lr: bool = False,
    multi_step_loss: bool = False,
    msl_anneal_steps: int | None = None,
    msl_min_weight: float | None = None,
    first_order_until: int | None = None,
    axis_name: str | None = None,
) -> MetaLearner:
    """Model-Agnostic Meta-Learning: learns an initialisation that adapts fast.

    Each ``step`` adapts every task of the batch at once (batched over the task axis by
    ``task_batching``) on its support set, evaluates the adapted parameters on the query set,
    and applies one ``outer_opt`` update on the mean query loss. A thin assembly of
    :func:`metajax.gradient_learner`'s pieces: the inner update (:func:`metajax.sgd_update`,
    :func:`metajax.optax_update` or :func:`metajax.per_step_rates`), the objective
    (:func:`metajax.final_query_loss` or :func:`metajax.multi_step_loss`) and the
    meta-gradient order (:func:`metajax.second_order`, :func:`metajax.first_order` or
    :func:`metajax.order_annealing`).

    The MAML++ options (Antoniou et al., 2019, "How to train your MAML") are off by default:

    - ``per_step_lr`` (LSLR, :func:`metajax.per_step_rates`): one learned SGD rate per
      parameter leaf (layer weight or bias) and per inner step, meta-learned with the
      initialisation. The meta-parameters become :class:`metajax.LearnedRates`
      ``(init, lr)`` where every leaf of ``lr`` has shape ``[inner_steps]``, initialised to
      ``inner_lr``. ``adaptation`` gives test-time SGD the *last* inner step's rates for every
      step (one rate per leaf; the same as training when ``inner_steps == 1``).
    - ``multi_step_loss`` (MSL, :func:`metajax.multi_step_loss`): the objective is the
      weighted sum of the query losses after every inner step, with :func:`msl_weights` of
      the outer step (uniform at first, annealed onto the final step over
      ``msl_anneal_steps``). ``loss`` stays the final query loss.
    - ``first_order_until=N`` (derivative-order annealing, :func:`metajax.order_annealing`):
      first-order meta-gradients for
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
        inner_opt: optional Optax inner optimizer, differentiated through (Adam with
            ``eps_root > 0``, e.g. ``optax.adam(lr, eps_root=1e-8)``: see :func:`metajax.adapt`).
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``; aux values (e.g. accuracy) are
            averaged over tasks into the metrics.
        task_batching: how the task axis is batched (a :class:`metajax.TaskBatching`);
            ``None``: :func:`metajax.default_batching` (the CPU engine on CPU, ``vmap``
            elsewhere).
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
        axis_name: the mapped axis the meta-batch is split over under ``shard_map`` (e.g.
            ``"tasks"`` with :func:`metajax.distributed.process_step`); the meta-gradient is
            averaged over it. ``None``: one device holds the whole meta-batch.

    Returns:
        A :class:`MetaLearner` ``(init, step, adaptation)``. ``step(state, tasks)`` returns the
        new state and metrics ``{"loss", "pre_loss", <aux>, "pre_<aux>"}`` averaged over tasks,
        where ``loss`` is the post-adaptation query loss that was minimised (with
        ``multi_step_loss``, the weighted objective is reported as ``msl_loss``).
        ``adaptation(meta)`` is where test-time adaptation starts and how it steps.

    Examples:
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
    inner = _inner_update(inner_steps=inner_steps, inner_lr=inner_lr, inner_opt=inner_opt,
                          per_step_lr=per_step_lr)
    objective = _objective(inner_steps=inner_steps, multi_step_loss=multi_step_loss,
                           msl_anneal_steps=msl_anneal_steps, msl_min_weight=msl_min_weight)
    order = gradient_order(first_order=first_order, first_order_until=first_order_until)
    return gradient_learner(loss_fn, outer_opt, inner=inner, inner_steps=inner_steps,
                            objective=objective, order=order, has_aux=has_aux,
                            task_batching=task_batching, remat=remat, unroll=unroll,
                            track_pre_adaptation=track_pre_adaptation, axis_name=axis_name)


def _inner_update(*, inner_steps, inner_lr, inner_opt, per_step_lr) -> InnerUpdate:
    if per_step_lr:
        if inner_opt is not None:
            raise ValueError("`per_step_lr=True` learns SGD step sizes; it cannot be combined "
                             "with `inner_opt`.")
        if inner_lr is None:
            raise ValueError("`per_step_lr=True` needs `inner_lr` (a scalar or per-leaf scalars) "
                             "to initialise the learned per-step rates.")
        return per_step_rates(inner_lr, steps=inner_steps)
    if inner_opt is not None:
        if inner_lr is not None:
            raise ValueError("Pass either `inner_lr` (plain SGD inner loop) or `inner_opt` (an "
                             "Optax optimizer that already includes its learning rate), not "
                             "both.")
        return optax_update(inner_opt)
    return sgd_update(inner_lr)


def _objective(*, inner_steps, multi_step_loss, msl_anneal_steps, msl_min_weight
               ) -> QueryObjective:
    if not multi_step_loss:
        if msl_anneal_steps is not None or msl_min_weight is not None:
            raise ValueError("`msl_anneal_steps` and `msl_min_weight` only apply with "
                             "multi_step_loss=True.")
        return final_query_loss()
    if msl_anneal_steps is None:
        raise ValueError("`multi_step_loss=True` needs `msl_anneal_steps` (outer steps over "
                         "which the loss weights anneal onto the final inner step).")
    return multi_step_objective(inner_steps=inner_steps, anneal_steps=msl_anneal_steps,
                                min_weight=msl_min_weight)


def mamlpp(
    loss_fn: LossFn,
    outer_opt: optax.GradientTransformation,
    *,
    inner_steps: int,
    inner_lr: Any,
    msl_anneal_steps: int,
    msl_min_weight: float | None = None,
    first_order_until: int | None = None,
    **options: Any,
) -> MetaLearner:
    """MAML++ (Antoniou et al., 2019): learned per-layer, per-step rates (LSLR), the annealed
    multi-step loss (MSL) and, with ``first_order_until``, derivative-order annealing.

    The assembly :func:`metajax.gradient_learner` (``inner=per_step_rates(inner_lr)``,
    ``objective=multi_step_loss(...)``, ``order=order_annealing(first_order_until)``); the
    same as :func:`maml` with ``per_step_lr=True, multi_step_loss=True``.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar`` (or ``(scalar, aux)`` with ``has_aux``).
        outer_opt: the Optax optimizer of the meta-parameters (initialisation and rates).
        inner_steps: inner steps per task.
        inner_lr: initial value of the learned rates (a scalar, or one scalar per leaf).
        msl_anneal_steps: outer steps over which the MSL weights anneal onto the last step.
        msl_min_weight: final weight of each non-final step (default ``0.03 / inner_steps``).
        first_order_until: first-order meta-gradients before this outer step (default: exact
            from the start).
        **options: ``has_aux``, ``task_batching``, ``remat``, ``unroll``,
            ``track_pre_adaptation``, ``axis_name`` (as for :func:`maml`).

    Examples:
        >>> import jax, jax.numpy as jnp, optax, metajax
        >>> loss = lambda w, b: jnp.mean((b[0] * w - b[1]) ** 2)
        >>> learner = metajax.mamlpp(loss, optax.adam(1e-2), inner_steps=2, inner_lr=0.1,
        ...                          msl_anneal_steps=10)
        >>> x = jnp.ones((4, 5)); tasks = metajax.TaskBatch((x, 2 * x), (x, 2 * x))
        >>> state, metrics = jax.jit(learner.step)(learner.init(jnp.array(0.0)), tasks)
        >>> state.params.lr.shape, sorted(metrics)
        ((2,), ['loss', 'msl_loss', 'pre_loss'])
    """
    return gradient_learner(
        loss_fn, outer_opt, inner=per_step_rates(inner_lr, steps=inner_steps),
        inner_steps=inner_steps,
        objective=multi_step_objective(inner_steps=inner_steps, anneal_steps=msl_anneal_steps,
                                       min_weight=msl_min_weight),
        order=gradient_order(first_order_until=first_order_until),
        **options)


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

    Examples:
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
