"""3x3 convolutions by Winograd's minimal filtering algorithm F(2x2, 3x3) (Lavin & Gray, 2016).

A stride-1 3x3 convolution computes each 2x2 block of outputs from a 4x4 block of its (padded)
input: 36 multiply-adds per pair of input and output channels. F(2x2, 3x3) does it with 16:
the input tile and the kernel are transformed (``V = B^T d B``, ``U = G g G^T``), multiplied
element by element, and transformed back (``Y = A^T (U * V) A``). Summed over input channels,
the 16 element-wise products become 16 matrix products ``[tiles, C] @ [C, O]``, so the
convolution costs 2.25x fewer multiplications plus the transforms, which are additions and
halvings (the interpolation points are 0, 1, -1 and infinity). The result differs from the
direct convolution by float rounding only (relative error about 1e-6 in float32).

XLA:CPU would fuse the output transform, a sum over 16 products for each output, into every
consumer and recompute it for each element the consumer reads (four times under a max-pool
gradient's un-pooling); :func:`~metajax._src.cpu.materialize.materialized` makes XLA write it
once.

Measured on one CPU core (XLA:CPU, Conv4's layers at Omniglot sizes, with a consumer):
75 images of 14x14x64, 12.5 ms direct vs 9.2 ms; 20 images 3.2 vs 1.8 ms; 75 images of
7x7x64, 3.0 vs 2.2 ms. See ``benchmarks/results/conv_task_batching.md``.

Its backward pass (``conv_winograd(..., winograd_backward=True)``, a custom VJP used when the
convolution is rewritten before differentiation, :mod:`metajax._src.cpu.winograd_rewrite`) stays in
the Winograd domain: ``dM = A dY A^T`` once per output tile, then ``dU = V^T dM`` (the weight
gradient, 16 products with the forward pass's ``V``; ``dw = G^T dU G``) and ``dV = dM U^T``
followed by the transposed input transform, whose overlapping tiles add up (the input
gradient). No convolution is left in the backward pass. ``dU`` contracts over the tiles, the
major axis of ``V`` and ``dM``: XLA:CPU runs it at about 60% of a matrix product's speed, on
one thread (a transposed copy of ``V`` to make it an ordinary product measured no faster).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from metajax._src.cpu.materialize import materialized

# F(2, 3) in one dimension: y = AT [(G g) * (BT d)], d 4 inputs, g 3 taps, y 2 outputs.
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)

MIN_CHANNELS = 8  # input and output channels; fewer: the transforms cost more than they save
MIN_OUTPUT = 4  # output height and width; smaller: most of each 2x2 output tile is padding


def plain_2d_conv(params: dict, lhs, rhs, dtype=np.float32) -> bool:
    """Whether the ``conv_general_dilated`` with ``params`` is 2-D, stride-1, undilated and
    ungrouped, with both operands (and any preferred result type) of ``dtype``: the
    convolutions that Winograd's algorithm and patch products compute."""
    dims = params["dimension_numbers"]
    if len(dims.lhs_spec) != 4 or lhs.dtype != dtype or rhs.dtype != dtype:
        return False
    if params.get("preferred_element_type") not in (None, dtype):
        return False
    unit = all(v == 1 for v in (*params["window_strides"], *params["lhs_dilation"],
                                *params["rhs_dilation"]))
    return unit and params["feature_group_count"] == 1 and params["batch_group_count"] == 1


def to_nhwc(lhs, rhs, dims: lax.ConvDimensionNumbers):
    """A convolution's operands laid out as ``dims`` says, transposed to NHWC and HWIO."""
    x = jnp.transpose(lhs, (dims.lhs_spec[0], *dims.lhs_spec[2:], dims.lhs_spec[1]))
    w = jnp.transpose(rhs, (*dims.rhs_spec[2:], dims.rhs_spec[1], dims.rhs_spec[0]))
    return x, w


