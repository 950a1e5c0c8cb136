"""Neural-process networks (Flax Linen), each written for one task; ``vmap`` maps them over tasks.

A :class:`NeuralProcess` is composed of a :class:`GaussianDecoder` and one or both of a
:class:`DeterministicPath` (the CNP's mean-aggregated representation, or the ANP's
cross-attention from targets to contexts) and a :class:`LatentPath` (a global Gaussian latent
``z``). The conditional, latent and attentive neural processes of the literature are
assemblies of these (see :func:`metajax.models.cnp`, :func:`~metajax.models.latent_np`,
:func:`~metajax.models.attentive_np`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from metajax._src.amortized.gaussian import masked_mean
from metajax._src.core.types import Points


class NPOutput(NamedTuple):
    """What a :class:`NeuralProcess` predicts for one task's targets.

    Attributes:
        mean: ``[m, dy]`` predictive mean.
        std: ``[m, dy]`` predictive standard deviation.
        prior: ``(mean, std)`` of the latent given the context (``None`` without a latent).
        posterior: ``(mean, std)`` of the latent given the targets, when they were given.
    """

    mean: jax.Array
    std: jax.Array
    prior: tuple[jax.Array, jax.Array] | None = None
    posterior: tuple[jax.Array, jax.Array] | None = None


def _mlp(sizes: Sequence[int], x: jax.Array, name: str, *, start: int = 0) -> jax.Array:
    for i, width in enumerate(sizes):
        x = nn.Dense(width, name=f"{name}_{start + i}")(x)
        if i < len(sizes) - 1:
            x = nn.relu(x)
    return x


class SelfAttention(nn.Module):
    """Multi-head self-attention over a set's valid entries, with a residual and layer norm."""

    num_heads: int = 8

    @nn.compact
    def __call__(self, h: jax.Array, mask: jax.Array) -> jax.Array:
        keep = jnp.asarray(mask, bool)
        att = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, name="attention")(
            h, h, h, mask=keep[None, None, :])
        return nn.LayerNorm(name="norm")(h + att)


def _encode(sizes, self_attention, num_heads, points: Points) -> jax.Array:
    h = _mlp(sizes, jnp.concatenate([points.x, points.y], axis=-1), "dense")
    for i in range(self_attention):
        h = SelfAttention(num_heads, name=f"self_attention_{i}")(h, points.mask)
    return h


class DeterministicPath(nn.Module):
    """The deterministic representation of the context: ``[1, d]`` shared, or ``[m, d]``.

    ``cross_attention=False``: the CNP's path, an MLP on every ``(x, y)`` averaged over the
    context. ``cross_attention=True``: the ANP's, each target attends to the context with keys
    and queries an MLP of the inputs (shared) and values the encoded points.

    Attributes:
        sizes: widths of the encoder MLP (the last is the representation size).
        self_attention: number of self-attention layers after the MLP (0 for CNP).
        cross_attention: attend from targets to contexts instead of averaging.
        num_heads: attention heads.
    """

    sizes: Sequence[int] = (128, 128, 128, 128)
    self_attention: int = 0
    cross_attention: bool = False
    num_heads: int = 8

    @nn.compact
    def __call__(self, context: Points, x_target: jax.Array) -> jax.Array:
        h = _encode(self.sizes, self.self_attention, self.num_heads, context)
        if not self.cross_attention:  # one row shared by every target
            return masked_mean(h, context.mask)[None, :]
        width = self.sizes[-1]
        embed = nn.Sequential([nn.Dense(width), nn.relu, nn.Dense(width)], name="input_mlp")
        return nn.MultiHeadDotProductAttention(num_heads=self.num_heads, out_features=width,
                                               name="cross_attention")(
            embed(x_target), embed(context.x), h,
            mask=jnp.asarray(context.mask, bool)[None, None, :])


