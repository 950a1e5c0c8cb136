"""CAVIA: second-order meta-gradient vs finite differences, context-only inner loop, learning."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import fd_gradient

import metajax
from metajax import models, tasks

NUM_CONTEXT, STEPS, LR = 2, 2, 0.5


def context_loss(params, context, batch):
    """A tanh MLP on [x, context] (x is 1-D per example), mean squared error."""
    x, y = batch
    inputs = jnp.concatenate([x, jnp.broadcast_to(context, (x.shape[0], NUM_CONTEXT))], -1)
    h = jnp.tanh(inputs @ params["w1"] + params["b1"])
    return jnp.mean((h @ params["w2"] + params["b2"] - y) ** 2)


def _params(seed=0, hidden=6):
    rng = np.random.default_rng(seed)
    return {"w1": jnp.asarray(rng.normal(size=(1 + NUM_CONTEXT, hidden))),
            "b1": jnp.asarray(0.1 * rng.normal(size=hidden)),
            "w2": jnp.asarray(0.5 * rng.normal(size=hidden)),
            "b2": jnp.asarray(0.1)}


def _tasks(seed=0, n_tasks=2):
    rng = np.random.default_rng(seed)
    amp = rng.uniform(0.5, 2.0, size=(n_tasks, 1, 1))

    def split(n):
        x = rng.uniform(-2, 2, size=(n_tasks, n, 1))
        return jnp.asarray(x), jnp.asarray((amp * np.sin(x))[..., 0])

    return metajax.TaskBatch(split(5), split(6))


@functools.partial(jax.jit, static_argnames="first_order")
def _manual_meta_loss(params, tasks_, *, first_order=False):
    """The CAVIA objective written out independently of metajax: 2 context SGD steps."""
    grad_c = jax.grad(context_loss, argnums=1)

    def one(support, query):
        context = jnp.zeros(NUM_CONTEXT, params["b2"].dtype)
        for _ in range(STEPS):
            g = grad_c(params, context, support)
            context = context - LR * (jax.lax.stop_gradient(g) if first_order else g)
        return context_loss(params, context, query), context

    losses, contexts = jax.vmap(one)(tasks_.support, tasks_.query)
    return jnp.mean(losses), contexts


def _meta_gradient(learner, params, tasks_):
    state, metrics = jax.jit(learner.step)(learner.init(params), tasks_)
    return jax.tree.map(lambda a, b: a - b, params, state.params), metrics  # outer SGD, rate 1


def test_second_order_meta_gradient_matches_finite_differences(x64):
    params, tasks_ = _params(), _tasks()
    learner = metajax.cavia(context_loss, optax.sgd(1.0), num_context=NUM_CONTEXT,
                            inner_steps=STEPS, inner_lr=LR)
    grad, metrics = _meta_gradient(learner, params, tasks_)
    fd = fd_gradient(lambda p: _manual_meta_loss(p, tasks_)[0], params, eps=1e-6)
    for name in params:
        np.testing.assert_allclose(grad[name], fd[name], rtol=1e-6, atol=1e-9, err_msg=name)

    # The inner loop adapts the context only: the reported post-adaptation loss is the query
    # loss of the *original* network at the context adapted by plain context SGD.
    expected_loss, contexts = _manual_meta_loss(params, tasks_)
    np.testing.assert_allclose(metrics["loss"], expected_loss, rtol=1e-12)
    adapt = jax.jit(functools.partial(metajax.cavia_adapt, context_loss, num_context=NUM_CONTEXT,
                                      steps=STEPS, lr=LR))
    adapted = adapt(params, jax.tree.map(lambda a: a[0], tasks_.support))
    assert adapted.shape == (NUM_CONTEXT,) and adapted.dtype == jnp.float64
    np.testing.assert_allclose(adapted, contexts[0], rtol=1e-12)
    assert np.abs(contexts).min() > 1e-4  # the context did move
    pre = jnp.mean(jax.jit(jax.vmap(context_loss, in_axes=(None, None, 0)))(
        params, jnp.zeros(NUM_CONTEXT), tasks_.query))
    np.testing.assert_allclose(metrics["pre_loss"], pre, rtol=1e-12)


def test_first_order_drops_the_second_order_terms(x64):
    params, tasks_ = _params(1), _tasks(1)
    learner = metajax.cavia(context_loss, optax.sgd(1.0), num_context=NUM_CONTEXT,
                            inner_steps=STEPS, inner_lr=LR, first_order=True)
    grad, _ = _meta_gradient(learner, params, tasks_)
    expected, second = (
        jax.grad(lambda p, fo=fo: _manual_meta_loss(p, tasks_, first_order=fo)[0])(params)
        for fo in (True, False))
    for name in params:
        np.testing.assert_allclose(grad[name], expected[name], rtol=1e-10, atol=1e-12)
    assert max(float(jnp.abs(expected[k] - second[k]).max()) for k in params) > 1e-4


def test_cavia_learns_sinusoid_quickly():
    model = models.ContextMLP(features=(32, 32, 1))
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1)), jnp.zeros(4))["params"]

    def loss_fn(p, context, batch):
        x, y = batch
        return jnp.mean((model.apply({"params": p}, x, context) - y) ** 2)

    learner = metajax.cavia(loss_fn, optax.adam(1e-2), num_context=4, inner_steps=2,
                            inner_lr=1.0)
    assert learner.adaptation is None
    sample = functools.partial(tasks.sinusoid, n_tasks=10)
    run = jax.jit(metajax.make_multi_step(learner.step, sample, steps_per_call=300))
    state, metrics = run(learner.init(params), jax.random.PRNGKey(1))
    post, pre = metrics["loss"][-50:].mean(), metrics["pre_loss"][-50:].mean()
    assert post < 0.3 * pre, (post, pre)
    # Held-out 5-shot tasks: adapting the context alone fits them far better than the
    # zero context, and better than the initial network does.
    test = tasks.sinusoid(jax.random.PRNGKey(7), 100, k_shot=5, n_query=20)
    evaluate = jax.jit(metajax.cavia_evaluator(loss_fn, num_context=4, lr=1.0, steps=(0, 2)))
    before, after = (np.asarray(v).mean() for v in evaluate(state.params, test)["loss"])
    assert after < 0.3 * before, (after, before)
    assert after < 0.5 * float(np.mean(evaluate(params, test)["loss"][1]))


@pytest.mark.parametrize("kwargs, name", [
    ({"num_context": 0}, "num_context"), ({"num_context": 2.0}, "num_context"),
    ({"inner_steps": 0}, "inner_steps"), ({"inner_lr": None}, "inner_lr"),
])
def test_bad_arguments_are_named(kwargs, name):
    options = {"num_context": 2, "inner_steps": 1, "inner_lr": 0.5, **kwargs}
    with pytest.raises(ValueError, match=f"`{name}`"):
        metajax.cavia(context_loss, optax.sgd(1.0), **options)
    if name == "num_context":
        with pytest.raises(ValueError, match="`num_context`"):
            metajax.cavia_evaluator(context_loss, num_context=kwargs[name], lr=0.5)
