"""Meta-SGD (Li et al., 2017): meta-learned initialisation and per-parameter inner step sizes."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from metajax._src.adapt import LossFn, adapt, check_steps, with_aux
from metajax._src.maml import task_metrics
from metajax._src.outer import gradient_step, init_state, mean_task_gradient
from metajax._src.types import MetaLearner, MetaState, Params


def metasgd(
    loss_fn: LossFn,
    outer_opt: optax.GradientTransformation,
    *,
    inner_steps: int = 1,
    init_lr: Any,
    first_order: bool = False,
    has_aux: bool = False,
    task_batching: str = "auto",
    remat: bool = False,
    unroll: int | bool | None = None,
    track_pre_adaptation: bool = True,
) -> MetaLearner:
    """Meta-SGD: learns where to start and, per parameter, how far to step.

    The meta-parameters are ``{"init": params, "lr": rates}`` where ``rates`` has the shape of
    ``params`` (one learned step size per scalar parameter, direction included: a rate may
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
        task_batching: how the task axis is batched: ``"auto"`` (per backend and model),
            ``"vmap"`` or ``"conv_per_task"``; see :func:`metajax.task_vmap`.
        remat: checkpoint each inner step (see :func:`metajax.adapt`).
        unroll: inner-loop unrolling (see :func:`metajax.adapt`).
        track_pre_adaptation: also report the query loss before adaptation (``pre_loss``).

    Returns:
        A :class:`MetaLearner` ``(init, step, adapt_setup)``; ``init(params)`` builds the
        meta-parameters and ``adapt_setup(meta) == (meta["init"], meta["lr"])``. Metrics as in
        :func:`metajax.maml`.

    Example:
        >>> import jax, jax.numpy as jnp, optax, metajax
        >>> loss = lambda w, b: jnp.mean((b[0] @ w - b[1]) ** 2)
        >>> learner = metajax.metasgd(loss, optax.adam(1e-2), init_lr=0.1)
        >>> state = learner.init(jnp.zeros(3))
        >>> state.params["lr"]
        Array([0.1, 0.1, 0.1], dtype=float32)
        >>> x = jnp.ones((4, 5, 3)); tasks = metajax.TaskBatch((x, x[..., 0]), (x, x[..., 0]))
        >>> state, metrics = jax.jit(learner.step)(state, tasks)
        >>> init, lr = learner.adapt_setup(state.params)
        >>> lr.shape
        (3,)
    """
    check_steps(inner_steps, name="inner_steps")
    if init_lr is None:
        raise ValueError("`init_lr` is required: the initial per-parameter step size (a scalar "
                         "or a pytree shaped like the params).")
    loss = with_aux(loss_fn, has_aux=has_aux)

    def init_rates(params: Params) -> Params:
        lr_struct, p_struct = jax.tree.structure(init_lr), jax.tree.structure(params)
        if jax.tree_util.treedef_is_leaf(lr_struct) and jnp.ndim(init_lr) == 0:
            return jax.tree.map(lambda p: jnp.full(jnp.shape(p), init_lr, jnp.result_type(p)),
                                params)
        if lr_struct != p_struct:
            raise ValueError("`init_lr` must be a scalar or a pytree with the structure of the "
                             f"params; got structure {lr_struct}, expected {p_struct}.")

        def full(p, a):
            if jnp.ndim(a) != 0 and jnp.shape(a) != jnp.shape(p):
                raise ValueError("Every leaf of `init_lr` must be a scalar or have the shape of "
                                 f"its parameter; got {jnp.shape(a)} for {jnp.shape(p)}.")
            return jnp.broadcast_to(jnp.asarray(a, jnp.result_type(p)), jnp.shape(p))

        return jax.tree.map(full, params, init_lr)

    def task_objective(meta: Params, support, query):
        adapted = adapt(loss_fn, meta["init"], support, steps=inner_steps, lr=meta["lr"],
                        first_order=first_order, has_aux=has_aux, remat=remat, unroll=unroll)
        post, aux = loss(adapted, query)
        metrics = task_metrics(post, aux)
        if track_pre_adaptation:
            pre, pre_aux = loss(jax.lax.stop_gradient(meta["init"]), query)
            metrics.update(task_metrics(pre, pre_aux, prefix="pre_"))
        return post, metrics

    meta_grad = mean_task_gradient(task_objective, task_batching=task_batching)

    def init(params: Params) -> MetaState:
        meta = {"init": params, "lr": init_rates(params)}
        return init_state(outer_opt, meta)

    step = gradient_step(meta_grad, outer_opt)

    def adapt_setup(meta: Params) -> tuple[Params, Params]:
        return meta["init"], meta["lr"]

    return MetaLearner(init=init, step=step, adapt_setup=adapt_setup)