def from_nhwc(y, dims: lax.ConvDimensionNumbers):
    """A convolution's NHWC (N, spatial..., C) result transposed to ``dims.out_spec``."""
    order = (dims.out_spec[0], *dims.out_spec[2:], dims.out_spec[1])  # y's axis i: order[i]
    return jnp.transpose(y, [order.index(axis) for axis in range(y.ndim)])


def winograd_applies(params: dict, lhs, rhs) -> bool:
    """Whether the ``conv_general_dilated`` with ``params`` and operands ``lhs``, ``rhs``
    (anything with ``shape`` and ``dtype``) is computed by :func:`conv_winograd`.

    Only 2-D, stride-1, undilated, ungrouped float32 convolutions with a 3x3 kernel, at least
    :data:`MIN_CHANNELS` input and output channels and an output of at least
    :data:`MIN_OUTPUT` x :data:`MIN_OUTPUT` qualify.
    """
    if not plain_2d_conv(params, lhs, rhs):
        return False
    dims = params["dimension_numbers"]
    kernel = [rhs.shape[d] for d in dims.rhs_spec[2:]]
    image = [lhs.shape[d] for d in dims.lhs_spec[2:]]
    out = [i + lo + hi - 2 for i, (lo, hi) in zip(image, params["padding"], strict=True)]
    channels = (lhs.shape[dims.lhs_spec[1]], rhs.shape[dims.rhs_spec[0]])
    return (kernel == [3, 3] and min(out) >= MIN_OUTPUT and min(channels) >= MIN_CHANNELS)


def conv_winograd(lhs, rhs, *, padding, dimension_numbers, winograd_backward=False):
    """``lax.conv_general_dilated(lhs, rhs, (1, 1), padding, dimension_numbers=...)`` for a
    3x3 kernel, by F(2x2, 3x3); same dimension numbers, same result to float rounding.

    Args:
        lhs: the input, laid out as ``dimension_numbers.lhs_spec`` says.
        rhs: the 3x3 kernel, laid out as ``dimension_numbers.rhs_spec`` says.
        padding: ``((lo, hi), (lo, hi))`` for the two spatial dimensions (negative allowed).
        dimension_numbers: a ``lax.ConvDimensionNumbers``.
        winograd_backward: differentiate by the Winograd-domain backward pass (a
            ``jax.custom_vjp``): the output cotangent is transformed once, the weight gradient
            is 16 matrix products with the forward pass's transformed inputs, and the input
            gradient 16 products and the transposed input transform. Reverse mode only, to
            any order; forward-mode differentiation (``jax.jvp``) is not supported. With
            ``False`` (default) JAX differentiates the forward computation itself.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jax import lax
        >>> x, w = jnp.ones((2, 6, 6, 8)), jnp.ones((3, 3, 8, 8))
        >>> dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
        >>> y = conv_winograd(x, w, padding=((1, 1), (1, 1)), dimension_numbers=dn)
        >>> bool(jnp.allclose(y, lax.conv_general_dilated(x, w, (1, 1), "SAME",
        ...                                                 dimension_numbers=dn)))
        True
    """
    x, w = to_nhwc(lhs, rhs, dimension_numbers)
    conv = _conv_nhwc_vjp if winograd_backward else _conv_nhwc
    return from_nhwc(conv(x, w, tuple(map(tuple, padding))), dimension_numbers)


