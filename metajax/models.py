"""Flax models for meta-learning (Linen); any ``apply(params, x)`` works with metajax too."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from metajax._src.amortized.models import (
    attentive_np,
    cnp,
    init_process,
    latent_np,
    process_apply,
)
from metajax._src.amortized.modules import (
    DeterministicPath,
    GaussianDecoder,
    LatentPath,
    NeuralProcess,
    NPOutput,
    SelfAttention,
)


class MLP(nn.Module):
    """A multi-layer perceptron: Dense layers with an activation between them.

    Attributes:
        features: output width of every layer; the last entry is the output size.
        activation: nonlinearity applied after every layer but the last.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> model = MLP(features=(40, 40, 1))
        >>> params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1)))["params"]
        >>> model.apply({"params": params}, jnp.zeros((5, 1))).shape
        (5, 1)
    """

    features: Sequence[int] = (40, 40, 1)
    activation: Callable[[jax.Array], jax.Array] = nn.relu

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, width in enumerate(self.features):
            x = nn.Dense(width, name=f"dense_{i}")(x)
            if i < len(self.features) - 1:
                x = self.activation(x)
        return x


def nnx_apply(graphdef, *state) -> Callable:
    """Turns a split Flax NNX module into a pure ``apply(params, x)`` for metajax.

    Each call rebuilds the module from ``graphdef``, the (differentiated) ``params`` and the
    fixed ``state`` with ``nnx.merge(..., copy=True)``, so layers that write to their
    variables (``nnx.BatchNorm(use_running_average=False)`` used transductively) mutate a fresh
    copy inside the trace rather than the caller's module; the writes are discarded.

    Args:
        graphdef: from ``graphdef, params, *state = nnx.split(module, nnx.Param, ...)``.
        *state: the non-parameter states of the split (batch statistics, RNG counts).

    Examples:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> graphdef, params, rest = nnx.split(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Param, ...)
        >>> nnx_apply(graphdef, rest)(params, jnp.ones((4, 2))).shape
        (4, 3)
    """
    from flax import nnx

    def apply(params, x):
        return nnx.merge(graphdef, params, *state, copy=True)(x)

    return apply


class ContextMLP(nn.Module):
    """An :class:`MLP` that also takes a context vector, concatenated to every input (CAVIA).

    ``apply(params, x, context)`` with ``x`` of shape ``[..., d]`` and ``context`` of shape
    ``[num_context]``: the network sees ``[x, context]`` (the context broadcast over the batch).
    The layers are named as in :class:`MLP`.

    Attributes:
        features: output width of every layer; the last entry is the output size.
        activation: nonlinearity applied after every layer but the last.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> model = ContextMLP(features=(40, 40, 1))
        >>> params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1)), jnp.zeros(5))["params"]
        >>> model.apply({"params": params}, jnp.zeros((7, 1)), jnp.ones(5)).shape
        (7, 1)
    """

    features: Sequence[int] = (40, 40, 1)
    activation: Callable[[jax.Array], jax.Array] = nn.relu

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        context = jax.numpy.broadcast_to(context, (*x.shape[:-1], context.shape[-1]))
        x = jax.numpy.concatenate([x, context.astype(x.dtype)], axis=-1)
        for i, width in enumerate(self.features):
            x = nn.Dense(width, name=f"dense_{i}")(x)
            if i < len(self.features) - 1:
                x = self.activation(x)
        return x


class Conv4(nn.Module):
    """The 4-block convolutional network of MAML / Prototypical Networks few-shot learning.

    Each block is a 3x3 convolution with ``features`` filters, batch norm used transductively
    (``use_running_average=False``: the statistics of the batch itself, as in MAML), ReLU and
    2x2 max-pooling. ``strided=True`` is the MAML Omniglot variant: stride-2 convolutions
    instead of max-pooling and a spatial mean at the end. Inputs are ``[N, H, W, C]``.

    Embedding sizes: ``features * (H // 16) * (W // 16)`` with max-pooling (64 for 28x28
    Omniglot with 64 filters, 800 for 84x84 mini-ImageNet with 32 filters), ``features``
    with ``strided=True``.

    Attributes:
        n_way: number of output logits (classes per episode).
        features: filters per block (64 for Omniglot, 32 for mini-ImageNet in MAML).
        strided: stride-2 convolutions instead of max-pooling (MAML's Omniglot network).
        head: end with a Dense layer to ``n_way`` logits; ``False`` returns the embedding
            (for metric-based methods such as Prototypical Networks).
        fuse_thin_blocks: compute max-pooled blocks whose input has at most
            ``FUSED_MAX_CHANNELS`` (3) channels (the first block on Omniglot and
            mini-ImageNet) with the CPU engine's fused block
            (:func:`metajax.cpu.conv_bn_relu_pool`), which never forms the convolution's
            full-resolution output. Same variables and values as the separate layers (to float
            rounding); faster on CPU (``docs/design/cpu-engine.md``). ``None`` (the default):
            fused when the default backend is the CPU.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> model = Conv4(n_way=5, features=4)
        >>> variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 28, 28, 1)))
        >>> apply = linen_apply(model, variables)
        >>> apply(variables["params"], jnp.ones((10, 28, 28, 1))).shape
        (10, 5)
    """

    n_way: int = 5
    features: int = 64
    strided: bool = False
    head: bool = True
    fuse_thin_blocks: bool | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fuse = (jax.default_backend() == "cpu" if self.fuse_thin_blocks is None
                else self.fuse_thin_blocks)
        for i in range(4):
            if fuse and not self.strided and x.shape[-1] <= FUSED_MAX_CHANNELS and x.ndim == 4:
                from metajax._src.cpu.conv_block import conv_bn_relu_pool  # the CPU engine

                kernel, bias = _ConvParams(self.features, (3, 3), name=f"conv_{i}")(x.shape[-1])
                x = _BatchNormFused(self.features, name=f"norm_{i}")(
                    functools.partial(conv_bn_relu_pool, x, kernel, bias))
                continue
            x = nn.Conv(self.features, (3, 3), strides=2 if self.strided else 1,
                        padding="SAME", name=f"conv_{i}")(x)
            x = nn.relu(nn.BatchNorm(use_running_average=False, name=f"norm_{i}")(x))
            if not self.strided:
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        x = x.mean(axis=(-3, -2)) if self.strided else x.reshape(*x.shape[:-3], -1)
        return nn.Dense(self.n_way, name="head")(x) if self.head else x


FUSED_MAX_CHANNELS = 3  # Conv4 fuses the blocks of inputs with at most this many channels


class _ConvParams(nn.Module):
    """The ``kernel`` and ``bias`` of an ``nn.Conv`` (same names, shapes and initialisers)."""

    features: int
    kernel_size: tuple[int, int]

    @nn.compact
    def __call__(self, in_features: int):
        kernel = self.param("kernel", nn.linear.default_kernel_init,
                            (*self.kernel_size, in_features, self.features))
        return kernel, self.param("bias", nn.initializers.zeros_init(), (self.features,))


class _BatchNormFused(nn.Module):
    """The variables of an ``nn.BatchNorm`` (same names, shapes, initialisers and running-
    statistics update as ``nn.BatchNorm(use_running_average=False)``) around a fused block.

    Called with ``block(scale, bias) -> (y, batch_mean, batch_var)``; returns ``y``.
    """

    features: int
    momentum: float = 0.99

    @nn.compact
    def __call__(self, block: Callable) -> jax.Array:
        shape = (self.features,)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, shape, jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, shape, jnp.float32)
        scale = self.param("scale", nn.initializers.ones_init(), shape)
        bias = self.param("bias", nn.initializers.zeros_init(), shape)
        y, mean, var = block(scale, bias)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y


class _ResidualBlock(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = nn.Conv(self.features, (1, 1), use_bias=False, name="shortcut_conv")(x)
        shortcut = nn.BatchNorm(use_running_average=False, name="shortcut_norm")(shortcut)
        for i in range(3):
            x = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False,
                        name=f"conv_{i}")(x)
            x = nn.BatchNorm(use_running_average=False, name=f"norm_{i}")(x)
            if i < 2:
                x = nn.leaky_relu(x, 0.1)
        x = nn.leaky_relu(x + shortcut, 0.1)
        return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class ResNet12(nn.Module):
    """ResNet-12 (TADAM / MetaOptNet): 4 residual blocks of three 3x3 convolutions.

    Each block: three conv-BN layers with leaky ReLU (slope 0.1) between them, a 1x1
    conv-BN shortcut, leaky ReLU after the sum, and 2x2 max-pooling. Batch norm uses the
    batch's own statistics (transductive, ``use_running_average=False``). The embedding is
    the global average of the last block (``widths[-1]`` values); DropBlock is not included.
    Inputs are ``[N, H, W, C]`` with ``H, W >= 16``.

    Attributes:
        n_way: number of output logits.
        widths: filters of the four blocks.
        head: end with a Dense layer to ``n_way`` logits; ``False`` returns the embedding.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> model = ResNet12(widths=(4, 4, 8, 8), head=False)
        >>> variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 3)))
        >>> linen_apply(model, variables)(variables["params"], jnp.ones((3, 16, 16, 3))).shape
        (3, 8)
    """

    n_way: int = 5
    widths: Sequence[int] = (64, 160, 320, 640)
    head: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, width in enumerate(self.widths):
            x = _ResidualBlock(width, name=f"block_{i}")(x)
        x = x.mean(axis=(-3, -2))
        return nn.Dense(self.n_way, name="head")(x) if self.head else x


def linen_apply(model: nn.Module, variables) -> Callable:
    """Turns a Flax Linen model and its initial variables into a pure ``apply(params, x)``.

    The returned function applies ``model`` with the differentiated ``params`` and the
    other collections of ``variables`` (e.g. ``batch_stats``) held fixed. Collections are
    passed as mutable and their updates discarded, so batch norm with
    ``use_running_average=False`` normalises with the statistics of the batch itself
    (transductively, as in MAML) and no state leaks between calls. Use it with
    :func:`metajax.losses.cross_entropy`.

    Args:
        model: a Linen module called as ``model.apply(variables, x)``.
        variables: from ``model.init(key, x)``; only the non-``params`` collections are used.

    Examples:
        >>> import jax, jax.numpy as jnp, metajax
        >>> model = MLP(features=(4, 2))
        >>> variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)))
        >>> loss = metajax.losses.cross_entropy(linen_apply(model, variables))
        >>> value, aux = loss(variables["params"], (jnp.ones((6, 3)), jnp.zeros(6, jnp.int32)))
        >>> sorted(aux)
        ['accuracy']

        With ``loss_fn = losses.cross_entropy(linen_apply(Conv4(n_way=5), variables))``,
        ``metajax.maml(loss_fn, optax.adam(1e-3), inner_steps=1, inner_lr=0.4,
        has_aux=True)`` meta-trains a Conv4 on batches from :func:`metajax.data.episodes`.
    """
    state = {name: value for name, value in variables.items() if name != "params"}
    mutable = list(state) or False

    def apply(params, x):
        out = model.apply({"params": params, **state}, x, mutable=mutable)
        return out[0] if mutable else out

    return apply


__all__ = [
    "MLP",
    "ContextMLP",
    "Conv4",
    "ResNet12",
    "linen_apply",
    "nnx_apply",
    # neural processes
    "DeterministicPath",
    "GaussianDecoder",
    "LatentPath",
    "NPOutput",
    "NeuralProcess",
    "SelfAttention",
    "attentive_np",
    "cnp",
    "init_process",
    "latent_np",
    "process_apply",
]
