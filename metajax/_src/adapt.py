"""The inner loop: pure, differentiable fast adaptation of a learner on one task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from metajax._src.types import Params, PyTree

LossFn = Callable[[Params, PyTree], Any]

# Inner loops up to this length are unrolled into straight-line code (fastest for the
# short loops of MAML); longer loops use `lax.scan` so compile time stays flat.
MAX_UNROLLED_STEPS = 10


def check_steps(steps: Any, *, name: str = "steps", allow_zero: bool = False) -> int:
    """Validates a static number of inner steps and returns it as ``int``."""
    low = 0 if allow_zero else 1
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < low:
        raise ValueError(f"`{name}` must be a Python int >= {low}; got {steps!r}.")
    return steps


def with_aux(
    loss_fn: LossFn, *, has_aux: bool
) -> Callable[[Params, PyTree], tuple[jax.Array, dict]]:
    """Wraps ``loss_fn`` so it always returns ``(scalar_loss, aux_dict)`` and checks its output.

    Args:
        loss_fn: ``loss_fn(params, batch)`` returning a scalar, or ``(scalar, aux)`` if ``has_aux``.
        has_aux: whether ``loss_fn`` returns auxiliary outputs (e.g. ``{"accuracy": acc}``).

    Returns:
        A function ``(params, batch) -> (loss, aux)``; ``aux`` is ``{}`` when ``has_aux`` is False.
    """

    def wrapped(params, batch):
        out = loss_fn(params, batch)
        if has_aux:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(
                    "`loss_fn` was declared with has_aux=True and must return (loss, aux); got "
                    f"{type(out).__name__}."
                )
            loss, aux = out
        else:
            if isinstance(out, tuple):
                raise TypeError(
                    "`loss_fn` returned a tuple; pass has_aux=True if it returns (loss, aux)."
                )
            loss, aux = out, {}
        if jnp.shape(loss) != ():
            raise ValueError(
                "`loss_fn` must return a scalar loss (reduce over examples, e.g. with .mean()); "
                f"got shape {jnp.shape(loss)}."
            )
        return loss, aux

    return wrapped


def _check_lr(lr: Any, params: Params, inner_opt: optax.GradientTransformation | None) -> None:
    if inner_opt is not None:
        if lr is not None:
            raise ValueError(
                "Pass either `lr` (plain SGD inner loop) or `inner_opt` (an Optax optimizer that "
                "already includes its learning rate), not both."
            )
        return
    if lr is None:
        raise ValueError("`lr` is required when no `inner_opt` is given: a scalar or a pytree "
                         "of per-parameter learning rates shaped like `params`.")
    if jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(lr)) and jnp.ndim(lr) == 0:
        return
    lr_struct, p_struct = jax.tree_util.tree_structure(lr), jax.tree_util.tree_structure(params)
    if lr_struct != p_struct:
        raise ValueError(
            "`lr` must be a scalar or a pytree with the structure of `params` (per-parameter "
            f"rates); got structure {lr_struct}, expected {p_struct}."
        )
    for a, p in zip(jax.tree.leaves(lr), jax.tree.leaves(params), strict=True):
        if jnp.shape(a) != () and jnp.shape(a) != jnp.shape(p):
            raise ValueError(
                "Every leaf of a per-parameter `lr` must be a scalar or have the shape of its "
                f"parameter; got {jnp.shape(a)} for a parameter of shape {jnp.shape(p)}."
            )


def make_inner_step(
    loss_fn: LossFn,
    *,
    lr: Any = None,
    first_order: bool = False,
    inner_opt: optax.GradientTransformation | None = None,
    has_aux: bool = False,
) -> Callable[[tuple[Params, PyTree], PyTree], tuple[Params, PyTree]]:
    """Builds one differentiable inner update ``((params, opt_state), support) -> same``."""
    loss = with_aux(loss_fn, has_aux=has_aux)
    grad_fn = jax.grad(lambda p, b: loss(p, b)[0])
    # Check for a leaf before `jnp.ndim`: a per-parameter list/tuple of differently shaped
    # rates cannot be converted to one array.
    scalar_lr = inner_opt is None and jax.tree_util.treedef_is_leaf(
        jax.tree_util.tree_structure(lr)) and jnp.ndim(lr) == 0

    def step(carry, support):
        params, opt_state = carry
        grads = grad_fn(params, support)
        if first_order:
            grads = jax.lax.stop_gradient(grads)
        if inner_opt is not None:
            updates, opt_state = inner_opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state
        if scalar_lr:
            return jax.tree.map(lambda p, g: p - lr * g, params, grads), opt_state
        return jax.tree.map(lambda p, g, a: p - a * g, params, grads, lr), opt_state

    return step


def adapt(
    loss_fn: LossFn,
    params: Params,
    support: PyTree,
    *,
    steps: int,
    lr: Any = None,
    first_order: bool = False,
    inner_opt: optax.GradientTransformation | None = None,
    has_aux: bool = False,
    remat: bool = False,
    unroll: int | bool | None = None,
) -> Params:
    """Adapts ``params`` to one task by ``steps`` differentiable gradient steps on ``support``.

    Pure and differentiable end to end: ``jax.grad`` through ``adapt`` gives the exact
    (second-order) meta-gradient unless ``first_order=True``.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar`` (or ``(scalar, aux)`` with ``has_aux``).
        params: the initial parameters (any pytree).
        support: the task's support batch, passed to ``loss_fn`` as ``batch``.
        steps: number of inner gradient steps (static Python int >= 1).
        lr: SGD step size: a scalar, or a pytree of per-parameter rates shaped like
            ``params`` (Meta-SGD). Must be ``None`` when ``inner_opt`` is given.
        first_order: if True, inner gradients are treated as constants (FOMAML).
        inner_opt: any Optax ``GradientTransformation`` used as the inner optimizer (it includes
            its own learning rate); the meta-gradient flows through its state (momentum, Adam).
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
        remat: checkpoint each inner step (``jax.checkpoint``), trading compute for memory in
            second-order meta-gradients through many steps.
        unroll: how many inner steps to unroll per ``lax.scan`` iteration; ``None`` unrolls loops of
            up to ``MAX_UNROLLED_STEPS`` steps fully and scans longer ones.

    Returns:
        The adapted parameters, with the structure of ``params``.

    Example:
        >>> import jax.numpy as jnp, metajax
        >>> loss = lambda w, b: jnp.mean((b[0] * w - b[1]) ** 2)
        >>> support = (jnp.array([1.0, 2.0]), jnp.array([2.0, 4.0]))
        >>> w = metajax.adapt(loss, jnp.array(0.0), support, steps=50, lr=0.1)
        >>> bool(jnp.abs(w - 2.0) < 1e-3)
        True
    """
    check_steps(steps)
    _check_lr(lr, params, inner_opt)
    step = make_inner_step(loss_fn, lr=lr, first_order=first_order, inner_opt=inner_opt,
                           has_aux=has_aux)
    opt_state = inner_opt.init(params) if inner_opt is not None else None
    params, _ = _repeat(step, (params, opt_state), support, steps=steps, remat=remat,
                        unroll=unroll)
    return params


def _repeat(step, carry, support, *, steps, remat, unroll, record=None):
    """Applies ``step`` ``steps`` times; optionally stacks ``record(params)`` after each step."""
    if remat:
        step = jax.checkpoint(step)

    def body(carry, _):
        carry = step(carry, support)
        return carry, (record(carry[0]) if record is not None else None)

    if unroll is None:
        unroll = steps if steps <= MAX_UNROLLED_STEPS else 1
    if unroll is True or unroll == steps:
        outs = []
        for _ in range(steps):
            carry, out = body(carry, None)
            outs.append(out)
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *outs) if record is not None else None
        return carry[0], stacked
    carry, stacked = jax.lax.scan(body, carry, None, length=steps, unroll=unroll)
    return carry[0], stacked


def adapt_trajectory(
    loss_fn: LossFn,
    params: Params,
    support: PyTree,
    record: Callable[[Params], PyTree],
    *,
    steps: int,
    lr: Any = None,
    inner_opt: optax.GradientTransformation | None = None,
    has_aux: bool = False,
) -> PyTree:
    """Like :func:`adapt`, but returns ``record(params_t)`` stacked over ``t = 0 .. steps``.

    Used for evaluation: one trajectory gives the metrics after every number of steps.
    """
    check_steps(steps, allow_zero=True)
    _check_lr(lr, params, inner_opt)
    first = record(params)
    if steps == 0:
        return jax.tree.map(lambda x: x[None], first)
    step = make_inner_step(loss_fn, lr=lr, inner_opt=inner_opt, has_aux=has_aux)
    opt_state = inner_opt.init(params) if inner_opt is not None else None
    _, rest = _repeat(step, (params, opt_state), support, steps=steps, remat=False, unroll=1,
                      record=record)
    return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, rest)
