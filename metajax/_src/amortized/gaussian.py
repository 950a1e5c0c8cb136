"""Masked means and the Gaussian densities of the neural-process objectives."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_mean(values: jax.Array, mask: jax.Array, axis: int = 0) -> jax.Array:
    """Mean of ``values`` over the entries of ``axis`` where ``mask`` is true.

    ``mask`` has the shape of ``values`` up to ``axis`` inclusive; an all-false mask gives 0.

    Examples:
        >>> import jax.numpy as jnp
        >>> float(masked_mean(jnp.array([1.0, 3.0, 100.0]), jnp.array([1, 1, 0])))
        2.0
    """
    m = jnp.asarray(mask, values.dtype)
    m = m.reshape(m.shape + (1,) * (values.ndim - m.ndim))
    return jnp.sum(values * m, axis=axis) / jnp.maximum(jnp.sum(m, axis=axis), 1.0)


def gaussian_log_prob(y: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """Elementwise log-density of ``y`` under ``N(mean, std**2)``.

    Examples:
        >>> import jax.numpy as jnp
        >>> round(float(gaussian_log_prob(jnp.array(0.0), jnp.array(0.0), jnp.array(1.0))), 4)
        -0.9189
    """
    z = (y - mean) / std
    return -0.5 * z**2 - jnp.log(std) - 0.5 * jnp.log(2 * jnp.pi)


def gaussian_kl(mean_q: jax.Array, std_q: jax.Array, mean_p: jax.Array,
                std_p: jax.Array) -> jax.Array:
    """Elementwise ``KL(N(mean_q, std_q**2) || N(mean_p, std_p**2))`` in closed form.

    Examples:
        >>> import jax.numpy as jnp
        >>> float(gaussian_kl(jnp.array(1.0), jnp.array(1.0), jnp.array(0.0), jnp.array(1.0)))
        0.5
    """
    return (jnp.log(std_p / std_q) + (std_q**2 + (mean_q - mean_p) ** 2) / (2 * std_p**2)
            - 0.5)
