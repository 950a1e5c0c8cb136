"""The inner loop: pure, differentiable fast adaptation on one task, and its update rules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metajax._src.core.types import Adaptation, Params, PyTree

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


def scale_by_rates(lr: Any) -> optax.GradientTransformation:
    """Optax transformation ``updates = -lr * grads``: SGD at a scalar or per-parameter rate.

    ``lr`` is a scalar or a pytree with the structure of the parameters whose leaves are
    scalars or arrays of their parameter's shape (one rate per scalar parameter). Rates may be
    traced values (meta-learned), so the update is differentiable in them.

    Examples:
        >>> import jax.numpy as jnp
        >>> updates, _ = scale_by_rates(0.5).update(jnp.array([2.0, -4.0]), None)
        >>> updates.tolist()
        [-1.0, 2.0]
    """
    # Check for a leaf before `jnp.ndim`: a per-parameter list/tuple of differently shaped
    # rates cannot be converted to one array.
    scalar = jax.tree_util.treedef_is_leaf(jax.tree.structure(lr)) and jnp.ndim(lr) == 0

    def update(grads, state, params=None):
        del params
        if scalar:
            return jax.tree.map(lambda g: -(lr * g), grads), state
        return jax.tree.map(lambda g, a: -(a * g), grads, lr), state

    def init(params):
        _check_lr(lr, params, None)
        return optax.EmptyState()

    return optax.GradientTransformation(init, update)


def scale_by_step_rates(rates: Params) -> optax.GradientTransformation:
    """Optax transformation ``updates = -rates[t] * grads`` at inner step ``t``, per leaf.

    Every leaf of ``rates`` has shape ``[T]`` (MAML++'s per-layer, per-step rates); steps past
    ``T - 1`` reuse the last rate, so the same rates can adapt for longer at test time.

    Examples:
        >>> import jax.numpy as jnp
        >>> opt = scale_by_step_rates(jnp.array([1.0, 0.5]))
        >>> state = opt.init(jnp.zeros(()))
        >>> [float(opt.update(jnp.array(1.0), state)[0]) for state in (state, state + 1, state + 5)]
        [-1.0, -0.5, -0.5]
    """
    last = jax.tree.leaves(rates)[0].shape[0] - 1

    def update(grads, t, params=None):
        del params
        i = jnp.minimum(t, last)
        return jax.tree.map(lambda g, a: -(a[i] * g), grads, rates), t + 1

    return optax.GradientTransformation(lambda params: jnp.zeros((), jnp.int32), update)


class InnerUpdate(NamedTuple):
    """The inner loop's update rule: an Optax optimizer, possibly built from meta-learned rates.

    Learners assemble one of these with an objective and a meta-gradient (see
    :func:`metajax.gradient_learner`); :func:`sgd_update`, :func:`optax_update`,
    :func:`per_step_rates` and :func:`per_parameter_rates` build them.

    Attributes:
        init: ``init(params) -> rates``: the rule's meta-learned step sizes, or ``None`` when
            it learns none (the meta-parameters are then the initialisation itself; otherwise
            they are :class:`metajax.LearnedRates` ``(init, lr)``).
        optimizer: ``optimizer(rates) -> optax.GradientTransformation``: the differentiable
            inner optimizer (``rates`` is ``None`` for a rule that learns none).
        adaptation: ``adaptation(start, rates) -> Adaptation``: how test-time adaptation
            steps from ``start`` with these rates.
    """

    init: Callable[[Params], Any]
    optimizer: Callable[[Any], optax.GradientTransformation]
    adaptation: Callable[[Params, Any], Adaptation]


def sgd_update(lr: Any) -> InnerUpdate:
    """Inner SGD at a fixed rate: a scalar, or per-parameter rates shaped like the params.

    Examples:
        >>> sgd_update(0.1).adaptation("params", None)
        Adaptation(params='params', lr=0.1, inner_opt=None)
    """
    if lr is None:
        raise ValueError("`inner_lr` is required for an SGD inner loop: a scalar or a pytree of "
                         "per-parameter learning rates shaped like the params.")
    return InnerUpdate(init=lambda params: None, optimizer=lambda rates: scale_by_rates(lr),
                       adaptation=lambda start, rates: Adaptation(start, lr))


def optax_update(inner_opt: optax.GradientTransformation) -> InnerUpdate:
    """Any Optax optimizer as the inner loop, differentiated through (momentum, Adam state)."""
    if not isinstance(inner_opt, optax.GradientTransformation):
        raise TypeError("`inner_opt` must be an optax.GradientTransformation; got "
                        f"{type(inner_opt).__name__}.")
    return InnerUpdate(init=lambda params: None, optimizer=lambda rates: inner_opt,
                       adaptation=lambda start, rates: Adaptation(start, None, inner_opt))


def _scalar_per_leaf(init_lr: Any, params: Params, *, name: str) -> list:
    """``init_lr`` as one scalar per leaf of ``params``."""
    lr_struct = jax.tree.structure(init_lr)
    if jax.tree_util.treedef_is_leaf(lr_struct) and jnp.ndim(init_lr) == 0:
        return [init_lr] * len(jax.tree.leaves(params))
    if lr_struct == jax.tree.structure(params) and all(
            jnp.ndim(a) == 0 for a in jax.tree.leaves(init_lr)):
        return jax.tree.leaves(init_lr)
    raise ValueError(f"`{name}` must be a scalar or a pytree of scalars (one per parameter leaf) "
                     f"with the structure of `params`; got structure {lr_struct}.")


def per_step_rates(init_lr: Any, *, steps: int) -> InnerUpdate:
    """Learned SGD rates, one per parameter leaf and inner step (MAML++'s LSLR).

    Every leaf of the rates has shape ``[steps]``, initialised to ``init_lr`` (a scalar, or one
    scalar per leaf). Test-time adaptation takes the *last* step's rates for every step (the
    same as training when ``steps == 1``).

    Examples:
        >>> import jax.numpy as jnp
        >>> rates = per_step_rates(0.5, steps=3).init({"w": jnp.zeros(2)})
        >>> rates["w"].tolist()
        [0.5, 0.5, 0.5]
    """
    check_steps(steps, name="inner_steps")
    if init_lr is None:
        raise ValueError("Learned per-step rates need `inner_lr` (a scalar or per-leaf scalars) "
                         "to initialise them.")

    def init(params: Params) -> Params:
        rates = _scalar_per_leaf(init_lr, params, name="inner_lr")
        return jax.tree.unflatten(jax.tree.structure(params), [
            jnp.full((steps,), a, jnp.result_type(p))
            for p, a in zip(jax.tree.leaves(params), rates, strict=True)])

    return InnerUpdate(init=init, optimizer=scale_by_step_rates,
                       adaptation=lambda start, rates: Adaptation(
                           start, jax.tree.map(lambda a: a[-1], rates)))


def per_parameter_rates(init_lr: Any) -> InnerUpdate:
    """Learned SGD rates, one per scalar parameter, the same at every step (Meta-SGD).

    ``init_lr`` is a scalar, or a pytree like the params whose leaves are scalars or arrays of
    their parameter's shape. A rate may turn negative (it learns a direction too).

    Examples:
        >>> import jax.numpy as jnp
        >>> per_parameter_rates(0.5).init(jnp.zeros(3)).tolist()
        [0.5, 0.5, 0.5]
    """
    if init_lr is None:
        raise ValueError("`init_lr` is required: the initial per-parameter step size (a scalar "
                         "or a pytree shaped like the params).")

    def init(params: Params) -> Params:
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

    return InnerUpdate(init=init, optimizer=scale_by_rates,
                       adaptation=lambda start, rates: Adaptation(start, rates))


def inner_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    first_order: bool = False,
    has_aux: bool = False,
) -> Callable[[tuple[Params, PyTree], PyTree], tuple[Params, PyTree]]:
    """One differentiable inner update ``((params, opt_state), support) -> same``."""
    loss = with_aux(loss_fn, has_aux=has_aux)
    grad_fn = jax.grad(lambda p, b: loss(p, b)[0])

    def step(carry, support):
        params, opt_state = carry
        grads = grad_fn(params, support)
        if first_order:
            grads = jax.lax.stop_gradient(grads)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step


def adapt_with(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    params: Params,
    support: PyTree,
    *,
    steps: int,
    first_order: bool = False,
    has_aux: bool = False,
    remat: bool = False,
    unroll: int | bool | None = None,
    record: Callable[[Params], PyTree] | None = None,
) -> tuple[Params, PyTree]:
    """``steps`` updates of ``optimizer`` on ``support`` from ``params``.

    Returns:
        ``(adapted, records)``: ``records`` stacks ``record(params)`` after every step
        (``None`` without ``record``).
    """
    step = inner_step(loss_fn, optimizer, first_order=first_order, has_aux=has_aux)
    return _repeat(step, (params, optimizer.init(params)), support, steps=steps, remat=remat,
                   unroll=unroll, record=record)


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
            Through Adam-like optimizers give ``eps_root > 0`` (``optax.adam(lr,
            eps_root=1e-8)``): where a gradient is exactly zero (a dead ReLU unit) the
            derivative of ``sqrt`` at a zero second moment is infinite and the meta-gradient NaN.
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
        remat: checkpoint each inner step (``jax.checkpoint``), trading compute for memory in
            second-order meta-gradients through many steps.
        unroll: how many inner steps to unroll per ``lax.scan`` iteration; ``None`` unrolls loops of
            up to ``MAX_UNROLLED_STEPS`` steps fully and scans longer ones.

    Returns:
        The adapted parameters, with the structure of ``params``.

    Examples:
        >>> import jax.numpy as jnp, metajax
        >>> loss = lambda w, b: jnp.mean((b[0] * w - b[1]) ** 2)
        >>> support = (jnp.array([1.0, 2.0]), jnp.array([2.0, 4.0]))
        >>> w = metajax.adapt(loss, jnp.array(0.0), support, steps=50, lr=0.1)
        >>> bool(jnp.abs(w - 2.0) < 1e-3)
        True
    """
    check_steps(steps)
    _check_lr(lr, params, inner_opt)
    optimizer = inner_opt if inner_opt is not None else scale_by_rates(lr)
    adapted, _ = adapt_with(loss_fn, optimizer, params, support, steps=steps,
                            first_order=first_order, has_aux=has_aux, remat=remat, unroll=unroll)
    return adapted


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
    optimizer = inner_opt if inner_opt is not None else scale_by_rates(lr)
    _, rest = adapt_with(loss_fn, optimizer, params, support, steps=steps, has_aux=has_aux,
                         unroll=1, record=record)
    return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, rest)
