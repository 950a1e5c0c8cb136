"""iMAML: implicit meta-gradient against closed forms, learning sinusoids, bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from metajax import tasks

LAM = 0.7


def linear_loss(params, batch):
    x, y = batch
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def _linear_tasks(seed=0, n_tasks=3, n_support=6, n_query=7, dim=3):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n_tasks, dim))

    def split(n):
        x = rng.normal(size=(n_tasks, n, dim))
        return jnp.asarray(x), jnp.asarray(np.einsum("tnd,td->tn", x, w) + rng.normal(
            size=(n_tasks, n)))

    return metajax.TaskBatch(split(n_support), split(n_query))


def _closed_form(theta, tasks):
    """phi* = (A + lam I)^{-1} (c + lam theta) per task (A, c from the support normal equations);
    meta-gradient lam (A + lam I)^{-1} grad L_query(phi*), averaged over tasks."""
    flat = np.concatenate([np.asarray(theta["w"]), np.asarray(theta["b"])[None]])
    grads, losses = [], []
    for t in range(tasks.support[0].shape[0]):
        xs, ys = (np.asarray(a[t]) for a in tasks.support)
        xq, yq = (np.asarray(a[t]) for a in tasks.query)
        xs, xq = (np.concatenate([x, np.ones((len(x), 1))], 1) for x in (xs, xq))
        a, c = 2 * xs.T @ xs / len(xs), 2 * xs.T @ ys / len(xs)
        reg = a + LAM * np.eye(len(flat))
        phi = np.linalg.solve(reg, c + LAM * flat)
        residual = xq @ phi - yq
        losses.append(np.mean(residual ** 2))
        grads.append(LAM * np.linalg.solve(reg, 2 * xq.T @ residual / len(xq)))
    return np.mean(grads, 0), np.mean(losses)


def _meta_gradient(learner, theta, tasks):
    """One outer SGD step with rate 1: the update is minus the meta-gradient."""
    state, metrics = jax.jit(learner.step)(learner.init(theta), tasks)
    grad = jax.tree.map(lambda a, b: a - b, theta, state.params)
    return np.concatenate([np.asarray(grad["w"]), np.asarray(grad["b"])[None]]), metrics


def test_implicit_meta_gradient_matches_closed_form_and_unrolled_gradient(x64):
    tasks_ = _linear_tasks()
    theta = {"w": jnp.array([0.5, -0.3, 0.2]), "b": jnp.array(0.1)}
    learner = metajax.imaml(linear_loss, optax.sgd(1.0), lam=LAM, inner_steps=400, inner_lr=0.1,
                            cg_steps=8)
    grad, metrics = _meta_gradient(learner, theta, tasks_)
    expected_grad, expected_loss = _closed_form(theta, tasks_)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(metrics["loss"], expected_loss, rtol=1e-10)
    assert metrics["pre_loss"] > metrics["loss"]

    # The same gradient by backpropagating through the fully converged (unrolled) inner loop.
    def unrolled(th):
        def proximal(phi, batch):
            sq = sum(jnp.sum((p - t) ** 2) for p, t in zip(jax.tree.leaves(phi),
                                                           jax.tree.leaves(th), strict=True))
            return linear_loss(phi, batch) + 0.5 * LAM * sq

        def one(support, query):
            phi = metajax.adapt(proximal, th, support, steps=400, lr=0.1)
            return linear_loss(phi, query)

        return jnp.mean(jax.vmap(one)(tasks_.support, tasks_.query))

    g = jax.grad(unrolled)(theta)
    np.testing.assert_allclose(grad, np.concatenate([g["w"], g["b"][None]]), rtol=1e-8)

    # Truncating CG to one Hessian-vector product changes the gradient: cg_steps is used.
    short = metajax.imaml(linear_loss, optax.sgd(1.0), lam=LAM, inner_steps=400, inner_lr=0.1,
                          cg_steps=1)
    assert np.abs(_meta_gradient(short, theta, tasks_)[0] - expected_grad).max() > 1e-4


def test_imaml_learns_sinusoid_quickly():
    from metajax import losses, models

    model = models.MLP(features=(32, 32, 1), activation=jnp.tanh)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1)))["params"]
    loss_fn = losses.mse(lambda p, x: model.apply({"params": p}, x))
    # tanh keeps the support-loss Hessian small enough for a stable inner step size of 0.02.
    outer = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(3e-3))
    learner = metajax.imaml(loss_fn, outer, lam=0.5, inner_steps=20, inner_lr=0.02,
                            cg_steps=5, cg_damping=1.0)
    assert learner.adaptation(params) == metajax.Adaptation(params, 0.02)
    sample = functools.partial(tasks.sinusoid, n_tasks=10)
    run = jax.jit(metajax.make_multi_step(learner.step, sample, steps_per_call=400))
    state, metrics = run(learner.init(params), jax.random.PRNGKey(1))
    assert np.all(np.isfinite(metrics["loss"]))
    post, pre = metrics["loss"][-50:].mean(), metrics["pre_loss"][-50:].mean()
    # The query loss after the inner solve is well below the loss before adaptation, and below
    # E[y^2] = E[amplitude^2] / 2 = 4.2, the loss of the best constant prediction (zero).
    assert post < 0.65 * pre, (post, pre)
    assert post < 3.0, post


@pytest.mark.parametrize("kwargs, name", [
    ({"lam": 0.0}, "lam"), ({"lam": -1.0}, "lam"), ({"cg_steps": 0}, "cg_steps"),
    ({"inner_steps": 0}, "inner_steps"), ({"cg_damping": -1.0}, "cg_damping"),
])
def test_bad_arguments_are_named(kwargs, name):
    options = {"lam": 1.0, "inner_steps": 2, "inner_lr": 0.1, "cg_steps": 2, **kwargs}
    with pytest.raises(ValueError, match=f"`{name}`"):
        metajax.imaml(linear_loss, optax.sgd(1.0), **options)


def test_inner_lr_xor_inner_opt():
    with pytest.raises(ValueError, match="`inner_lr`.*`inner_opt`"):
        metajax.imaml(linear_loss, optax.sgd(1.0), lam=1.0, inner_steps=2)
