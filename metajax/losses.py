"""Loss-function builders: turn ``apply(params, x)`` into ``loss_fn(params, (x, y))``."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from metajax._src.amortized.gaussian import gaussian_kl, gaussian_log_prob, masked_mean

Apply = Callable[[object, jax.Array], jax.Array]


def mse(apply: Apply) -> Callable:
    """Mean squared error loss ``loss_fn(params, (x, y))`` for a regression model.

    Examples:
        >>> import jax.numpy as jnp
        >>> loss = mse(lambda w, x: w * x)
        >>> float(loss(2.0, (jnp.ones(3), jnp.zeros(3))))
        4.0
    """

    def loss_fn(params, batch):
        x, y = batch
        return jnp.mean((apply(params, x) - y) ** 2)

    return loss_fn


def cross_entropy(apply: Apply) -> Callable:
    """Softmax cross-entropy with accuracy as aux: ``loss_fn(params, (x, labels)) -> (loss, aux)``.

    Use with ``has_aux=True``. Labels are integer class indices.
    """

    def loss_fn(params, batch):
        x, labels = batch
        logits = apply(params, x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
        return loss, {"accuracy": accuracy}

    return loss_fn


__all__ = ["cross_entropy", "gaussian_kl", "gaussian_log_prob", "masked_mean", "mse"]
