"""How the task axis is batched: ``task_vmap``, a ``jax.vmap`` that keeps conv nets fast on CPU.

``jax.vmap`` of a per-task objective turns every convolution whose input *and* weights are
per-task (the adapted weights of MAML and its relatives) into one grouped convolution, which
XLA:CPU runs on a slow generic path (tens of times slower than the same convolutions one task
at a time). ``task_vmap`` traces the single-task function once, then evaluates its jaxpr over
the task axis itself: every equation is batched with ``jax.vmap`` exactly as ``jax.vmap``
would, except convolutions with per-task weights, which are lowered to one ordinary
convolution per task (tasks split along the leading axis and the results stacked). The
arithmetic per task is the same, so values and gradients match ``jax.vmap`` to float
rounding; only the XLA program differs.

Convolutions whose weights are shared (the support pass at the meta-parameters, or any
convolution of a non-adapted feature extractor) stay folded into the batch dimension as
``jax.vmap`` folds them: one large convolution for all tasks. Either kind, when it is a 3x3
stride-1 convolution with enough channels, is computed by Winograd's F(2x2, 3x3)
(:mod:`metajax._src.cpu.winograd`); tiling max-pools are the maximum of strided slices, with
first-maximum gradients. Both go through :func:`~metajax._src.cpu.materialize.materialized` so that
XLA:CPU does not fuse them into consumers that would recompute them. Equations without a
per-task-weight convolution anywhere inside (MLPs, the loss, batch norm, pooling) are batched
by ``jax.vmap`` unchanged, so for models without convolutions the program equals ``jax.vmap``'s.

The engine's meta-gradient (:func:`metajax.cpu.conv_batching`) first rewrites the
task objective's 3x3 convolutions into Winograd ones *before* differentiating it
(:func:`metajax.cpu.with_winograd_convs`), so their backward passes are Winograd ones as well and
reach this module as batched matrix products rather than convolutions.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jcore

from metajax._src.cpu.conv_block import first_max_position
from metajax._src.cpu.materialize import materialized
from metajax._src.cpu.winograd import conv_winograd, from_nhwc, winograd_applies

MAX_UNROLLED_SCAN = 10  # scans with convolutions of at most this many steps are unrolled

CALLS = ("pjit", "jit", "closed_call", "core_call")  # call-like primitives (and below)
_CUSTOM = ("custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr")
REMATS = ("remat2", "checkpoint", "remat")


def task_vmap(fun: Callable, in_axes: Any = 0) -> Callable:
    """Like ``jax.vmap(fun, in_axes)`` over tasks, per-task-weight convolutions one per task.

    Outputs are stacked along axis 0. Convolutions with per-task weights run as one ordinary
    convolution per task; everything else is batched as ``jax.vmap`` batches it (see the module
    docstring). Works for any jittable ``fun`` (Flax Linen or NNX models, plain
    ``apply(params, x)``), under ``jax.jit`` and ``jax.grad`` to any order.

    Args:
        fun: the single-task function.
        in_axes: as for ``jax.vmap`` (an int, ``None``, or a prefix tree of those).

    Returns:
        The batched function.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> conv = lambda w, x: jax.lax.conv(x, w, (1, 1), "SAME")  # per-task weights
        >>> w, x = jnp.ones((3, 2, 1, 3, 3)), jnp.ones((3, 4, 1, 5, 5))
        >>> fast = task_vmap(conv)(w, x)
        >>> bool(jnp.allclose(fast, jax.vmap(conv)(w, x)))
        True
    """
    return _task_vmap(fun, in_axes, {})


def per_task_weight_convs(fun: Callable, in_axes: Any, *args) -> int:
    """How many convolutions with per-task weights ``task_vmap(fun, in_axes)(*args)`` holds.

    Zero means the task axis folds into every convolution's batch (shared weights, or no
    convolution at all) and plain ``jax.vmap`` is as fast. Only traces; computes nothing.
    """
    return lowering_counts(fun, in_axes, *args).get("per_task_convs", 0)


def lowering_counts(fun: Callable, in_axes: Any, *args) -> dict[str, int]:
    """How the ``conv_per_task`` strategy lowers ``fun``'s convolutions, by kind.

    ``"per_task_convs"``: convolutions with per-task weights (each becomes one convolution
    per task); ``"winograd_convs"``: convolutions (per task, or folded over tasks) computed
    by Winograd's F(2x2, 3x3) (:mod:`metajax._src.cpu.winograd`). Only traces.
    """
    stats: dict = {}
    jax.eval_shape(_task_vmap(fun, in_axes, stats), *args)
    return stats


def _task_vmap(fun: Callable, in_axes: Any, stats: dict) -> Callable:
    @functools.wraps(fun)
    def batched(*args):
        flat_args, in_tree = jax.tree.flatten(args)
        flat_axes = _flatten_axes(in_axes, args, in_tree)
        sizes = {x.shape[a] for x, a in zip(flat_args, flat_axes, strict=True) if a is not None}
        if len(sizes) != 1:
            raise ValueError("task_vmap needs at least one batched argument and one task-axis "
                             f"size; got sizes {sorted(sizes)} for `in_axes`={in_axes!r}.")
        (n,) = sizes
        flat_args = [x if a is None else jnp.moveaxis(x, a, 0)
                     for x, a in zip(flat_args, flat_axes, strict=True)]
        is_batched = [a is not None for a in flat_axes]
        avals = [jax.ShapeDtypeStruct(x.shape[1:] if b else jnp.shape(x), jnp.result_type(x))
                 for x, b in zip(flat_args, is_batched, strict=True)]

        def flat_fun(*xs):
            return fun(*jax.tree.unflatten(in_tree, xs))

        closed, out_shape = jax.make_jaxpr(flat_fun, return_shape=True)(*avals)
        outs, out_batched = _eval_jaxpr(closed.jaxpr, closed.consts, flat_args, is_batched, n,
                                        stats)
        return jax.tree.unflatten(jax.tree.structure(out_shape),
                                  _broadcast_all(outs, out_batched, n))

    return batched


def _flatten_axes(in_axes, args, in_tree) -> list:
    """One axis (or ``None``) per leaf of ``args``; ``in_axes`` is a tree prefix of ``args``."""
    if isinstance(in_axes, int) or in_axes is None:
        return [in_axes] * in_tree.num_leaves
    flat: list = []

    def visit(axis, sub):
        flat.extend([axis] * len(jax.tree.leaves(sub)))

    is_axis = lambda a: a is None or isinstance(a, int)  # noqa: E731
    jax.tree.map(visit, tuple(in_axes) if isinstance(in_axes, list) else in_axes, args,
                 is_leaf=is_axis)
    return flat


# --------------------------------------------------------------------------- evaluation


def _eval_jaxpr(jaxpr, consts: Sequence, args: Sequence, batched: Sequence[bool], n: int,
                stats: dict):
    env: dict = {}

    def read(v):
        if isinstance(v, jcore.Literal):
            return v.val, False
        return env[v]

    for v, c in zip(jaxpr.constvars, consts, strict=True):
        env[v] = (c, False)
    for v, a, b in zip(jaxpr.invars, args, batched, strict=True):
        env[v] = (a, b)
    for eqn in jaxpr.eqns:
        vals, bs = zip(*map(read, eqn.invars), strict=True) if eqn.invars else ((), ())
        outs, out_bs = _eval_eqn(eqn, list(vals), list(bs), n, stats)
        for v, o, b in zip(eqn.outvars, outs, out_bs, strict=True):
            if not isinstance(v, jcore.DropVar):
                env[v] = (o, b)
    results = [read(v) for v in jaxpr.outvars]
    return [r[0] for r in results], [r[1] for r in results]


def bind_eqn(eqn, vals):
    params = eqn.primitive.get_bind_params(eqn.params)
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*vals, **params)
    return list(out) if eqn.primitive.multiple_results else [out]



def _eval_eqn(eqn, vals: list, bs: list, n: int, stats: dict):
    n_out = len(eqn.outvars)
    if not any(bs):
        return bind_eqn(eqn, vals), [False] * n_out
    name = eqn.primitive.name
    if name == "conv_general_dilated" and _plain_conv(eqn.params):
        if bs[1]:
            stats["per_task_convs"] = stats.get("per_task_convs", 0) + 1
            return [_conv_per_task(eqn, *_broadcast_all(vals, bs, n), n, stats)], [True]
        return [_conv_folded(eqn, vals[0], vals[1], n, stats)], [True]
    if name in _POOLING and _tiling_window(eqn.params, jnp.shape(vals[-1])[1:]):
        return [_POOLING[name](eqn.params, *_broadcast_all(vals, bs, n))], [True]
    sub = sub_jaxpr(eqn)
    if sub is not None and has_conv(sub.jaxpr):
        inner = functools.partial(_eval_closed, sub, bs=tuple(bs), n=n, stats=stats)
        if name in _CUSTOM:  # keep the custom rule: batch the call as jax.vmap would
            return _vmap_eqn(eqn, vals, bs)
        if name in REMATS:
            outs = jax.checkpoint(lambda *xs: _broadcast_all(*inner(*xs), n),
                                  prevent_cse=eqn.params.get("prevent_cse", True),
                                  policy=eqn.params.get("policy"))(*vals)
            return list(outs), [True] * n_out
        return inner(*vals)
    if name == "scan" and has_conv(eqn.params["jaxpr"].jaxpr):
        return _scan(eqn, vals, bs, n, stats)
    return _vmap_eqn(eqn, vals, bs)


def _vmap_eqn(eqn, vals, bs):
    in_axes = [0 if b else None for b in bs]
    outs = jax.vmap(lambda *xs: tuple(bind_eqn(eqn, xs)), in_axes=in_axes)(*vals)
    return list(outs), [True] * len(eqn.outvars)


def _eval_closed(closed, *vals, bs, n, stats):
    return _eval_jaxpr(closed.jaxpr, closed.consts, vals, bs, n, stats)


def _broadcast_all(outs, out_bs, n):
    return tuple(o if b else jnp.broadcast_to(o, (n, *jnp.shape(o)))
                 for o, b in zip(outs, out_bs, strict=True))


def sub_jaxpr(eqn):
    """The closed jaxpr a call-like equation evaluates, or ``None``."""
    name, params = eqn.primitive.name, eqn.params
    if name in CALLS:
        return _closed(params.get("jaxpr", params.get("call_jaxpr")))
    if name in _CUSTOM:
        return _closed(params.get("call_jaxpr", params.get("fun_jaxpr")))
    if name in REMATS:
        return _closed(params["jaxpr"])
    return None


def _closed(jaxpr):
    if jaxpr is None:
        return None
    if isinstance(jaxpr, jcore.ClosedJaxpr):
        return jaxpr
    return jcore.ClosedJaxpr(jaxpr, ())


def has_conv(jaxpr) -> bool:
    """Whether ``jaxpr`` or any jaxpr nested in its equations holds a convolution."""
    return any(eqn.primitive.name == "conv_general_dilated"
               or any(map(has_conv, jcore.jaxprs_in_params(eqn.params)))
               for eqn in jaxpr.eqns)


# --------------------------------------------------------------------------- rules


def _plain_conv(params) -> bool:
    return params["feature_group_count"] == 1 and params["batch_group_count"] == 1


def _conv_per_task(eqn, lhs, rhs, n: int, stats: dict):
    """One ordinary convolution per task: split both operands along the task axis, stack."""
    lhs_parts = lax.split(lhs, [1] * n, axis=0)
    rhs_parts = lax.split(rhs, [1] * n, axis=0)
    outs = [_canonical_conv(eqn, x[0], w[0], stats)
            for x, w in zip(lhs_parts, rhs_parts, strict=True)]
    return jnp.stack(outs)


def _canonical_conv(eqn, lhs, rhs, stats: dict):
    """The convolution of ``eqn`` computed in the layout XLA:CPU runs fast (NHWC, HWIO, NHWC).

    Inner gradients of conv nets contain convolutions with batch and feature axes swapped
    (weight gradients and their transposes); given as such, XLA:CPU may keep them in that
    layout and run them on a slow generic path. Transposing the operands and the result
    around a canonical convolution is exact and lets XLA use its fast kernels.
    """
    dims = eqn.params["dimension_numbers"]
    if winograd_applies(eqn.params, lhs, rhs):
        stats["winograd_convs"] = stats.get("winograd_convs", 0) + 1
        return conv_winograd(lhs, rhs, padding=eqn.params["padding"], dimension_numbers=dims)
    lhs_spec, rhs_spec = dims.lhs_spec, dims.rhs_spec
    nd = len(lhs_spec) - 2
    params = dict(eqn.primitive.get_bind_params(eqn.params), dimension_numbers=_nhwc(nd))
    if _kernel_larger_than_image(eqn.params, lhs, rhs):
        # The transpose of a weight gradient: a large "kernel" (activations) sliding over a
        # small padded "image" (a weight cotangent). Computed with the roles swapped.
        y = _swapped_conv(eqn, params, lhs, rhs)
    else:
        x = _materialized_transpose(lhs, (lhs_spec[0], *lhs_spec[2:], lhs_spec[1]))
        w = _materialized_transpose(rhs, (*rhs_spec[2:], rhs_spec[1], rhs_spec[0]))
        with eqn.ctx.manager:
            y = eqn.primitive.bind(x, w, **params)
    return from_nhwc(y, dims)


def _nhwc(nd: int) -> lax.ConvDimensionNumbers:
    return lax.ConvDimensionNumbers(lhs_spec=(0, nd + 1, *range(1, nd + 1)),
                                    rhs_spec=(nd + 1, nd, *range(nd)),
                                    out_spec=(0, nd + 1, *range(1, nd + 1)))


def _kernel_larger_than_image(params, lhs, rhs) -> bool:
    dims = params["dimension_numbers"]
    unit = all(v == 1 for v in (*params["window_strides"], *params["lhs_dilation"],
                                *params["rhs_dilation"]))
    image = [lhs.shape[d] for d in dims.lhs_spec[2:]]
    kernel = [rhs.shape[d] for d in dims.rhs_spec[2:]]
    return unit and all(k > i for k, i in zip(kernel, image, strict=True))


def _swapped_conv(eqn, params, lhs, rhs):
    """``conv(lhs, rhs)`` (stride 1, no dilation) as a convolution of ``rhs`` by ``lhs``.

    In one spatial dimension, ``out[p] = sum_a lhs[a] rhs[a + lo - p]`` for padding
    ``(lo, hi)``: read backwards in ``p`` it is the correlation of ``rhs`` (padded by
    ``(O - 1 - lo, X - K + lo)``, ``O`` the output, ``X`` the image and ``K`` the kernel
    length) with ``lhs`` as the kernel. Batch and output-feature axes trade places. Returns
    the result in NHWC order.
    """
    dims = params["dimension_numbers"]
    src = eqn.params["dimension_numbers"]
    nd = len(src.lhs_spec) - 2
    # New image: rhs as [out_features, *spatial, in_features]; new kernel: lhs as
    # [*spatial, in_features, batch].
    x = _materialized_transpose(rhs, (src.rhs_spec[0], *src.rhs_spec[2:], src.rhs_spec[1]))
    w = _materialized_transpose(lhs, (*src.lhs_spec[2:], src.lhs_spec[1], src.lhs_spec[0]))
    padding = []
    for d, (lo, hi) in enumerate(eqn.params["padding"]):
        image, kernel = lhs.shape[src.lhs_spec[2 + d]], rhs.shape[src.rhs_spec[2 + d]]
        out = image + lo + hi - kernel + 1
        padding.append((out - 1 - lo, image - kernel + lo))
    swapped = dict(params, padding=tuple(padding), dimension_numbers=dims)
    with eqn.ctx.manager:
        y = eqn.primitive.bind(x, w, **swapped)  # [out_features, *spatial (reversed), batch]
    y = lax.rev(y, tuple(range(1, nd + 1)))
    return jnp.swapaxes(y, 0, nd + 1)


def _tiling_window(params, shape) -> bool:
    """Whether a max-pool's windows tile its input (window == stride, no padding); a remainder
    that no window covers (7 rows pooled by 2) is allowed, as in ``VALID`` pooling."""
    window = params["window_dimensions"]
    dilations = (*params.get("base_dilation", ()), *params.get("window_dilation", ()))
    return (tuple(window) == tuple(params["window_strides"])
            and params.get("select_prim", lax.ge_p) is lax.ge_p
            and all(p == (0, 0) for p in params["padding"])
            and all(d == 1 for d in dilations)
            and all(size >= w for size, w in zip(shape, window, strict=True)))


def _window_slices(x, window):
    """``x[:, o_1::w_1, o_2::w_2, ...]`` for every window offset ``o``, row-major: the window
    elements of a tiling pool as element-wise operands (``x`` has the task axis first)."""
    slices = []
    for offset in itertools.product(*map(range, window)):
        limit = [x.shape[0], *(o + size - w + 1
                               for o, size, w in zip(offset, x.shape[1:], window, strict=True))]
        slices.append(lax.slice(x, (0, *offset), limit, (1, *window)))
    return slices


def _window_max(slices):
    """The element-wise maximum of :func:`_window_slices`: the pooled values."""
    return functools.reduce(jnp.maximum, slices[1:], slices[0])


def _max_pool(params, x):
    """The maximum of the window slices: element-wise, with features contiguous.

    Three times faster on XLA:CPU than a reduction over a window axis (whose elements are
    strided in memory), once materialized: fused into consumers that read it transposed (the
    layout copies of per-task convolutions), the slices were re-read from the full-size input
    and the meta-step got slower. Its gradients are the rules below, which avoid the scatter
    of ``reduce_window``'s.
    """
    def pool(x):
        return _window_max(_window_slices(x, params["window_dimensions"]))

    return materialized(pool, x)


def _first_max_index(params, operand):
    """Per window, the row-major position of its first maximum (XLA's select-and-scatter
    choice with ``ge``), as int8 (int32 for windows of more than 127 elements): a quarter of
    int32's memory traffic; materialized once for all its readers."""
    def index(x):
        return first_max_position(_window_slices(x, params["window_dimensions"]))

    return materialized(index, lax.stop_gradient(operand))


