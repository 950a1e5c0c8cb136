"""ANIL (Raghu et al., 2020): almost no inner loop, only the head adapts to each task."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import optax

from metajax._src.adapt import LossFn, adapt, check_steps, with_aux
from metajax._src.maml import task_metrics
from metajax._src.outer import gradient_step, init_state, mean_task_gradient
from metajax._src.types import MetaLearner, MetaState, Params, PyTree

Head = str | Callable[[Params], PyTree]


def head_mask(head: Head, params: Params) -> list[bool]:
    """Which leaves of ``params`` (in ``jax.tree.leaves`` order) belong to the head.

    Args:
        head: a top-level key of ``params`` (e.g. ``"head"`` or ``"dense_2"``), or a function
            ``params -> pytree of bools`` with the structure of ``params`` (True = head leaf).
            The function must depend only on the structure (names, shapes), not on values.
        params: the parameters.

    Returns:
        One Python bool per leaf.

    Example:
        >>> import jax.numpy as jnp
        >>> head_mask("head", {"body": {"w": jnp.ones(2)}, "head": {"b": 0.0, "w": jnp.ones(2)}})
        [False, True, True]
    """
    if isinstance(head, str):
        if not isinstance(params, Mapping) or head not in params:
            keys = list(params) if isinstance(params, Mapping) else type(params).__name__
            raise ValueError(f"`head`={head!r} is not a top-level key of the params; the "
                             f"params' top-level keys are {keys}.")

        def key_of(path):
            first = path[0]
            return getattr(first, "key", getattr(first, "name", None))

        mask = jax.tree_util.tree_map_with_path(lambda path, _: key_of(path) == head, params)
    elif callable(head):
        mask = head(params)
        m_struct, p_struct = jax.tree.structure(mask), jax.tree.structure(params)
        if m_struct != p_struct:
            raise ValueError("`head(params)` must return a pytree of bools with the structure of "
                             f"the params; got {m_struct}, expected {p_struct}.")
    else:
        raise TypeError("`head` must be a top-level parameter key (str) or a function "
                        f"params -> bool pytree; got {type(head).__name__}.")
    out = []
    for leaf in jax.tree.leaves(mask):
        try:
            out.append(bool(np.asarray(leaf)))
        except (TypeError, jax.errors.ConcretizationTypeError) as err:
            raise ValueError("`head(params)` must return concrete bools decided by the params' "
                             "structure (names, shapes), not by their values.") from err
    if not any(out):
        raise ValueError("`head` selects no parameter: at least one leaf must adapt.")
    return out


def _split(params: Params, mask: list[bool]) -> tuple[list, list]:
    leaves = jax.tree.leaves(params)
    return ([x for x, m in zip(leaves, mask, strict=True) if m],
            [x for x, m in zip(leaves, mask, strict=True) if not m])


def _merge(treedef, mask: list[bool], head: list, body: list) -> Params:
    head_it, body_it = iter(head), iter(body)
    return jax.tree.unflatten(treedef, [next(head_it) if m else next(body_it) for m in mask])


def anil(
    loss_fn: LossFn,
    outer_opt: optax.GradientTransformation,
    *,
    inner_steps: int,
    inner_lr: float,
    head: Head,
    first_order: bool = False,
    has_aux: bool = False,
    task_batching: str = "auto",
    remat: bool = False,
    unroll: int | bool | None = None,
    track_pre_adaptation: bool = True,
) -> MetaLearner:
    """ANIL: MAML where only the head adapts in the inner loop; the body is meta-learned.

    The parameters are split into the head (selected by ``head``) and the body. Each task
    adapts only the head, by ``inner_steps`` SGD steps on its support set, and the inner loop
    is differentiated with respect to the head only, so no body gradients are computed inside
    it. The outer update trains body and head initialisation on the query loss, through the
    inner loop (second order unless ``first_order``). The result equals MAML with a zero
    inner step size on the body, at a fraction of the inner-loop cost.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar`` (or ``(scalar, aux)`` with ``has_aux``).
        outer_opt: the Optax optimizer of the meta-parameters (body and head).
        inner_steps: inner SGD steps per task (static int >= 1).
        inner_lr: inner SGD step size of the head (scalar).
        head: a top-level key of the params naming the head subtree (for
            :class:`metajax.models.MLP` the last layer, ``f"dense_{n - 1}"``), or a function
            ``params -> bool pytree`` marking the head leaves (see :func:`head_mask`).
        first_order: drop second-order terms.
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
        task_batching: how the task axis is batched: ``"auto"`` (per backend and model),
            ``"vmap"`` or ``"conv_per_task"``; see :func:`metajax.task_vmap`.
        remat: checkpoint each inner step (see :func:`metajax.adapt`).
        unroll: inner-loop unrolling (see :func:`metajax.adapt`).
        track_pre_adaptation: also report the query loss before adaptation (``pre_loss``).

    Returns:
        A :class:`MetaLearner` ``(init, step, adapt_setup)``; the meta-parameters are the full
        params, and ``adapt_setup(params)`` returns ``(params, rates)`` with rate ``0.0`` on
        body leaves and ``inner_lr`` on head leaves, so test-time SGD adapts only the head.
        Metrics as in :func:`metajax.maml`.

    Example:
        >>> import jax, jax.numpy as jnp, optax, metajax
        >>> apply = lambda p, x: jnp.tanh(x @ p["body"]) @ p["head"]
        >>> loss = metajax.losses.mse(apply)
        >>> params = {"body": 0.5 * jnp.ones((2, 3)), "head": jnp.zeros((3, 1))}
        >>> learner = metajax.anil(loss, optax.adam(1e-2), inner_steps=2, inner_lr=0.1,
        ...                        head="head")
        >>> x = jnp.ones((4, 5, 2)); tasks = metajax.TaskBatch((x, x[..., :1]), (x, x[..., :1]))
        >>> state, metrics = jax.jit(learner.step)(learner.init(params), tasks)
        >>> _, lr = learner.adapt_setup(state.params)
        >>> lr
        {'body': 0.0, 'head': 0.1}
    """
    check_steps(inner_steps, name="inner_steps")
    if isinstance(inner_lr, bool) or not isinstance(inner_lr, (int, float)):
        raise ValueError(f"`inner_lr` must be a scalar step size (float); got {inner_lr!r}.")
    if not (isinstance(head, str) or callable(head)):
        raise TypeError("`head` must be a top-level parameter key (str) or a function "
                        f"params -> bool pytree; got {type(head).__name__}.")
    loss = with_aux(loss_fn, has_aux=has_aux)

    def task_objective(params: Params, support, query):
        mask = head_mask(head, params)
        treedef = jax.tree.structure(params)
        head_p, body_p = _split(params, mask)

        def head_loss(h, batch):  # body closed over: no body gradients in the inner loop
            return loss_fn(_merge(treedef, mask, h, body_p), batch)

        adapted = adapt(head_loss, head_p, support, steps=inner_steps, lr=inner_lr,
                        first_order=first_order, has_aux=has_aux, remat=remat, unroll=unroll)
        post, aux = loss(_merge(treedef, mask, adapted, body_p), query)
        metrics = task_metrics(post, aux)
        if track_pre_adaptation:
            pre, pre_aux = loss(jax.lax.stop_gradient(params), query)
            metrics.update(task_metrics(pre, pre_aux, prefix="pre_"))
        return post, metrics

    meta_grad = mean_task_gradient(task_objective, task_batching=task_batching)

    def init(params: Params) -> MetaState:
        head_mask(head, params)  # fail early on a bad `head`
        return init_state(outer_opt, params)

    step = gradient_step(meta_grad, outer_opt)

    def adapt_setup(params: Params) -> tuple[Params, Any]:
        mask = head_mask(head, params)
        rates = [float(inner_lr) if m else 0.0 for m in mask]
        return params, jax.tree.unflatten(jax.tree.structure(params), rates)

    return MetaLearner(init=init, step=step, adapt_setup=adapt_setup)
