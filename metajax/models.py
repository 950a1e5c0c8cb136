"""Flax models for meta-learning (Linen); any ``apply(params, x)`` works with metajax too."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax


class MLP(nn.Module):
    """A multi-layer perceptron: Dense layers with an activation between them.

    Attributes:
        features: output width of every layer; the last entry is the output size.
        activation: nonlinearity applied after every layer but the last.

    Example:
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

    Example:
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

    Example:
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
