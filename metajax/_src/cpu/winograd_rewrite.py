"""``with_winograd_convs``: a function's 3x3 convolutions replaced by Winograd's, *before* it is
differentiated.

:mod:`metajax._src.cpu.task_batching` lowers the convolutions of an already differentiated
program, so the forward convolution, its input gradient and its weight gradient are three
separate convolutions, and only the first two are 3x3 ones that F(2x2, 3x3) can compute. The
weight gradient (a convolution whose window is the whole feature map) stays direct, and the
forward pass's transformed input tiles are computed again by the input gradient.

Rewritten before ``jax.grad``, a 3x3 convolution is a Winograd forward pass (input transform,
16 matrix products, output transform), and automatic differentiation gives its backward
pass in the Winograd domain: the output cotangent is transformed once, the weight
gradient is 16 matrix products with the forward pass's transformed inputs (kept as
residuals), and the input gradient is 16 products followed by the transposed input
transform. Every convolution of the backward pass of such a layer becomes a matrix product,
which ``jax.vmap`` batches over tasks as an ordinary batched product (no grouped convolution
appears).

Convolutions with a small output (at most 3x3, e.g. Conv4's last block on Omniglot, whose
maps are 3x3) and a kernel of at most 3x3 become one product of the input's patches with the
kernel (:func:`~metajax._src.cpu.patches.conv_patches`): XLA:CPU's convolution kernels run such
convolutions far below speed, and with per-task weights they would be one convolution per task;
as products (forward, input and weight gradients alike) they are batched products over tasks.

The rewrite is exact in real arithmetic; in float32 values differ from the direct
convolution's by rounding (about 1e-6 relative, as for :func:`conv_winograd` alone).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
from jax.extend import core as jcore

from metajax._src.cpu.patches import conv_patches, patches_apply
from metajax._src.cpu.task_batching import CALLS, REMATS, bind_eqn, has_conv, sub_jaxpr
from metajax._src.cpu.winograd import conv_winograd, winograd_applies


def with_winograd_convs(fun: Callable, stats: dict | None = None) -> Callable:
    """``fun`` with every 3x3 convolution that :func:`winograd_applies` to computed by
    :func:`conv_winograd`, and every small-output one that
    :func:`~metajax._src.cpu.patches.patches_apply` to by a patch product, as a differentiable JAX
    function.

    ``fun`` is traced at its arguments' shapes and its program evaluated with the
    convolutions replaced; nested calls (``jax.jit``, Flax's wrappers) are inlined, and
    ``jax.checkpoint`` regions are rewritten inside and checkpointed again. Convolutions inside
    other control flow (``scan``, ``while``, ``cond``, custom derivative rules) are left as
    they are. Differentiate the result (``jax.grad(with_winograd_convs(f))``) to get Winograd
    backward passes; :func:`metajax.cpu.task_vmap` then batches them over tasks as batched matrix
    products. Reverse-mode differentiation works to any order; forward mode (``jax.jvp``,
    ``jax.linearize``) of the rewritten function does not (the Winograd backward pass is a
    ``jax.custom_vjp``): apply forward mode inside ``fun`` instead, before the rewrite.
    The CPU engine's meta-gradient (:func:`metajax.cpu.conv_batching`, the CPU default) uses
    it.

    Args:
        fun: any jittable function of arrays (pytrees allowed).
        stats: if given, ``stats["winograd_convs"]`` and ``stats["patch_convs"]`` are
            increased by the number of convolutions replaced each way, each time the function
            is traced.

    Returns:
        A function with ``fun``'s signature and outputs.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> conv = lambda x, w: jax.lax.conv_general_dilated(
        ...     x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        >>> x, w = jnp.ones((2, 6, 6, 8)), jnp.ones((3, 3, 8, 8)) / 72
        >>> bool(jnp.allclose(with_winograd_convs(conv)(x, w), conv(x, w)))
        True
    """
    @functools.wraps(fun)
    def rewritten(*args):
        closed, out_shape = jax.make_jaxpr(fun, return_shape=True)(*args)
        outs = _eval(closed.jaxpr, closed.consts, jax.tree.leaves(args),
                     stats if stats is not None else {})
        return jax.tree.unflatten(jax.tree.structure(out_shape), outs)

    return rewritten


def _eval(jaxpr, consts, args, stats: dict) -> list:
    env: dict = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        outs = _eval_eqn(eqn, [read(v) for v in eqn.invars], stats)
        for v, o in zip(eqn.outvars, outs, strict=True):
            if not isinstance(v, jcore.DropVar):
                env[v] = o
    return [read(v) for v in jaxpr.outvars]


def _eval_eqn(eqn, vals: list, stats: dict) -> list:
    name, params = eqn.primitive.name, eqn.params
    if name == "conv_general_dilated" and winograd_applies(params, *vals):
        stats["winograd_convs"] = stats.get("winograd_convs", 0) + 1
        return [conv_winograd(*vals, padding=params["padding"],
                              dimension_numbers=params["dimension_numbers"],
                              winograd_backward=True)]
    if name == "conv_general_dilated" and patches_apply(params, *vals):
        stats["patch_convs"] = stats.get("patch_convs", 0) + 1
        return [conv_patches(*vals, padding=params["padding"],
                             dimension_numbers=params["dimension_numbers"],
                             precision=params.get("precision"))]
    sub = sub_jaxpr(eqn) if name in CALLS or name in REMATS else None
    if sub is None or not has_conv(sub.jaxpr):
        return bind_eqn(eqn, vals)
    if name in CALLS:
        return _eval(sub.jaxpr, sub.consts, vals, stats)
    body = jax.checkpoint(lambda *xs: tuple(_eval(sub.jaxpr, sub.consts, xs, stats)),
                          prevent_cse=params.get("prevent_cse", True),
                          policy=params.get("policy"))
    return list(body(*vals))