def _max_pool_transpose(params, source, operand):
    """Un-pooling: ``source`` placed at each window's first maximum, zeros elsewhere (and in
    any remainder no window covers)."""
    window = params["window_dimensions"]

    def unpool(source, first):
        zero = jnp.zeros((), source.dtype)
        total = None
        for k, offset in enumerate(itertools.product(*map(range, window))):
            spread = [(0, 0, 0)] + [(o, size - o - (n - 1) * w - 1, w - 1)
                                    for o, size, n, w in zip(offset, operand.shape[1:],
                                                             source.shape[1:], window,
                                                             strict=True)]
            part = lax.pad(jnp.where(first == k, source, zero), zero, spread)
            total = part if total is None else total + part
        return total

    return materialized(unpool, source, _first_max_index(params, operand))


def _max_pool_gather(params, tangents, operand):
    """Each window's tangent at its first maximum."""
    first = _first_max_index(params, operand)
    zero = jnp.zeros((), tangents.dtype)
    parts = [jnp.where(first == k, part, zero)
             for k, part in enumerate(_window_slices(tangents, params["window_dimensions"]))]
    return functools.reduce(jnp.add, parts[1:], parts[0])


_POOLING = {"reduce_window_max": _max_pool, "select_and_scatter_add": _max_pool_transpose,
            "select_and_gather_add": _max_pool_gather}