def _geometry(x_shape, padding):
    """Output size, tiles per dimension, and the pad config that makes the tiles at stride 2
    cover the output exactly (``2 t + 2`` inputs per dimension)."""
    out = [x_shape[1 + d] + lo + hi - 2 for d, (lo, hi) in enumerate(padding)]
    tiles = [-(-size // 2) for size in out]
    config = [(0, 0, 0), *[(lo, 2 * t + 2 - (size + lo), 0)
                           for (lo, _), t, size in zip(padding, tiles, x_shape[1:3],
                                                       strict=True)], (0, 0, 0)]
    return out, tiles, config


def _input_transform(xp, tiles):
    """``V = B^T d B`` of every 4x4 tile of ``xp`` [B, H, W, C]: [16, tiles, C]."""
    return _stack_rows(_transformed(_tile_slices(xp, tiles), BT))


def _weight_transform(w):
    """``U = G g G^T`` per channel pair: w [3, 3, C, O] -> [16, C, O]."""
    u = np.einsum("xk,yl->xykl", G, G).astype(w.dtype)
    return jnp.einsum("xykl,klco->xyco", u, w).reshape(16, *w.shape[2:])


def _output_transform(m, batch, tiles, out):
    """``Y = A^T M A`` per tile: m [16, tiles, O] -> [B, out[0], out[1], O]."""
    features = m.shape[-1]
    m = m.reshape(4, 4, batch, *tiles, features)
    y = [[_combine(AT[b], [_combine(AT[a], [m[xi, nu] for xi in range(4)])
                           for nu in range(4)]) for b in range(2)] for a in range(2)]
    y = jnp.stack([jnp.stack(row, axis=3) for row in y], axis=2)  # [B, th, 2, tw, 2, O]
    return y.reshape(batch, 2 * tiles[0], 2 * tiles[1], features)[:, :out[0], :out[1]]


def _products_and_output_transform(v, u, batch, tiles, out):
    m = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))))  # 16 x [tiles, C] @ [C, O]
    return _output_transform(m, batch, tiles, out)


def _conv_nhwc(x, w, padding):
    """F(2x2, 3x3). x [B, H, W, C], w [3, 3, C, O] -> [B, H', W', O]."""
    return _winograd_forward(x, w, padding, keep_inputs=False)[0]


def _winograd_forward(x, w, padding, *, keep_inputs: bool):
    """The output, and the residuals ``(V, U, x, w)`` of the Winograd backward pass; with
    ``keep_inputs`` the transformed inputs ``V`` are materialized (they are read again there)."""
    out, tiles, config = _geometry(x.shape, padding)
    xp = lax.pad(x, jnp.zeros((), x.dtype), config)
    transform = functools.partial(_input_transform, tiles=tiles)
    v = materialized(transform, xp) if keep_inputs else transform(xp)
    u = _weight_transform(w)
    fun = functools.partial(_products_and_output_transform, batch=x.shape[0], tiles=tiles,
                            out=out)
    return materialized(fun, v, u), (v, u, x, w)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_nhwc_vjp(x, w, padding):
    return _conv_nhwc(x, w, padding)


def _conv_nhwc_fwd(x, w, padding):
    return _winograd_forward(x, w, padding, keep_inputs=True)


def _conv_nhwc_bwd(padding, residuals, dy):
    v, u, x, w = residuals
    _, tiles, config = _geometry(x.shape, padding)
    batch = x.shape[0]
    dm = materialized(functools.partial(_output_transform_transpose, tiles=tiles), dy)
    du = lax.dot_general(v, dm, (((1,), (1,)), ((0,), (0,))))  # 16 x [C, tiles] @ [tiles, O]
    dw = jnp.einsum("xk,yl,xyco->klco", G.astype(w.dtype), G.astype(w.dtype),
                    du.reshape(4, 4, *du.shape[1:]))
    dxp = materialized(
        lambda dm, u: _input_transform_transpose(
            lax.dot_general(dm, u, (((2,), (2,)), ((0,), (0,)))), batch, tiles), dm, u)
    dx = _pad_transpose(dxp, config, x.shape)
    return dx, dw


_conv_nhwc_vjp.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


def _output_transform_transpose(dy, tiles):
    """The transpose of :func:`_output_transform`: dy [B, H', W', O] -> dM [16, tiles, O]."""
    batch, features = dy.shape[0], dy.shape[3]
    full = lax.pad(dy, jnp.zeros((), dy.dtype),
                   [(0, 0, 0), (0, 2 * tiles[0] - dy.shape[1], 0),
                    (0, 2 * tiles[1] - dy.shape[2], 0), (0, 0, 0)])
    phases = full.reshape(batch, tiles[0], 2, tiles[1], 2, features)
    p = [[phases[:, :, a, :, b, :] for b in range(2)] for a in range(2)]
    rows = [[_combine(AT[:, xi], [p[a][b] for a in range(2)]) for b in range(2)]
            for xi in range(4)]
    dm = [_combine(AT[:, nu], rows[xi]) for xi in range(4) for nu in range(4)]
    return _stack_rows(dm)


