"""Test helpers: tree comparison and finite-difference gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import metajax


def assert_trees_all_close(a, b, rtol: float = 1e-6, atol: float = 1e-6) -> None:
    """Asserts two pytrees have the same structure, leaf shapes and (close) leaf values."""
    sa, sb = jax.tree.structure(a), jax.tree.structure(b)
    assert sa == sb, f"tree structures differ: {sa} vs {sb}"
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b),
                            strict=True):
        x, y = np.asarray(x), np.asarray(y)
        name = jax.tree_util.keystr(path) or "<root>"
        assert x.shape == y.shape, f"{name}: shape {x.shape} vs {y.shape}"
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=name)


def fd_gradient(f, params, eps: float = 1e-5):
    """Central finite-difference gradient of a scalar ``f(params)`` w.r.t. every coordinate.

    ``f`` is compiled once and evaluated ``2 * size`` times, one coordinate at a time.
    Returns a pytree shaped like ``params``.
    """
    flat, unravel = ravel_pytree(params)
    f_flat = jax.jit(lambda v: f(unravel(v)))
    flat = np.asarray(flat)
    grad = np.zeros_like(flat)
    for i in range(flat.size):
        step = np.zeros_like(flat)
        step[i] = eps
        grad[i] = (float(f_flat(flat + step)) - float(f_flat(flat - step))) / (2 * eps)
    return unravel(jnp.asarray(grad))


def tree_dot(a, b):
    """Sum over leaves of the elementwise product of two pytrees of the same structure."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                               strict=True))


def tree_sub(a, b):
    return jax.tree.map(lambda x, y: x - y, a, b)


# A tiny 2-8-1 tanh MLP used across test modules (shared shapes keep eager kernels cached).


def mlp_apply(params, x):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return (h @ params["w2"] + params["b2"])[..., 0]


def mlp_mse(params, batch):
    x, y = batch
    return jnp.mean((mlp_apply(params, x) - y) ** 2)


def mlp_params(seed=0, hidden=8):
    """Numpy-sampled MLP parameters as jnp arrays of the current default float dtype."""
    rng = np.random.default_rng(seed)
    params = {
        "w1": rng.normal(size=(2, hidden)) * 0.8,
        "b1": rng.normal(size=(hidden,)) * 0.1,
        "w2": rng.normal(size=(hidden, 1)) * 0.5,
        "b2": rng.normal(size=(1,)) * 0.1,
    }
    return jax.tree.map(jnp.asarray, params)


def regression_tasks(seed=0, n_tasks=3, n_support=5, n_query=6, dim=2):
    """A TaskBatch of random nonlinear regression tasks with 1-D targets, from numpy."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n_tasks, dim))

    def split(n):
        x = rng.normal(size=(n_tasks, n, dim))
        y = np.sin(np.einsum("tnd,td->tn", x, w)) + 0.1 * rng.normal(size=(n_tasks, n))
        return jnp.asarray(x), jnp.asarray(y)

    return metajax.TaskBatch(support=split(n_support), query=split(n_query))


def task(tasks, i):
    """The ``i``-th task of a TaskBatch as ``(support, query)``."""
    return jax.tree.map(lambda t: t[i], (tasks.support, tasks.query))


def classification_tasks(seed=0, n_tasks=4, n_support=6, n_query=9, dim=4, n_classes=3):
    """Linear-classifier params and a TaskBatch of random few-shot classification tasks."""
    rng = np.random.default_rng(seed)
    params = {"w": jnp.asarray(rng.normal(size=(dim, n_classes)) * 0.3),
              "b": jnp.zeros(n_classes)}

    def split(n):
        x = jnp.asarray(rng.normal(size=(n_tasks, n, dim)))
        return x, jnp.asarray(rng.integers(0, n_classes, size=(n_tasks, n)))

    return params, metajax.TaskBatch(split(n_support), split(n_query))


def linear_logits(params, x):
    return x @ params["w"] + params["b"]
