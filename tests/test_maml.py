"""Tests for metajax.maml: batched meta-gradients, metrics, Flax models, learning, bad input."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import (
    assert_trees_all_close,
    classification_tasks,
    linear_logits,
    mlp_mse,
    mlp_params,
    regression_tasks,
    task,
)

import metajax


def loop_meta_gradient(loss_fn, params, tasks, *, jit=False, **adapt_kwargs):
    """Mean over tasks of per-task meta-gradients, one task at a time in a Python loop."""

    def objective(p, support, query):
        return loss_fn(metajax.adapt(loss_fn, p, support, **adapt_kwargs), query)

    grad_fn = jax.jit(jax.grad(objective)) if jit else jax.grad(objective)
    n = metajax.num_tasks(tasks)
    grads = [grad_fn(params, *task(tasks, i)) for i in range(n)]
    return jax.tree.map(lambda *g: sum(g) / n, *grads)


def applied_gradient(state, new_state):
    """With optax.sgd(1.0) as the outer optimizer the update is ``-grad``."""
    return jax.tree.map(lambda a, b: a - b, state.params, new_state.params)


# ---------------------------------------------------------------------------------------------
# The batched meta-gradient equals a Python loop over tasks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("inner_steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
def test_step_gradient_and_metrics_equal_loop_over_tasks(x64, first_order, inner_steps):
    params, tasks = mlp_params(seed=1), regression_tasks(seed=1)  # 3 tasks
    learner = metajax.maml(mlp_mse, optax.sgd(1.0), inner_steps=inner_steps, inner_lr=0.2,
                           first_order=first_order)
    state = learner.init(params)
    new_state, metrics = jax.jit(learner.step)(state, tasks)
    expected = loop_meta_gradient(mlp_mse, params, tasks, steps=inner_steps, lr=0.2,
                                  first_order=first_order)
    assert_trees_all_close(applied_gradient(state, new_state), expected, rtol=1e-9, atol=1e-12)
    assert int(new_state.step) == 1

    # Metrics: `loss` is the post-adaptation query loss, `pre_loss` the loss of the
    # meta-parameters on the query set, both averaged over tasks.
    assert set(metrics) == {"loss", "pre_loss"}
    pre, post = [], []
    for i in range(3):
        support, query = task(tasks, i)
        pre.append(float(mlp_mse(params, query)))
        adapted = metajax.adapt(mlp_mse, params, support, steps=inner_steps, lr=0.2)
        post.append(float(mlp_mse(adapted, query)))
    np.testing.assert_allclose(float(metrics["pre_loss"]), np.mean(pre), rtol=1e-12)
    np.testing.assert_allclose(float(metrics["loss"]), np.mean(post), rtol=1e-12)
    assert abs(np.mean(pre) - np.mean(post)) > 1e-3  # the two metrics are distinguishable


def test_step_with_per_parameter_lr_equals_loop(x64):
    params, tasks = mlp_params(seed=2), regression_tasks(seed=2)
    rng = np.random.default_rng(2)
    lr = jax.tree.map(lambda p: jnp.asarray(rng.uniform(0.05, 0.3, size=p.shape)), params)
    learner = metajax.maml(mlp_mse, optax.sgd(1.0), inner_steps=2, inner_lr=lr)
    state = learner.init(params)
    new_state, _ = jax.jit(learner.step)(state, tasks)
    expected = loop_meta_gradient(mlp_mse, params, tasks, steps=2, lr=lr)
    assert_trees_all_close(applied_gradient(state, new_state), expected, rtol=1e-9, atol=1e-12)


def test_jit_step_equals_eager_step(x64):
    # A linear model keeps the eager (op-by-op) run cheap.
    rng = np.random.default_rng(3)
    params = {"w": jnp.asarray(rng.normal(size=2)), "b": jnp.asarray(0.5)}
    tasks = metajax.TaskBatch(
        (jnp.asarray(rng.normal(size=(3, 5, 2))), jnp.asarray(rng.normal(size=(3, 5)))),
        (jnp.asarray(rng.normal(size=(3, 6, 2))), jnp.asarray(rng.normal(size=(3, 6)))))
    loss = lambda p, batch: jnp.mean((batch[0] @ p["w"] + p["b"] - batch[1]) ** 2)  # noqa: E731
    learner = metajax.maml(loss, optax.sgd(0.1), inner_steps=2, inner_lr=0.1,
                           track_pre_adaptation=False)
    state = learner.init(params)
    eager_state, eager_metrics = learner.step(state, tasks)
    jit_state, jit_metrics = jax.jit(learner.step)(state, tasks)
    assert set(eager_metrics) == {"loss"}  # no pre_loss when not tracked
    assert_trees_all_close(jit_state, eager_state, rtol=1e-10, atol=1e-12)
    assert_trees_all_close(jit_metrics, eager_metrics, rtol=1e-10, atol=1e-12)
    # The update moved the params.
    assert not np.allclose(np.asarray(eager_state.params["w"]), np.asarray(params["w"]))


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def _log_softmax_np(logits):
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_metrics_with_aux_cross_entropy(x64):
    n_tasks = 4
    params, tasks = classification_tasks(seed=5, n_tasks=n_tasks)
    loss_fn = metajax.losses.cross_entropy(linear_logits)
    learner = metajax.maml(loss_fn, optax.sgd(0.1), inner_steps=3, inner_lr=0.5, has_aux=True)
    _, metrics = jax.jit(learner.step)(learner.init(params), tasks)
    assert set(metrics) == {"loss", "accuracy", "pre_loss", "pre_accuracy"}
    for name in ("accuracy", "pre_accuracy"):
        assert 0.0 <= float(metrics[name]) <= 1.0

    acc, pre_acc, loss, pre_loss = [], [], [], []
    for i in range(n_tasks):
        support, (xq, yq) = task(tasks, i)
        adapted = metajax.adapt(loss_fn, params, support, steps=3, lr=0.5, has_aux=True)
        for p, accs, losses in ((params, pre_acc, pre_loss), (adapted, acc, loss)):
            logits = np.asarray(xq) @ np.asarray(p["w"]) + np.asarray(p["b"])
            labels = np.asarray(yq)
            accs.append(np.mean(logits.argmax(-1) == labels))
            losses.append(-np.mean(_log_softmax_np(logits)[np.arange(len(labels)), labels]))
    # Accuracy is a float32 mean of booleans even with x64 enabled.
    np.testing.assert_allclose(float(metrics["accuracy"]), np.mean(acc), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["pre_accuracy"]), np.mean(pre_acc), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["loss"]), np.mean(loss), rtol=1e-10)
    np.testing.assert_allclose(float(metrics["pre_loss"]), np.mean(pre_loss), rtol=1e-10)
    # Adaptation on the support sets changed the query loss.
    assert abs(np.mean(loss) - np.mean(pre_loss)) > 1e-3


# ---------------------------------------------------------------------------------------------
# Flax models with transductive BatchNorm
# ---------------------------------------------------------------------------------------------


def _train(step, state, tasks, n_steps):
    losses = []
    for _ in range(n_steps):
        state, metrics = step(state, tasks)
        losses.append(float(metrics["loss"]))
    return state, losses


class LinenBNNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(16)(x)
        x = nn.BatchNorm(use_running_average=False)(x)
        x = nn.relu(x)
        return nn.Dense(1)(x)[..., 0]


def test_flax_linen_batchnorm_transductive():
    model = LinenBNNet()
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((5, 2)))
    params, batch_stats = variables["params"], variables["batch_stats"]

    def loss_fn(p, batch):
        x, y = batch
        pred, _ = model.apply({"params": p, "batch_stats": batch_stats}, x,
                              mutable=["batch_stats"])  # transductive: stats of this batch
        return jnp.mean((pred - y) ** 2)

    tasks = regression_tasks(seed=6, n_tasks=4, n_support=5, n_query=6)
    learner = metajax.maml(loss_fn, optax.adam(1e-2), inner_steps=1, inner_lr=0.05)
    _, losses = _train(jax.jit(learner.step), learner.init(params), tasks, 40)
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0]


class NNXBNNet(nnx.Module):
    def __init__(self, rngs):
        self.dense1 = nnx.Linear(2, 16, rngs=rngs)
        self.bn = nnx.BatchNorm(16, use_running_average=False, rngs=rngs)
        self.dense2 = nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, x):
        return self.dense2(nnx.relu(self.bn(self.dense1(x))))[..., 0]


def test_flax_nnx_batchnorm_transductive():
    graphdef, params, rest = nnx.split(NNXBNNet(nnx.Rngs(0)), nnx.Param, ...)

    def loss_fn(p, batch):
        x, y = batch
        # copy=True: fresh Variables created inside the trace, so BatchNorm may update its
        # (discarded) batch stats; without it flax raises TraceContextError.
        model = nnx.merge(graphdef, p, rest, copy=True)
        return jnp.mean((model(x) - y) ** 2)

    tasks = regression_tasks(seed=7, n_tasks=4, n_support=5, n_query=6)
    outer_lr = 0.2
    learner = metajax.maml(loss_fn, optax.sgd(outer_lr), inner_steps=1, inner_lr=0.05)
    step = jax.jit(learner.step)
    state = learner.init(params)
    new_state, _ = step(state, tasks)
    grad = jax.tree.map(lambda g: g / outer_lr, applied_gradient(state, new_state))
    expected = loop_meta_gradient(loss_fn, params, tasks, jit=True, steps=1, lr=0.05)
    assert_trees_all_close(grad, expected, rtol=1e-4, atol=2e-5)

    _, losses = _train(step, state, tasks, 40)
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0]


# ---------------------------------------------------------------------------------------------
# Learning: MAML on sinusoid regression
# ---------------------------------------------------------------------------------------------


def test_maml_learns_sinusoid():
    model = metajax.models.MLP((40, 40, 1))
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1)))["params"]
    loss_fn = metajax.losses.mse(lambda p, x: model.apply({"params": p}, x))
    learner = metajax.maml(loss_fn, optax.adam(1e-3), inner_steps=1, inner_lr=0.01)
    sample = functools.partial(metajax.tasks.sinusoid, n_tasks=10)
    run = jax.jit(metajax.make_multi_step(learner.step, sample, steps_per_call=250))
    state, key = learner.init(params), metajax.tasks.split_key(0, "train")
    metrics = []
    for i in range(4):  # 1000 outer steps
        state, m = run(state, jax.random.fold_in(key, i))
        metrics.append(jax.tree.map(np.asarray, m))
    # Metrics are measured on fresh tasks before each update, so they are held-out losses.
    post = np.concatenate([m["loss"] for m in metrics])
    pre = np.concatenate([m["pre_loss"] for m in metrics])
    assert int(state.step) == 1000 and post.shape == (1000,)
    start, end = post[:50].mean(), post[-200:].mean()
    assert end < 0.6 * start  # well below the starting post-adaptation loss
    assert end < 0.75 * pre[:50].mean()  # and below the initial pre-adaptation loss
    assert end < 0.9 * pre[-200:].mean()  # one adaptation step helps after meta-training


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def _tiny_learner():
    loss = lambda w, b: jnp.mean((b[0] * w - b[1]) ** 2)  # noqa: E731
    return metajax.maml(loss, optax.sgd(0.1), inner_steps=1, inner_lr=0.1)


def test_mismatched_task_counts_name_the_leaves():
    learner = _tiny_learner()
    tasks = metajax.TaskBatch((jnp.ones((4, 5)), jnp.ones((4, 5))),
                              (jnp.ones((3, 5)), jnp.ones((3, 5))))
    with pytest.raises(ValueError, match=r"tasks\.support\[0\]: 4.*tasks\.query\[0\]: 3"):
        learner.step(learner.init(jnp.asarray(0.0)), tasks)


def test_scalar_task_leaf_rejected():
    learner = _tiny_learner()
    tasks = metajax.TaskBatch((jnp.ones((4, 5)), jnp.asarray(1.0)),
                              (jnp.ones((4, 5)), jnp.ones((4, 5))))
    with pytest.raises(ValueError, match=r"tasks\.support\[1\]` is a scalar"):
        learner.step(learner.init(jnp.asarray(0.0)), tasks)


def test_tuple_instead_of_taskbatch():
    learner = _tiny_learner()
    support = (jnp.ones((4, 5)), jnp.ones((4, 5)))
    with pytest.raises(TypeError, match="TaskBatch"):
        learner.step(learner.init(jnp.asarray(0.0)), (support, support))


@pytest.mark.parametrize("inner_steps", [0, 2.0, None])
def test_bad_inner_steps(inner_steps):
    loss = lambda w, b: jnp.mean((b[0] * w - b[1]) ** 2)  # noqa: E731
    with pytest.raises(ValueError, match="`inner_steps`"):
        metajax.maml(loss, optax.sgd(0.1), inner_steps=inner_steps, inner_lr=0.1)