class LatentPath(nn.Module):
    """A global latent ``z ~ N(mean, std**2)`` summarising a set of points.

    The latent encoder of Garnelo et al. (2018b) and Kim et al. (2019): an MLP on every point,
    (optionally self-attention), the mean over the set, a hidden layer, then the latent's mean
    and ``std = 0.1 + 0.9 sigmoid(.)``.

    Attributes:
        sizes: widths of the encoder MLP.
        latent_dim: size of ``z``.
        self_attention: number of self-attention layers after the MLP.
        num_heads: attention heads.
    """

    sizes: Sequence[int] = (128, 128, 128, 128)
    latent_dim: int = 128
    self_attention: int = 0
    num_heads: int = 8

    @nn.compact
    def __call__(self, points: Points) -> tuple[jax.Array, jax.Array]:
        h = _encode(self.sizes, self.self_attention, self.num_heads, points)
        s = masked_mean(h, points.mask)
        hidden = nn.relu(nn.Dense((self.sizes[-1] + self.latent_dim) // 2, name="hidden")(s))
        mean = nn.Dense(self.latent_dim, name="mean")(hidden)
        std = 0.1 + 0.9 * nn.sigmoid(nn.Dense(self.latent_dim, name="log_std")(hidden))
        return mean, std


class _ConcatDense(nn.Module):
    """``Dense(concat([a, b]))`` computed as ``a @ W_a + b @ W_b``: ``a`` may be one row shared
    by every target (``[1, d]``), which then costs one product instead of one per target. Same
    parameters (``kernel``, ``bias``) and initialisation as ``nn.Dense``."""

    features: int

    @nn.compact
    def __call__(self, a: jax.Array, b: jax.Array) -> jax.Array:
        d = a.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (d + b.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return a @ kernel[:d] + b @ kernel[d:] + bias


class GaussianDecoder(nn.Module):
    """Maps ``(representation, x)`` of every target to a Gaussian over ``y``.

    ``std = min_std + (1 - min_std) softplus(.)`` keeps the likelihood bounded (0.1 in the
    papers).

    Attributes:
        sizes: widths of the hidden layers; the output layer (``2 * y_dim``) is added.
        y_dim: size of ``y``.
        min_std: the smallest standard deviation the decoder can predict.
    """

    sizes: Sequence[int] = (128, 128)
    y_dim: int = 1
    min_std: float = 0.1

    @nn.compact
    def __call__(self, representation: jax.Array, x_target: jax.Array):
        """``representation`` is ``[m, d]`` (one per target) or ``[1, d]`` (shared)."""
        sizes = (*self.sizes, 2 * self.y_dim)
        h = _ConcatDense(sizes[0], name="dense_0")(representation, x_target)
        if len(sizes) > 1:
            h = _mlp(sizes[1:], nn.relu(h), "dense", start=1)
        mean, raw = jnp.split(h, 2, axis=-1)
        return mean, self.min_std + (1 - self.min_std) * nn.softplus(raw)


class NeuralProcess(nn.Module):
    """A neural process for one task: context ``Points`` and target inputs in, Gaussians out.

    Call it as ``module.apply({"params": p}, context, x_target, key=..., target=...)``:
    ``key`` draws the latent (needed with a ``latent`` path); with ``target`` (training), the
    latent is drawn from its posterior given the targets, otherwise from its prior given the
    context. Map it over tasks with ``jax.vmap``.

    Attributes:
        decoder: the :class:`GaussianDecoder`.
        deterministic: the :class:`DeterministicPath`, or ``None``.
        latent: the :class:`LatentPath`, or ``None``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from metajax import Points
        >>> model = NeuralProcess(GaussianDecoder(sizes=(8,)), DeterministicPath(sizes=(8, 8)))
        >>> c = Points(jnp.zeros((5, 1)), jnp.zeros((5, 1)), jnp.ones(5, bool))
        >>> params = model.init(jax.random.PRNGKey(0), c, jnp.zeros((7, 1)))["params"]
        >>> model.apply({"params": params}, c, jnp.zeros((7, 1))).mean.shape
        (7, 1)
    """

    decoder: GaussianDecoder
    deterministic: DeterministicPath | None = None
    latent: LatentPath | None = None

    def __call__(self, context: Points, x_target: jax.Array, *, key: jax.Array | None = None,
                 target: Points | None = None) -> NPOutput:
        if self.deterministic is None and self.latent is None:
            raise ValueError("A NeuralProcess needs a `deterministic` or a `latent` path.")
        parts, prior, posterior = [], None, None
        if self.deterministic is not None:
            parts.append(self.deterministic(context, x_target))
        if self.latent is not None:
            if key is None:
                raise ValueError("`key` is required: this NeuralProcess draws a latent.")
            prior = self.latent(context)
            posterior = self.latent(target) if target is not None else None
            mean, std = posterior if posterior is not None else prior
            z = mean + std * jax.random.normal(key, mean.shape)
            parts.append(z[None, :])
        if any(p.shape[0] != 1 for p in parts):  # per-target representations (attention)
            parts = [jnp.broadcast_to(p, (x_target.shape[0], p.shape[-1])) for p in parts]
        mean, std = self.decoder(jnp.concatenate(parts, axis=-1), x_target)
        return NPOutput(mean, std, prior, posterior)
