"""A convolution, transductive batch norm, ReLU and 2x2 max-pool in one: ``conv_bn_relu_pool``.

The first block of a few-shot conv net (Conv4 on Omniglot: a 3x3 convolution of a one-channel
28x28 image to 64 channels) has the largest maps of the network and almost no arithmetic: its
cost is memory traffic over the 28x28x64 maps, written and read by the convolution, the two
batch-norm reductions, the normalisation, ReLU, the pool and all their backward passes (a
fifth of a second-order MAML step on CPU). Here those maps are never formed:

* the batch statistics of the convolution's output follow from the first and second moments of
  the input's patches (``K = kh * kw * C`` values each): the mean is ``m @ W + b`` and the
  variance ``diag(W^T Cov W)``, so no output map is needed to compute them;
* batch norm's affine map is folded into the kernel (``W * scale / sigma``) and offset;
* ReLU commutes with the max-pool (both are monotone), so the block's output is the ReLU of the
  largest of the four folded products in each 2x2 window, computed from the patches of those
  four positions: four ``[N, H/2, W/2, K] @ [K, F]`` products, and the gradient is routed to
  the first maximum of each window as ``lax.reduce_window``'s is.

Everything is ordinary JAX, so derivatives of any order come from autodiff, and the backward
passes stay at the pooled resolution: the kernel's gradient is one product of the four patch
sets with the routed cotangent. Values and derivatives equal the sequence of Flax layers
(``nn.Conv``, ``nn.BatchNorm(use_running_average=False)``, ``nn.relu``, ``nn.max_pool``) to
float rounding (tested in float64 to second order).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from metajax._src.cpu.patches import nhwc_patches


def same_patches(x: jax.Array, kernel_size: tuple[int, int]) -> jax.Array:
    """``[N, H, W, C] -> [N, H, W, kh * kw * C]``: the ``"SAME"``-padded patches of ``x``.

    The last axis is ordered ``(ki, kj, c)``, as ``kernel.reshape(-1, features)`` of an
    ``HWIO`` kernel, so ``same_patches(x, (kh, kw)) @ kernel.reshape(-1, F)`` is the stride-1
    ``"SAME"`` convolution.
    """
    kh, kw = kernel_size
    top, left = (kh - 1) // 2, (kw - 1) // 2
    return nhwc_patches(x, kernel_size, ((top, kh - 1 - top), (left, kw - 1 - left)))


def first_max_position(values: Sequence[jax.Array]) -> jax.Array:
    """Element-wise, the position in ``values`` of the first maximum (ties go to the earliest,
    as XLA's select-and-scatter with ``ge`` chooses); int8, int32 beyond 127 values."""
    dtype = jnp.int8 if len(values) <= 127 else jnp.int32
    best, index = values[0], jnp.zeros(jnp.shape(values[0]), dtype)
    for q in range(1, len(values)):
        better = values[q] > best
        best = jnp.where(better, values[q], best)
        index = jnp.where(better, jnp.asarray(q, dtype), index)
    return index


def _check(x, kernel, bias, scale, offset):
    if x.ndim != 4:
        raise ValueError(f"`x` must be [N, H, W, C]; got shape {x.shape}.")
    if kernel.ndim != 4 or kernel.shape[2] != x.shape[-1]:
        raise ValueError(f"`kernel` must be [kh, kw, {x.shape[-1]}, F] (HWIO, the input's "
                         f"{x.shape[-1]} channels); got shape {kernel.shape}.")
    features = kernel.shape[-1]
    for name, value in (("bias", bias), ("scale", scale), ("offset", offset)):
        if value.shape != (features,):
            raise ValueError(f"`{name}` must have shape ({features},); got {value.shape}.")
    if x.shape[1] < 2 or x.shape[2] < 2:
        raise ValueError(f"`x` must be at least 2x2 to pool; got shape {x.shape}.")


def conv_bn_relu_pool(x: jax.Array, kernel: jax.Array, bias: jax.Array, scale: jax.Array,
                      offset: jax.Array, *, epsilon: float = 1e-5
                      ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``max_pool(relu(batch_norm(conv(x))))`` without forming the convolution's output map.

    The convolution is stride 1 with ``"SAME"`` padding; batch norm normalises with the
    statistics of ``x`` itself over ``N, H, W`` (``use_running_average=False``, Flax's
    ``epsilon``); the pool is 2x2 with stride 2, ``"VALID"``. Cheapest when
    ``K = kh * kw * C`` is small (one-channel images: ``K = 9``); the cost of the four
    products grows with ``K`` like a convolution's.

    Args:
        x: ``[N, H, W, C]`` inputs.
        kernel: ``[kh, kw, C, F]`` convolution kernel (``HWIO``, as ``nn.Conv``'s).
        bias: ``[F]`` convolution bias (cancelled by the normalisation, but differentiated).
        scale: ``[F]`` batch-norm scale.
        offset: ``[F]`` batch-norm bias.
        epsilon: added to the variance, as ``nn.BatchNorm``'s.

    Returns:
        ``(y, mean, var)``: the ``[N, H // 2, W // 2, F]`` output, and the batch mean and
        variance of the convolution's output (for running statistics).

    Examples:
        >>> import jax.numpy as jnp
        >>> y, mean, var = conv_bn_relu_pool(jnp.ones((2, 4, 4, 1)), jnp.ones((3, 3, 1, 8)),
        ...                                  jnp.zeros(8), jnp.ones(8), jnp.zeros(8))
        >>> y.shape, mean.shape
        ((2, 2, 2, 8), (8,))
    """
    _check(x, kernel, bias, scale, offset)
    kh, kw, _, features = kernel.shape
    n, h, w, _ = x.shape
    patches = same_patches(x, (kh, kw))
    k = patches.shape[-1]
    flat = patches.reshape(-1, k)
    m1 = flat.mean(axis=0)
    cov = flat.T @ flat / flat.shape[0] - jnp.outer(m1, m1)
    weights = kernel.reshape(k, features)
    centre = m1 @ weights
    mean = centre + bias
    var = jnp.maximum(0.0, jnp.sum(weights * (cov @ weights), axis=0))
    gain = scale * lax.rsqrt(var + epsilon)
    # The normalised output is patches @ (weights * gain) + (offset - centre * gain).
    hp, wp = h // 2, w // 2
    windows = patches[:, :2 * hp, :2 * wp].reshape(n, hp, 2, wp, 2, k)
    windows = windows.transpose(2, 4, 0, 1, 3, 5).reshape(4, n, hp, wp, k)
    z = windows @ (weights * gain) + (offset - centre * gain)
    index = first_max_position(list(lax.stop_gradient(z)))
    pooled = sum(jnp.where(index == q, z[q], 0.0) for q in range(4))
    return jax.nn.relu(pooled), mean, var
