"""A tiny float64-friendly regression problem shared by the gradient-based algorithm tests.

Every test module of the algorithm zoo uses the same shapes, so the eagerly compiled kernels
are reused across tests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import metajax


def params(seed: int = 0) -> dict:
    """A 2-3-1 tanh network: ``w``, ``b`` form the body and ``v`` the (linear) head."""
    rng = np.random.default_rng(seed)
    return {"w": jnp.asarray(rng.normal(size=(2, 3)) * 0.7), "b": jnp.asarray(rng.normal(size=3)),
            "v": jnp.asarray(rng.normal(size=(3,)) * 0.5)}


def loss(p, batch):
    x, y = batch
    return jnp.mean((jnp.tanh(x @ p["w"] + p["b"]) @ p["v"] - y) ** 2)


def tasks(seed: int = 0, n_tasks: int = 3, n_support: int = 4, n_query: int = 5):
    """Random regression tasks (inputs ``[n, 2]``, scalar targets) as a TaskBatch."""
    rng = np.random.default_rng(seed)

    def split(n):
        return (jnp.asarray(rng.normal(size=(n_tasks, n, 2))),
                jnp.asarray(rng.normal(size=(n_tasks, n))))

    return metajax.TaskBatch(split(n_support), split(n_query))


def task(batch, i):
    """The ``i``-th task as ``(support, query)``."""
    return jax.tree.map(lambda a: a[i], (batch.support, batch.query))


def sgd(p, data, lr, steps):
    """``steps`` plain SGD steps on ``loss``; ``lr`` is a scalar or a pytree like ``p``, or a
    function ``t -> lr`` of the step index."""
    for t in range(steps):
        rate = lr(t) if callable(lr) else lr
        rate = rate if isinstance(rate, dict) else jax.tree.map(lambda _: rate, p)
        g = jax.grad(loss)(p, data)
        p = jax.tree.map(lambda a, g, r: a - r * g, p, g, rate)
    return p


def applied_gradient(state, new_state):
    """With ``optax.sgd(1.0)`` as the outer optimizer the update is ``-grad``."""
    return jax.tree.map(lambda a, b: a - b, state.params, new_state.params)
