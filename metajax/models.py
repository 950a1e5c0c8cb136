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
