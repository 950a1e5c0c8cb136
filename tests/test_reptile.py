"""Tests for metajax.reptile: the outer update against a hand computation, annealing, errors."""

from __future__ import annotations

import gradient_zoo as zoo
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_all_close

import metajax


def _task_data(tasks, i, use_query):
    s = jax.tree.map(lambda a: a[i], tasks.support)
    q = jax.tree.map(lambda a: a[i], tasks.query)
    return tuple(np.concatenate([a, b]) for a, b in zip(s, q, strict=True)) if use_query else s


@pytest.mark.parametrize("n_tasks, use_query", [(1, False), (3, True)])
def test_update_is_eps_times_mean_displacement(x64, n_tasks, use_query):
    params, tasks = zoo.params(1), zoo.tasks(1, n_tasks=n_tasks)
    learner = metajax.reptile(zoo.loss, inner_steps=3, inner_opt=optax.sgd(0.1),
                              outer_step_size=0.4, use_query=use_query)
    state, metrics = jax.jit(learner.step)(learner.init(params), tasks)
    adapted = [zoo.sgd(params, _task_data(tasks, i, use_query), 0.1, 3)
               for i in range(n_tasks)]
    mean_adapted = jax.tree.map(lambda *a: sum(a) / n_tasks, *adapted)
    expected = jax.tree.map(lambda p, a: p + 0.4 * (a - p), params, mean_adapted)
    assert_trees_all_close(state.params, expected, rtol=1e-10, atol=1e-12)
    assert int(state.step) == 1
    # Metrics: the loss on the adapted-to data, before and after adaptation.
    post = np.mean([float(zoo.loss(a, _task_data(tasks, i, use_query)))
                    for i, a in enumerate(adapted)])
    pre = np.mean([float(zoo.loss(params, _task_data(tasks, i, use_query)))
                   for i in range(n_tasks)])
    np.testing.assert_allclose(float(metrics["loss"]), post, rtol=1e-10)
    np.testing.assert_allclose(float(metrics["pre_loss"]), pre, rtol=1e-10)
    assert post < pre


def test_jit_step_equals_eager_step(x64):
    params, tasks = zoo.params(1), zoo.tasks(1)
    learner = metajax.reptile(zoo.loss, inner_steps=3, inner_opt=optax.sgd(0.1),
                              outer_step_size=0.4)
    state = learner.init(params)
    eager = learner.step(state, tasks)
    jitted = jax.jit(learner.step)(state, tasks)
    assert_trees_all_close(jitted, eager, rtol=1e-12, atol=1e-14)
    assert not np.allclose(np.asarray(eager[0].params["w"]), np.asarray(params["w"]))


def test_explicit_outer_opt_gets_the_pseudo_gradient(x64):
    params, tasks = zoo.params(3), zoo.tasks(3)
    plain = metajax.reptile(zoo.loss, inner_steps=3, inner_opt=optax.sgd(0.1), outer_step_size=0.4)
    explicit = metajax.reptile(zoo.loss, optax.sgd(0.4), inner_steps=3, inner_opt=optax.sgd(0.1))
    a, _ = plain.step(plain.init(params), tasks)  # eager: kernels shared with the test above
    b, _ = explicit.step(explicit.init(params), tasks)
    assert_trees_all_close(a.params, b.params, rtol=1e-12, atol=1e-14)
    assert not np.allclose(np.asarray(a.params["w"]), np.asarray(params["w"]))


def _adam_b1_zero_by_hand(params, data, lr, steps, b2=0.999, eps=1e-8):
    """The paper's inner optimizer, Adam with beta1 = 0, in plain numpy."""
    p = {k: np.asarray(v) for k, v in params.items()}
    nu = {k: np.zeros_like(v) for k, v in p.items()}
    for t in range(1, steps + 1):
        g = {k: np.asarray(v) for k, v in jax.grad(zoo.loss)(p, data).items()}
        for k in p:
            nu[k] = b2 * nu[k] + (1 - b2) * g[k] ** 2
            p[k] = p[k] - lr * g[k] / (np.sqrt(nu[k] / (1 - b2 ** t)) + eps)
    return p


def test_default_inner_adam_and_linear_annealing(x64):
    params, tasks = zoo.params(2), zoo.tasks(2)
    learner = metajax.reptile(zoo.loss, inner_steps=2, inner_lr=0.05, outer_step_size=0.8,
                              total_steps=4)
    step = jax.jit(learner.step)
    state = learner.init(params)
    for _ in range(3):  # the 4th update (step index 3) uses eps = 0.8 * (1 - 3/4) = 0.2
        before = state.params
        state, _ = step(state, tasks)
    adapted = [_adam_b1_zero_by_hand(before, _task_data(tasks, i, True), 0.05, 2)
               for i in range(3)]
    expected = jax.tree.map(lambda p, *a: p + 0.8 * (1 - 2 / 4) * (sum(a) / 3 - p),
                            before, *adapted)
    assert_trees_all_close(state.params, expected, rtol=1e-7, atol=1e-10)
    before = state.params
    state, _ = step(state, tasks)
    adapted = [_adam_b1_zero_by_hand(before, _task_data(tasks, i, True), 0.05, 2)
               for i in range(3)]
    expected = jax.tree.map(lambda p, *a: p + 0.2 * (sum(a) / 3 - p), before, *adapted)
    assert_trees_all_close(state.params, expected, rtol=1e-7, atol=1e-10)
    # Past total_steps the step size is 0: the parameters stop moving.
    frozen, _ = step(state, tasks)
    assert_trees_all_close(frozen.params, state.params, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, match", [
    ({}, "`inner_lr`"),
    ({"inner_lr": 0.1, "inner_opt": optax.sgd(0.1)}, "either `inner_lr`"),
    ({"inner_lr": 0.1, "outer_opt": optax.sgd(1.0), "outer_step_size": 0.5},
     "`outer_step_size`"),
    ({"inner_lr": 0.1, "total_steps": 0}, "`total_steps`"),
    ({"inner_lr": 0.1, "inner_steps": 0}, "`inner_steps`"),
])
def test_bad_options_name_the_argument(kwargs, match):
    kwargs = {"inner_steps": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        metajax.reptile(zoo.loss, **kwargs)


def test_support_and_query_must_match_with_use_query():
    learner = metajax.reptile(zoo.loss, inner_steps=1, inner_lr=0.1)
    tasks = metajax.TaskBatch((jnp.ones((2, 3, 2)), jnp.ones((2, 3))), (jnp.ones((2, 3, 2)),))
    with pytest.raises(ValueError, match="same structure"):
        learner.step(learner.init(zoo.params()), tasks)
