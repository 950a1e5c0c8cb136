"""Reptile (Nichol, Achiam and Schulman, 2018) as a :class:`MetaLearner`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from metajax._src.core.adapt import LossFn, adapt, check_steps, with_aux
from metajax._src.core.outer import apply_outer_update, task_metrics
from metajax._src.core.types import (
    Adaptation,
    MetaLearner,
    MetaState,
    Params,
    PyTree,
    TaskBatch,
    num_tasks,
)


def _concat_examples(support: PyTree, query: PyTree) -> PyTree:
    """One task's support and query examples joined along the example (leading) axis."""
    s_struct, q_struct = jax.tree.structure(support), jax.tree.structure(query)
    if s_struct != q_struct:
        raise ValueError("With use_query=True, Reptile adapts on support and query together, so "
                         "`tasks.support` and `tasks.query` need the same structure; got "
                         f"{s_struct} and {q_struct}.")
    return jax.tree.map(lambda s, q: jnp.concatenate([s, q], axis=0), support, query)


def reptile(
    loss_fn: LossFn,
    outer_opt: optax.GradientTransformation | None = None,
    *,
    inner_steps: int,
    inner_lr: float | None = None,
    inner_opt: optax.GradientTransformation | None = None,
    outer_step_size: float | None = None,
    total_steps: int | None = None,
    use_query: bool = True,
    has_aux: bool = False,
    unroll: int | bool | None = None,
    track_pre_adaptation: bool = True,
    axis_name: str | None = None,
) -> MetaLearner:
    """Reptile: move the initialisation toward the parameters adapted to each task.

    Each ``step`` adapts every task of the batch (``jax.vmap``) for ``inner_steps`` steps of
    ``inner_opt`` from the meta-parameters ``theta`` and applies

        ``theta <- theta + eps_t * mean_i(theta'_i - theta)``

    (the batched version of the paper's Algorithm 2). Nothing is differentiated through the
    inner loop, so there are no second-order terms and memory does not grow with
    ``inner_steps``.

    Design choices:

    - The outer rule is Optax's: the pseudo-gradient ``theta - mean_i theta'_i`` goes through
      ``outer_opt``. By default ``outer_opt`` is ``optax.sgd(eps_t)`` with ``eps_t`` =
      ``outer_step_size`` annealed linearly to 0 over ``total_steps`` (constant if
      ``total_steps`` is None), which is exactly the update above.
    - Reptile has no train/test split inside a task, so by default (``use_query=True``) the
      inner loop runs on each task's support and query examples together, i.e. on all the
      task's data. Full-batch inner steps; each task gets a fresh inner optimizer state.
    - The default inner optimizer is the paper's Adam with ``b1=0`` and step size
      ``inner_lr``. Unlike the paper's code, its moments are not carried across tasks
      (each task's inner loop is a pure function of the task and ``theta``).

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar`` (or ``(scalar, aux)`` with ``has_aux``).
        outer_opt: optional Optax optimizer fed the pseudo-gradient ``theta - mean theta'``;
            leave ``None`` for the paper's rule with ``outer_step_size``/``total_steps``.
        inner_steps: inner optimizer steps per task (static int >= 1).
        inner_lr: step size of the default inner optimizer ``optax.adam(inner_lr, b1=0.0)``.
        inner_opt: any Optax inner optimizer instead (e.g. ``optax.sgd(0.02)``); then
            ``inner_lr`` must be ``None``.
        outer_step_size: ``eps`` of the default outer rule (default 1.0, the paper's value).
        total_steps: anneal ``eps`` linearly to 0 over this many outer steps.
        use_query: adapt on support and query together (True) or on the support only.
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
        unroll: inner-loop unrolling (see :func:`metajax.adapt`).
        track_pre_adaptation: also report the loss before adaptation (``pre_loss``).
        axis_name: the mapped axis the meta-batch is split over (see :func:`metajax.maml`).

    Returns:
        A :class:`MetaLearner` ``(init, step, adaptation)``; the meta-parameters are the
        initialisation, and test-time adaptation uses the inner optimizer (Reptile's Adam).
        Metrics (means over tasks): ``loss``, the loss after adaptation on the data adapted to
        (support and query with ``use_query``), and ``pre_loss``, the same data's loss at
        ``theta``.

    Examples:
        >>> import jax.numpy as jnp, optax, metajax
        >>> loss = lambda w, b: jnp.mean((b[0] * w - b[1]) ** 2)
        >>> learner = metajax.reptile(loss, inner_steps=1, inner_opt=optax.sgd(0.25),
        ...                           outer_step_size=0.5)
        >>> x = jnp.ones((2, 3)); tasks = metajax.TaskBatch((x, 2 * x), (x, 2 * x))
        >>> state, metrics = learner.step(learner.init(jnp.array(0.0)), tasks)
        >>> float(state.params)  # theta' = 0 - 0.25 * 2 * (0 - 2) = 1; 0 + 0.5 * (1 - 0)
        0.5
    """
    check_steps(inner_steps, name="inner_steps")
    if inner_opt is None:
        if inner_lr is None:
            raise ValueError("Pass `inner_lr` (for the default inner optimizer "
                             "optax.adam(inner_lr, b1=0.0)) or an explicit `inner_opt`.")
        inner_opt = optax.adam(inner_lr, b1=0.0)
    elif inner_lr is not None:
        raise ValueError("Pass either `inner_lr` (default Adam inner optimizer) or `inner_opt` "
                         "(which includes its own step size), not both.")
    if outer_opt is None:
        eps = 1.0 if outer_step_size is None else outer_step_size
        if total_steps is not None:
            check_steps(total_steps, name="total_steps")
            eps = optax.linear_schedule(eps, 0.0, transition_steps=total_steps)
        outer_opt = optax.sgd(eps)
    elif outer_step_size is not None or total_steps is not None:
        raise ValueError("`outer_step_size` and `total_steps` configure the default outer rule; "
                         "with an explicit `outer_opt` put the step size (and its schedule) "
                         "in `outer_opt`.")
    loss = with_aux(loss_fn, has_aux=has_aux)

    def adapt_one(params: Params, support, query):
        data = _concat_examples(support, query) if use_query else support
        adapted = adapt(loss_fn, params, data, steps=inner_steps, inner_opt=inner_opt,
                        has_aux=has_aux, unroll=unroll)
        post, aux = loss(adapted, data)
        metrics = task_metrics(post, aux)
        if track_pre_adaptation:
            metrics.update(task_metrics(*loss(params, data), prefix="pre_"))
        return adapted, metrics

    # The single place where tasks are batched: params shared, support/query per task.
    batched = jax.vmap(adapt_one, in_axes=(None, 0, 0))

    def init(params: Params) -> MetaState:
        return MetaState(params=params, opt_state=outer_opt.init(params),
                         step=jnp.zeros((), jnp.int32))

    def step(state: MetaState, tasks: TaskBatch):
        num_tasks(tasks)
        adapted, metrics = batched(state.params, tasks.support, tasks.query)
        pseudo_grad = jax.tree.map(lambda p, a: p - jnp.mean(a, axis=0), state.params, adapted)
        return (apply_outer_update(outer_opt, state, pseudo_grad, axis_name=axis_name),
                jax.tree.map(jnp.mean, metrics))

    def adaptation(params: Params) -> Adaptation:
        return Adaptation(params, None, inner_opt)

    return MetaLearner(init=init, step=step, adaptation=adaptation)

