"""Tests for fomaml and the MAML++ options of metajax.maml (LSLR, multi-step loss, annealing)."""

from __future__ import annotations

import gradient_zoo as zoo
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_all_close, fd_gradient

import metajax
from metajax._src.core.adapt import inner_step


def _maml(**kwargs):
    return metajax.maml(zoo.loss, optax.sgd(1.0), inner_steps=2, inner_lr=0.3, **kwargs)


_STEPS: dict = {}
MSL = {"multi_step_loss": True, "msl_anneal_steps": 10, "msl_min_weight": 0.0}


def _update(kwargs, params, tasks, step=0):
    """The applied update ``-grad`` of one jitted step at outer step ``step``. Learners are
    ``_maml(**kwargs)`` (``fomaml=True``: :func:`metajax.fomaml`), compiled once per module."""
    key = tuple(sorted(kwargs.items()))
    if key not in _STEPS:
        kwargs = dict(kwargs)
        if kwargs.pop("fomaml", False):
            learner = metajax.fomaml(zoo.loss, optax.sgd(1.0), inner_steps=2, inner_lr=0.3,
                                     **kwargs)
        else:
            learner = _maml(**kwargs)
        _STEPS[key] = learner, jax.jit(learner.step)
    learner, step_fn = _STEPS[key]
    state = learner.init(params)._replace(step=jnp.asarray(step, jnp.int32))
    new_state, metrics = step_fn(state, tasks)
    return zoo.applied_gradient(state, new_state), metrics


def test_fomaml_gradient_is_the_query_gradient_at_the_adapted_params(x64):
    params, tasks = zoo.params(8), zoo.tasks(8)
    fo, _ = _update({"fomaml": True}, params, tasks)
    expected = []
    for i in range(3):
        support, query = zoo.task(tasks, i)
        expected.append(jax.grad(zoo.loss)(zoo.sgd(params, support, 0.3, 2), query))
    assert_trees_all_close(fo, jax.tree.map(lambda *g: sum(g) / 3, *expected),
                           rtol=1e-10, atol=1e-13)
    second, _ = _update({}, params, tasks)
    assert not np.allclose(np.asarray(fo["w"]), np.asarray(second["w"]))
    with pytest.raises(TypeError, match="first_order"):
        metajax.fomaml(zoo.loss, optax.sgd(1.0), inner_steps=1, inner_lr=0.1, first_order=False)


