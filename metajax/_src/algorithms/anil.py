"""ANIL (Raghu et al., 2020): almost no inner loop, only the head adapts to each task."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import numpy as np
import optax

from metajax._src.core.adapt import LossFn, check_steps, sgd_update
from metajax._src.core.batching import TaskBatching
from metajax._src.core.outer import Partition, gradient_learner, gradient_order
from metajax._src.core.types import Adaptation, MetaLearner, MetaState, Params, PyTree

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

    Examples:
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
    task_batching: TaskBatching | None = None,
    remat: bool = False,
    unroll: int | bool | None = None,
    track_pre_adaptation: bool = True,
    axis_name: str | None = None,
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
        task_batching: how the task axis is batched; ``None``: :func:`metajax.default_batching`.
        remat: checkpoint each inner step (see :func:`metajax.adapt`).
        unroll: inner-loop unrolling (see :func:`metajax.adapt`).
        track_pre_adaptation: also report the query loss before adaptation (``pre_loss``).
        axis_name: the mapped axis the meta-batch is split over (see :func:`metajax.maml`).

    Returns:
        A :class:`MetaLearner` ``(init, step, adaptation)``; the meta-parameters are the full
        params, and ``adaptation(params)`` is ``Adaptation(params, rates)`` with rate ``0.0``
        on body leaves and ``inner_lr`` on head leaves, so test-time SGD adapts only the head.
        Metrics as in :func:`metajax.maml`. The assembly :func:`metajax.gradient_learner` with
        a head-only :class:`metajax.Partition`.

    Examples:
        >>> import jax, jax.numpy as jnp, optax, metajax
        >>> apply = lambda p, x: jnp.tanh(x @ p["body"]) @ p["head"]
        >>> loss = metajax.losses.mse(apply)
        >>> params = {"body": 0.5 * jnp.ones((2, 3)), "head": jnp.zeros((3, 1))}
        >>> learner = metajax.anil(loss, optax.adam(1e-2), inner_steps=2, inner_lr=0.1,
        ...                        head="head")
        >>> x = jnp.ones((4, 5, 2)); tasks = metajax.TaskBatch((x, x[..., :1]), (x, x[..., :1]))
        >>> state, metrics = jax.jit(learner.step)(learner.init(params), tasks)
        >>> learner.adaptation(state.params).lr
        {'body': 0.0, 'head': 0.1}
    """
    check_steps(inner_steps, name="inner_steps")
    if isinstance(inner_lr, bool) or not isinstance(inner_lr, (int, float)):
        raise ValueError(f"`inner_lr` must be a scalar step size (float); got {inner_lr!r}.")
    if not (isinstance(head, str) or callable(head)):
        raise TypeError("`head` must be a top-level parameter key (str) or a function "
                        f"params -> bool pytree; got {type(head).__name__}.")

    def split(params: Params):
        mask = head_mask(head, params)
        head_p, body_p = _split(params, mask)
        return head_p, (jax.tree.structure(params), mask, body_p)

    def merge(head_p, frozen) -> Params:
        treedef, mask, body_p = frozen
        return _merge(treedef, mask, head_p, body_p)

    def adaptation(params: Params) -> Adaptation:
        mask = head_mask(head, params)
        rates = [float(inner_lr) if m else 0.0 for m in mask]
        return Adaptation(params, jax.tree.unflatten(jax.tree.structure(params), rates))

    learner = gradient_learner(
        loss_fn, outer_opt, inner=sgd_update(inner_lr), inner_steps=inner_steps,
        order=gradient_order(first_order=first_order),
        partition=Partition(split, merge), adaptation=adaptation, has_aux=has_aux,
        task_batching=task_batching, remat=remat, unroll=unroll,
        track_pre_adaptation=track_pre_adaptation, axis_name=axis_name)

    def init(params: Params) -> MetaState:
        head_mask(head, params)  # fail early on a bad `head`
        return learner.init(params)

    return learner._replace(init=init)
