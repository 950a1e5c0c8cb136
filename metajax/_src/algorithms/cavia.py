"""CAVIA (Zintgraf et al., 2019): fast context adaptation, as a MetaLearner, and its evaluator."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from metajax._src.core.adapt import adapt, check_steps, with_aux
from metajax._src.core.batching import TaskBatching
from metajax._src.core.evaluate import make_evaluator
from metajax._src.core.outer import gradient_step, init_state, mean_task_gradient, task_metrics
from metajax._src.core.types import MetaLearner, MetaState, Params, PyTree, TaskBatch

ContextLossFn = Callable[[Params, jax.Array, PyTree], Any]


def _check_num_context(num_context: Any) -> int:
    if isinstance(num_context, bool) or not isinstance(num_context, int) or num_context < 1:
        raise ValueError(f"`num_context` must be a Python int >= 1; got {num_context!r}.")
    return num_context


def _check_lr(lr: Any) -> None:
    if lr is None:
        raise ValueError("`lr` (the context step size) is required: a scalar, or an array of "
                         "shape [num_context] of per-context rates.")


def zero_context(params: Params, num_context: int) -> jax.Array:
    """The initial context of every task: zeros of shape ``[num_context]``.

    Its dtype is that of the floating-point leaves of ``params`` (the default float if none).

    Examples:
        >>> import jax.numpy as jnp
        >>> zero_context({"w": jnp.ones(3)}, 2)
        Array([0., 0.], dtype=float32)
    """
    floats = [x for x in jax.tree.leaves(params) if jnp.issubdtype(jnp.result_type(x),
                                                                    jnp.floating)]
    dtype = jnp.result_type(*floats) if floats else jnp.result_type(float)
    return jnp.zeros((_check_num_context(num_context),), dtype)


def cavia_adapt(
    loss_fn: ContextLossFn,
    params: Params,
    support: PyTree,
    *,
    num_context: int,
    steps: int,
    lr: Any,
    first_order: bool = False,
    has_aux: bool = False,
    remat: bool = False,
    unroll: int | bool | None = None,
) -> jax.Array:
    """CAVIA's inner loop: adapts a task's context from zeros; the network ``params`` stay fixed.

    Runs ``steps`` SGD steps on ``context -> loss_fn(params, context, support)`` starting from
    :func:`zero_context`. Differentiable in ``params`` (second order through the context
    updates unless ``first_order``).

    Args:
        loss_fn: ``loss_fn(params, context, batch) -> scalar`` (or ``(scalar, aux)`` with
            ``has_aux``); ``context`` is a vector of shape ``[num_context]``.
        params: the shared network parameters (not updated here).
        support: the task's support batch.
        num_context: number of context parameters (int >= 1).
        steps: number of inner steps (int >= 1).
        lr: the context step size: a scalar or an array of shape ``[num_context]``.
        first_order: treat the inner gradients as constants (no second-order terms).
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
        remat: checkpoint each inner step (see :func:`metajax.adapt`).
        unroll: inner-loop unrolling (see :func:`metajax.adapt`).

    Returns:
        The adapted context, shape ``[num_context]``.

    Examples:
        >>> import jax.numpy as jnp
        >>> loss = lambda p, c, b: jnp.mean((b[0] * p + c[0] - b[1]) ** 2)   # c[0]: an offset
        >>> support = (jnp.array([1.0, 2.0]), jnp.array([3.0, 4.0]))         # y = x + 2
        >>> ctx = cavia_adapt(loss, 1.0, support, num_context=1, steps=20, lr=0.5)
        >>> round(float(ctx[0]), 4)
        2.0
    """
    _check_lr(lr)
    context = zero_context(params, num_context)
    context_loss = lambda ctx, batch: loss_fn(params, ctx, batch)  # noqa: E731
    return adapt(context_loss, context, support, steps=steps, lr=lr, first_order=first_order,
                 has_aux=has_aux, remat=remat, unroll=unroll)


def cavia(
    loss_fn: ContextLossFn,
    outer_opt: optax.GradientTransformation,
    *,
    num_context: int,
    inner_steps: int,
    inner_lr: Any,
    first_order: bool = False,
    has_aux: bool = False,
    task_batching: TaskBatching | None = None,
    remat: bool = False,
    unroll: int | bool | None = None,
    track_pre_adaptation: bool = True,
    axis_name: str | None = None,
) -> MetaLearner:
    """CAVIA: adapt a small per-task context vector in the inner loop; meta-learn the network.

    Every task starts from the context ``zeros([num_context])``; the inner loop takes
    ``inner_steps`` SGD steps on the context only (:func:`cavia_adapt`), and the outer update
    trains the shared network parameters on the query loss at the adapted context, by a
    second-order meta-gradient through the context updates (or first order). The meta-parameters
    (``state.params``) are the network parameters alone.

    The loss takes the context explicitly: ``loss_fn(params, context, batch)``. With
    :class:`metajax.models.ContextMLP`, which concatenates the context to every input::

        model = models.ContextMLP(features=(40, 40, 1))
        params = model.init(key, jnp.zeros((1, 1)), jnp.zeros(5))["params"]
        def loss_fn(params, context, batch):
            x, y = batch
            return jnp.mean((model.apply({"params": params}, x, context) - y) ** 2)

    Evaluation: adapting *all* parameters with SGD (:func:`metajax.evaluate`,
    :func:`metajax.experiment.compare_with_baselines`) is not how CAVIA adapts, so ``adaptation``
    is ``None`` and those functions do not apply; use :func:`cavia_evaluator`, which adapts the
    context only and returns the same ``{metric: [len(steps), n_tasks]}`` arrays as
    :func:`metajax.make_evaluator`. ``experiments/sinusoid_cavia.py`` compares CAVIA with the
    scratch and pretrained baselines this way.

    Args:
        loss_fn: ``loss_fn(params, context, batch) -> scalar`` (or ``(scalar, aux)`` with
            ``has_aux``).
        outer_opt: the Optax optimizer of the network parameters.
        num_context: number of context parameters per task (int >= 1).
        inner_steps: context SGD steps per task (int >= 1).
        inner_lr: context step size (scalar or array of shape ``[num_context]``). CAVIA's
            context tolerates large rates (the paper uses 1.0 on sinusoids).
        first_order: drop the second-order terms of the meta-gradient.
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``; aux values are averaged over tasks.
        task_batching: how the task axis is batched; ``None``: :func:`metajax.default_batching`.
        remat: checkpoint each inner step (see :func:`metajax.adapt`).
        unroll: inner-loop unrolling (see :func:`metajax.adapt`).
        track_pre_adaptation: also report the query loss at the zero context (``pre_loss``).
        axis_name: the mapped axis the meta-batch is split over (see :func:`metajax.maml`).

    Returns:
        A :class:`MetaLearner` ``(init, step)``; ``step`` reports ``{"loss", "pre_loss", <aux>,
        "pre_<aux>"}`` averaged over tasks (``loss``: query loss at the adapted context).

    Raises:
        ValueError: if ``num_context`` or ``inner_steps`` is not an int >= 1, or ``inner_lr`` is
            missing (the message names the argument).

    Examples:
        >>> import jax, jax.numpy as jnp, optax, metajax
        >>> loss = lambda w, c, b: jnp.mean((b[0] * w + c[0] - b[1]) ** 2)
        >>> learner = metajax.cavia(loss, optax.adam(1e-2), num_context=1, inner_steps=2,
        ...                         inner_lr=0.5)
        >>> tasks = metajax.TaskBatch((jnp.ones((8, 5)), jnp.ones((8, 5))),
        ...                           (jnp.ones((8, 5)), jnp.ones((8, 5))))
        >>> state, metrics = jax.jit(learner.step)(learner.init(jnp.array(0.0)), tasks)
        >>> sorted(metrics)
        ['loss', 'pre_loss']
    """
    _check_num_context(num_context)
    check_steps(inner_steps, name="inner_steps")
    if inner_lr is None:
        raise ValueError("`inner_lr` (the context step size) is required.")
    loss = with_aux(lambda p, batch: loss_fn(p[0], p[1], batch), has_aux=has_aux)

    def task_objective(params: Params, support, query):
        context = cavia_adapt(loss_fn, params, support, num_context=num_context,
                              steps=inner_steps, lr=inner_lr, first_order=first_order,
                              has_aux=has_aux, remat=remat, unroll=unroll)
        post, aux = loss((params, context), query)
        metrics = task_metrics(post, aux)
        if track_pre_adaptation:
            frozen = jax.lax.stop_gradient(params)
            pre, pre_aux = loss((frozen, zero_context(frozen, num_context)), query)
            metrics.update(task_metrics(pre, pre_aux, prefix="pre_"))
        return post, metrics

    meta_grad = mean_task_gradient(task_objective, task_batching=task_batching)

    def init(params: Params) -> MetaState:
        return init_state(outer_opt, params)

    step = gradient_step(meta_grad, outer_opt, axis_name=axis_name)

    return MetaLearner(init=init, step=step)


def cavia_evaluator(
    loss_fn: ContextLossFn,
    *,
    num_context: int,
    lr: Any,
    steps: Sequence[int] = (0, 1, 5, 10),
    has_aux: bool = False,
    chunk_size: int | None = None,
) -> Callable[[Params, TaskBatch], dict[str, jax.Array]]:
    """Builds ``evaluate(params, tasks) -> {metric: [len(steps), n_tasks]}`` for CAVIA.

    Like :func:`metajax.make_evaluator`, but each held-out task adapts only its context (from
    zeros, ``max(steps)`` SGD steps with step size ``lr``) while the network ``params`` stay
    fixed; query metrics are recorded after each number of steps in ``steps`` (``0``: the
    zero context). Pure and jittable.

    Args:
        loss_fn: ``loss_fn(params, context, batch)`` as in :func:`cavia`.
        num_context: number of context parameters.
        lr: context step size (scalar or array of shape ``[num_context]``).
        steps: the adaptation step counts to report.
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
        chunk_size: evaluate this many tasks at a time (see :func:`metajax.make_evaluator`).

    Returns:
        ``evaluate(params, tasks)``.

    Examples:
        >>> import jax.numpy as jnp, metajax
        >>> loss = lambda w, c, b: jnp.mean((b[0] * w + c[0] - b[1]) ** 2)
        >>> x = jnp.ones((3, 4)); tasks = metajax.TaskBatch((x, 2 * x), (x, 2 * x))
        >>> out = cavia_evaluator(loss, num_context=1, lr=0.25, steps=(0, 1))(1.0, tasks)
        >>> [round(float(v), 3) for v in out["loss"].mean(axis=1)]
        [1.0, 0.25]
    """
    _check_num_context(num_context)
    _check_lr(lr)
    steps = tuple(check_steps(s, name="steps", allow_zero=True) for s in steps)
    if not steps:
        raise ValueError("`steps` must name at least one number of adaptation steps.")

    def evaluate(params: Params, tasks: TaskBatch) -> dict[str, jax.Array]:
        context_loss = lambda ctx, batch: loss_fn(params, ctx, batch)  # noqa: E731
        fn = make_evaluator(context_loss, steps=steps, lr=lr, has_aux=has_aux,
                            chunk_size=chunk_size)
        return fn(zero_context(params, num_context), tasks)

    return evaluate
