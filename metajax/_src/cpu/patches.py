"""Small convolutions as one matrix product over image patches.

A 3x3 convolution on a small feature map (the last block of Conv4 on Omniglot sees 3x3 maps)
does little arithmetic per call, and XLA:CPU's convolution kernels run it far below their
speed on large maps; with per-task weights it is also one convolution per task. Written as
``patches(x) @ w`` (the patches are the kernel's shifted slices of the padded input, laid
side by side along the channel axis), the convolution is one matrix product per task. Its
derivatives are matrix products and sums of shifted slices, which ``jax.vmap`` batches over
tasks as batched products: no convolution is left in the forward or backward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from metajax._src.cpu.winograd import from_nhwc, plain_2d_conv, to_nhwc

MAX_OUTPUT = 3  # output height and width up to this; larger maps go to Winograd or XLA
MAX_KERNEL = 3  # kernel height and width up to this


def patches_apply(params: dict, lhs, rhs) -> bool:
    """Whether the ``conv_general_dilated`` with ``params`` and operands ``lhs``, ``rhs``
    (anything with ``shape`` and ``dtype``) is computed by :func:`conv_patches`.

    Only 2-D, stride-1, undilated, ungrouped float convolutions with a kernel of at most
    :data:`MAX_KERNEL` and an output of at most :data:`MAX_OUTPUT` in each dimension qualify
    (the patch matrix is ``kernel area`` times the input: small only for small kernels).
    """
    floating = jnp.issubdtype(lhs.dtype, jnp.floating)
    if not floating or not plain_2d_conv(params, lhs, rhs, lhs.dtype):
        return False
    dims = params["dimension_numbers"]
    kernel = [rhs.shape[d] for d in dims.rhs_spec[2:]]
    image = [lhs.shape[d] for d in dims.lhs_spec[2:]]
    out = [i + lo + hi - k + 1
           for i, k, (lo, hi) in zip(image, kernel, params["padding"], strict=True)]
    return max(kernel) <= MAX_KERNEL and 1 <= min(out) and max(out) <= MAX_OUTPUT


def conv_patches(lhs, rhs, *, padding, dimension_numbers, precision=None):
    """``lax.conv_general_dilated(lhs, rhs, (1, 1), padding, dimension_numbers=...)`` as one
    matrix product of the input's patches with the kernel.

    Args:
        lhs: the input, laid out as ``dimension_numbers.lhs_spec`` says.
        rhs: the kernel, laid out as ``dimension_numbers.rhs_spec`` says.
        padding: ``((lo, hi), (lo, hi))`` per spatial dimension (negative crops).
        dimension_numbers: a ``lax.ConvDimensionNumbers``.
        precision: the convolution's ``precision``, given to the product.

    Returns:
        The convolution, laid out as ``dimension_numbers.out_spec`` says; equal to the direct
        convolution up to float rounding.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> x, w = jnp.ones((2, 3, 3, 4)), jnp.ones((3, 3, 4, 5))
        >>> dims = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
        >>> conv_patches(x, w, padding=((1, 1), (1, 1)), dimension_numbers=dims)[0, :, :, 0]
        Array([[16., 24., 16.],
               [24., 36., 24.],
               [16., 24., 16.]], dtype=float32)
    """
    x, w = to_nhwc(lhs, rhs, dimension_numbers)
    kh, kw, channels, features = w.shape
    y = jnp.dot(nhwc_patches(x, (kh, kw), padding), w.reshape(kh * kw * channels, features),
                precision=precision, preferred_element_type=x.dtype)
    return from_nhwc(y, dimension_numbers)


def nhwc_patches(x, kernel_size: tuple[int, int], padding) -> jax.Array:
    """``[N, H, W, C] -> [N, H', W', kh * kw * C]``: the kernel's shifted slices of the padded
    input side by side, ordered ``(i, j, c)`` as ``kernel.reshape(-1, F)`` of an ``HWIO``
    kernel, so their product with it is the stride-1 convolution.

    Args:
        x: ``NHWC`` input.
        kernel_size: ``(kh, kw)``.
        padding: ``((lo, hi), (lo, hi))`` per spatial dimension (negative crops).
    """
    kh, kw = kernel_size
    config = [(0, 0, 0), *[(lo, hi, 0) for lo, hi in padding], (0, 0, 0)]
    xp = lax.pad(x, jnp.zeros((), x.dtype), config)
    out = (xp.shape[1] - kh + 1, xp.shape[2] - kw + 1)
    slices = [xp[:, i:i + out[0], j:j + out[1], :] for i in range(kh) for j in range(kw)]
    return jnp.concatenate(slices, axis=-1)