def _materialized_transpose(x, perm):
    """``jnp.transpose`` that XLA may not fold back into the consumer's dimension labels."""
    if tuple(perm) == tuple(range(x.ndim)):
        return x
    return lax.optimization_barrier(jnp.transpose(x, perm))


def _conv_folded(eqn, lhs, rhs, n: int, stats: dict):
    """Per-task inputs, shared weights: the task axis merged into the convolution's batch."""
    dims = eqn.params["dimension_numbers"]
    b_in, b_out = dims.lhs_spec[0], dims.out_spec[0]
    x = jnp.moveaxis(lhs, 0, b_in)
    x = x.reshape(*x.shape[:b_in], -1, *x.shape[b_in + 2:])
    y = _canonical_conv(eqn, x, rhs, stats)
    y = y.reshape(*y.shape[:b_out], n, -1, *y.shape[b_out + 1:])
    return jnp.moveaxis(y, b_out, 0)


def _scan(eqn, vals, bs, n, stats):
    """A scan whose body holds a convolution: carries are batched, the body evaluated by us."""
    params = eqn.params
    num_consts, num_carry = params["num_consts"], params["num_carry"]
    consts, carry, xs = (vals[:num_consts], vals[num_consts:num_consts + num_carry],
                         vals[num_consts + num_carry:])
    c_bs, x_bs = bs[:num_consts], bs[num_consts + num_carry:]
    carry = list(_broadcast_all(carry, bs[num_consts:num_consts + num_carry], n))
    # Scanned-over inputs: the task axis goes second so that lax.scan slices axis 0.
    xs = [jnp.moveaxis(x, 0, 1) if b else x for x, b in zip(xs, x_bs, strict=True)]
    body = params["jaxpr"]
    body_bs = (*c_bs, *([True] * num_carry), *x_bs)

    def step(carry, x):
        outs, out_bs = _eval_jaxpr(body.jaxpr, body.consts, (*consts, *carry, *x), body_bs, n,
                                   stats)
        outs = _broadcast_all(outs, out_bs, n)
        return list(outs[:num_carry]), list(outs[num_carry:])

    if params["length"] <= MAX_UNROLLED_SCAN:
        # XLA:CPU runs convolutions inside a loop body several times slower: unroll short scans.
        carry, ys = lax.scan(step, carry, xs, length=params["length"],
                             reverse=params["reverse"], unroll=True)
    else:
        carry, ys = lax.scan(step, carry, xs, length=params["length"],
                             reverse=params["reverse"], unroll=params["unroll"])
    ys = [jnp.moveaxis(y, 1, 0) for y in ys]
    return [*carry, *ys], [True] * len(eqn.outvars)
