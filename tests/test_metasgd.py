"""Tests for metajax.metasgd: meta-gradients of init and rates, meta-parameters, bad input."""

from __future__ import annotations

import gradient_zoo as zoo
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_all_close, fd_gradient

import metajax


def test_meta_gradient_of_init_and_rates_matches_finite_differences(x64):
    params, tasks = zoo.params(4), zoo.tasks(4)
    rng = np.random.default_rng(4)
    init_lr = jax.tree.map(lambda p: jnp.asarray(rng.uniform(0.05, 0.3, np.shape(p))), params)
    learner = metajax.metasgd(zoo.loss, optax.sgd(1.0), inner_steps=2, init_lr=init_lr)
    state = learner.init(params)
    new_state, metrics = jax.jit(learner.step)(state, tasks)

    def meta_loss(meta):  # by hand: two SGD steps with per-parameter rates, then query loss
        losses = []
        for i in range(3):
            support, query = zoo.task(tasks, i)
            losses.append(zoo.loss(zoo.sgd(meta.init, support, meta.lr, 2), query))
        return sum(losses) / 3

    expected = fd_gradient(jax.jit(meta_loss), state.params)
    grads = zoo.applied_gradient(state, new_state)
    assert_trees_all_close(grads, expected, rtol=1e-6, atol=1e-8)
    assert float(jnp.abs(grads.lr["w"]).max()) > 1e-3  # the rates do get a gradient
    np.testing.assert_allclose(float(metrics["loss"]), float(meta_loss(state.params)),
                               rtol=1e-12)


def test_init_builds_meta_parameters_and_adaptation():
    params = zoo.params()
    learner = metajax.metasgd(zoo.loss, optax.sgd(0.1), init_lr=0.05)
    meta = learner.init(params).params
    assert isinstance(meta, metajax.LearnedRates)
    assert_trees_all_close(meta.init, params, rtol=0, atol=0)
    assert_trees_all_close(meta.lr, jax.tree.map(lambda p: jnp.full(p.shape, 0.05), params))
    start, lr, _ = learner.adaptation(meta)
    assert start is meta.init and lr is meta.lr

    mixed = {"w": 0.1, "b": jnp.arange(3.0), "v": 0.2}  # scalars broadcast, arrays kept
    lr = metajax.metasgd(zoo.loss, optax.sgd(0.1), init_lr=mixed).init(params).params.lr
    np.testing.assert_allclose(np.asarray(lr["w"]), np.full((2, 3), 0.1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(lr["b"]), [0.0, 1.0, 2.0])


@pytest.mark.parametrize("init_lr, match", [
    (None, "`init_lr` is required"),
    ({"w": 0.1}, "structure"),
    ({"w": jnp.ones(4), "b": 0.1, "v": 0.1}, "shape of its parameter"),
])
def test_bad_init_lr_names_the_argument(init_lr, match):
    with pytest.raises(ValueError, match=match):
        metajax.metasgd(zoo.loss, optax.sgd(0.1), init_lr=init_lr).init(zoo.params())