def _input_transform_transpose(dv, batch, tiles):
    """The transpose of :func:`_input_transform` (tile slices overlap: their cotangents add).
    dv [16, tiles, C] -> dxp [B, 2 t0 + 2, 2 t1 + 2, C]."""
    channels = dv.shape[-1]
    dv = dv.reshape(4, 4, batch, *tiles, channels)
    rows = [[_combine(BT[:, j], [dv[xi, nu] for nu in range(4)]) for j in range(4)]
            for xi in range(4)]
    dd = [[_combine(BT[:, i], [rows[xi][j] for xi in range(4)]) for j in range(4)]
          for i in range(4)]
    zero = jnp.zeros((), dv.dtype)
    phase = [[None, None], [None, None]]
    for pi in range(2):
        for pj in range(2):
            parts = [lax.pad(dd[2 * si + pi][2 * sj + pj], zero,
                             [(0, 0, 0), (si, 1 - si, 0), (sj, 1 - sj, 0), (0, 0, 0)])
                     for si in range(2) for sj in range(2)]
            phase[pi][pj] = functools.reduce(jnp.add, parts[1:], parts[0])
    dxp = jnp.stack([jnp.stack(row, axis=3) for row in phase], axis=2)
    return dxp.reshape(batch, 2 * tiles[0] + 2, 2 * tiles[1] + 2, channels)


def _pad_transpose(dxp, config, shape):
    """The cotangent of ``x`` for ``xp = lax.pad(x, 0, config)``: crop what padding added,
    pad with zeros what negative padding cropped."""
    return jax.linear_transpose(
        lambda x: lax.pad(x, jnp.zeros((), x.dtype), config),
        jax.ShapeDtypeStruct(shape, dxp.dtype))(dxp)[0]


def _stack_rows(parts):
    """``jnp.stack(parts)`` with each part's leading axes flattened: [len(parts), -1, C].

    Written as a concatenation of reshaped parts rather than ``jnp.stack``: under
    ``jax.vmap`` a stack puts the new axis before the batch axis and the reshape then needs a
    transposed copy of the whole result; a concatenation keeps the batch axis first.
    """
    return jnp.concatenate([p.reshape(1, -1, p.shape[-1]) for p in parts])


def _combine(coefficients, parts):
    """``sum_i coefficients[i] * parts[i]``, skipping zeros; multiplies only by +-1/2."""
    total = None
    for c, part in zip(coefficients, parts, strict=True):
        if c == 0:
            continue
        term = part if c == 1 else -part if c == -1 else part * np.float32(c)
        total = term if total is None else total + term
    return total


def _tile_slices(xp, tiles):
    """The 4x4 tiles at stride 2 of ``xp`` [B, H, W, C] as 16 strided slices ``d[i][j]``,
    each [B, tiles[0], tiles[1], C]."""
    def part(i, j):
        start = (0, i, j, 0)
        limit = (xp.shape[0], i + 2 * tiles[0] - 1, j + 2 * tiles[1] - 1, xp.shape[3])
        return lax.slice(xp, start, limit, (1, 2, 2, 1))

    return [[part(i, j) for j in range(4)] for i in range(4)]


def _transformed(d, T):
    """``T d T^T`` of 4x4 tiles given as slices: 16 arrays, index ``4 * xi + nu``."""
    rows = [[_combine(T[xi], [d[i][j] for i in range(4)]) for j in range(4)] for xi in range(4)]
    return [_combine(T[nu], rows[xi]) for xi in range(4) for nu in range(4)]