# ---------------------------------------------------------------------------------------------
# Multi-step loss
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("step, inner_steps, anneal, floor, expected", [
    (0, 4, 100, None, [0.25, 0.25, 0.25, 0.25]),
    (50, 4, 100, None, [0.125, 0.125, 0.125, 0.625]),
    (1000, 4, 100, None, [0.0075, 0.0075, 0.0075, 0.9775]),  # the paper code's 0.03 / steps
    (100, 3, 100, 0.0, [0.0, 0.0, 1.0]),
    (0, 3, 0, 0.0, [0.0, 0.0, 1.0]),
    (7, 1, 10, None, [1.0]),
])
def test_msl_weights(step, inner_steps, anneal, floor, expected):
    w = metajax.msl_weights(step, inner_steps=inner_steps, anneal_steps=anneal, min_weight=floor)
    np.testing.assert_allclose(np.asarray(w), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(float(w.sum()), 1.0, rtol=1e-6)


def test_msl_uniform_weights_give_the_mean_over_steps(x64):
    params, tasks = zoo.params(10), zoo.tasks(10)
    grads, metrics = _update(MSL, params, tasks, step=0)

    def objective(p):  # the mean over tasks of the query losses after 1 and 2 steps
        total = 0.0
        for i in range(3):
            support, query = zoo.task(tasks, i)
            for k in (1, 2):
                adapted = metajax.adapt(zoo.loss, p, support, steps=k, lr=0.3)
                total += zoo.loss(adapted, query) / 2
        return total / 3

    value, expected = jax.jit(jax.value_and_grad(objective))(params)
    assert_trees_all_close(grads, expected, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(float(metrics["msl_loss"]), float(value), rtol=1e-12)
    assert float(metrics["loss"]) != pytest.approx(float(metrics["msl_loss"]), rel=1e-6)
    assert set(metrics) == {"loss", "msl_loss", "pre_loss"}


def test_msl_with_final_step_weights_equals_maml(x64):
    params, tasks = zoo.params(9), zoo.tasks(9)
    msl, msl_metrics = _update(MSL, params, tasks, step=10)  # annealed: weights (0, 1)
    plain, plain_metrics = _update({}, params, tasks)
    assert_trees_all_close(msl, plain, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(float(msl_metrics["msl_loss"]), float(plain_metrics["loss"]),
                               rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# First- to second-order annealing
# ---------------------------------------------------------------------------------------------


def test_first_order_until_switches_from_fomaml_to_maml(x64):
    params, tasks = zoo.params(11), zoo.tasks(11)
    annealed = _maml(first_order_until=2)
    step = jax.jit(annealed.step)
    state = annealed.init(params)
    fo, _ = _update({"fomaml": True}, params, tasks)
    so, _ = _update({}, params, tasks)
    for t, expected in ((0, fo), (1, fo), (2, so), (5, so)):
        s = state._replace(step=jnp.asarray(t, jnp.int32))
        got = zoo.applied_gradient(s, step(s, tasks)[0])
        assert_trees_all_close(got, expected, rtol=1e-9, atol=1e-12)
    assert not np.allclose(np.asarray(fo["w"]), np.asarray(so["w"]))


# ---------------------------------------------------------------------------------------------
# Learned per-step, per-leaf rates (LSLR)
# ---------------------------------------------------------------------------------------------


def test_per_step_rates_meta_gradient_matches_finite_differences(x64):
    params, tasks = zoo.params(12), zoo.tasks(12)
    # Composed with remat and with a multi-step loss whose weights are on the final step.
    learner = _maml(per_step_lr=True, remat=True, multi_step_loss=True, msl_anneal_steps=0,
                    msl_min_weight=0.0)
    state = learner.init(params)
    rates = {"w": jnp.asarray([0.3, 0.1]), "b": jnp.asarray([0.2, 0.05]),
             "v": jnp.asarray([0.4, 0.25])}
    meta = metajax.LearnedRates(init=params, lr=rates)
    state = state._replace(params=meta, opt_state=optax.sgd(1.0).init(meta))
    new_state, metrics = jax.jit(learner.step)(state, tasks)

    def meta_loss(meta):  # by hand: step t uses rate lr[leaf][t]
        total = 0.0
        for i in range(3):
            support, query = zoo.task(tasks, i)
            rate = lambda t: {k: a[t] for k, a in meta.lr.items()}  # noqa: E731
            total += zoo.loss(zoo.sgd(meta.init, support, rate, 2), query)
        return total / 3

    grads = zoo.applied_gradient(state, new_state)
    assert_trees_all_close(grads, fd_gradient(jax.jit(meta_loss), state.params),
                           rtol=1e-6, atol=1e-8)
    assert float(jnp.abs(grads.lr["w"]).min()) > 1e-5  # every step's rate is learned
    np.testing.assert_allclose(float(metrics["loss"]), float(meta_loss(state.params)),
                               rtol=1e-12)


def test_per_step_rates_init_adaptation_and_later_steps(x64):
    params = zoo.params()
    learner = metajax.maml(zoo.loss, optax.sgd(0.1), inner_steps=3,
                           inner_lr={"w": 0.1, "b": 0.2, "v": 0.3}, per_step_lr=True)
    meta = learner.init(params).params
    np.testing.assert_allclose(np.asarray(meta.lr["b"]), [0.2, 0.2, 0.2])
    meta.lr["v"] = jnp.asarray([0.3, 0.2, 0.1])
    start, lr, _ = learner.adaptation(meta)
    assert start is meta.init
    np.testing.assert_allclose([float(lr[k]) for k in "wbv"], [0.1, 0.2, 0.1], rtol=1e-6)

    # Inner steps past the learned ones reuse the last step's rates.
    step = inner_step(zoo.loss, metajax.scale_by_step_rates(
        {k: jnp.asarray([0.5, 0.1]) for k in "wbv"}))
    support = zoo.task(zoo.tasks(), 0)[0]
    carry = (params, jnp.asarray(0))
    for _ in range(3):
        carry = step(carry, support)
    expected = zoo.sgd(params, support, lambda t: [0.5, 0.1, 0.1][t], 3)
    assert_trees_all_close(carry[0], expected, rtol=1e-5, atol=1e-6)
    assert int(carry[1]) == 3


@pytest.mark.parametrize("kwargs, match", [
    ({"per_step_lr": True, "inner_lr": None, "inner_opt": optax.sgd(0.1)}, "`inner_opt`"),
    ({"per_step_lr": True, "inner_lr": None}, "needs `inner_lr`"),
    ({"multi_step_loss": True}, "needs `msl_anneal_steps`"),
    ({"multi_step_loss": True, "msl_anneal_steps": -1}, "`msl_anneal_steps`"),
    ({"multi_step_loss": True, "msl_anneal_steps": 5, "msl_min_weight": 0.9}, "`msl_min_weight`"),
    ({"msl_anneal_steps": 5}, "only apply with multi_step_loss"),
    ({"first_order_until": 3, "first_order": True}, "`first_order_until`"),
    ({"first_order_until": 2.5}, "`first_order_until`"),
])
def test_bad_options_name_the_argument(kwargs, match):
    kwargs = {"inner_lr": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        metajax.maml(zoo.loss, optax.sgd(0.1), inner_steps=2, **kwargs)


def test_bad_per_step_inner_lr_pytree():
    learner = metajax.maml(zoo.loss, optax.sgd(0.1), inner_steps=2, inner_lr={"w": 0.1},
                           per_step_lr=True)
    with pytest.raises(ValueError, match="`inner_lr` must be a scalar or a pytree of scalars"):
        learner.init(zoo.params())
