"""Tests for metajax.adapt: closed forms, finite differences, options and input checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    assert_trees_all_close,
    fd_gradient,
    mlp_mse,
    mlp_params,
    regression_tasks,
    task,
    tree_dot,
)

import metajax
from metajax._src.core import adapt as metajax_adapt

# ---------------------------------------------------------------------------------------------
# Problems
# ---------------------------------------------------------------------------------------------


def linear_mse(theta, batch):
    x, y = batch
    return jnp.mean((x @ theta - y) ** 2)


def linear_problem(seed=0, dim=3, n_support=5, n_query=7):
    """A random linear regression task as numpy float64 arrays."""
    rng = np.random.default_rng(seed)
    xs, ys = rng.normal(size=(n_support, dim)), rng.normal(size=n_support)
    xq, yq = rng.normal(size=(n_query, dim)), rng.normal(size=n_query)
    theta = rng.normal(size=dim)
    return theta, (xs, ys), (xq, yq)


def quadratic_terms(x, y):
    """A and b of the MSE gradient ``A theta - b`` for ``mean((x theta - y)^2)``."""
    n = x.shape[0]
    return 2.0 / n * x.T @ x, 2.0 / n * x.T @ y


def closed_form_adapt(theta, x, y, lr, steps):
    a_s, b_s = quadratic_terms(x, y)
    m = np.eye(len(theta)) - lr * a_s
    for _ in range(steps):
        theta = m @ theta + lr * b_s
    return theta, m


def mlp_problem(seed=0, n_support=5, n_query=6):
    """A 2-8-1 tanh MLP and one regression task; arrays take the current default dtype.

    Data come from numpy so that no test pays for compiling random-number kernels.
    """
    tasks = regression_tasks(seed, n_tasks=1, n_support=n_support, n_query=n_query)
    support, query = task(tasks, 0)
    return mlp_params(seed), support, query


def meta_objective(loss_fn, support, query, **adapt_kwargs):
    return lambda p: loss_fn(metajax.adapt(loss_fn, p, support, **adapt_kwargs), query)


# ---------------------------------------------------------------------------------------------
# Closed forms on linear regression
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 4])
def test_adapt_matches_closed_form_sgd(x64, steps):
    theta, (xs, ys), _ = linear_problem()
    lr = 0.07
    expected, _ = closed_form_adapt(theta, xs, ys, lr, steps)
    got = metajax.adapt(linear_mse, jnp.asarray(theta), (jnp.asarray(xs), jnp.asarray(ys)),
                        steps=steps, lr=lr)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-12, atol=1e-12)
    # The adaptation actually moved the parameters.
    assert not np.allclose(expected, theta)


@pytest.mark.parametrize("steps", [1, 3])
def test_meta_gradient_matches_closed_form(x64, steps):
    theta, (xs, ys), (xq, yq) = linear_problem(seed=1)
    lr = 0.1
    theta_k, m = closed_form_adapt(theta, xs, ys, lr, steps)
    a_q, b_q = quadratic_terms(xq, yq)
    query_grad = a_q @ theta_k - b_q
    second = np.linalg.matrix_power(m, steps).T @ query_grad
    support, query = (jnp.asarray(xs), jnp.asarray(ys)), (jnp.asarray(xq), jnp.asarray(yq))

    g2 = jax.grad(meta_objective(linear_mse, support, query, steps=steps, lr=lr))(
        jnp.asarray(theta))
    g1 = jax.grad(meta_objective(linear_mse, support, query, steps=steps, lr=lr,
                                 first_order=True))(jnp.asarray(theta))
    np.testing.assert_allclose(np.asarray(g2), second, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(g1), query_grad, rtol=1e-10, atol=1e-12)


def test_first_order_differs_from_second_order(x64):
    theta, (xs, ys), (xq, yq) = linear_problem(seed=2)
    support, query = (jnp.asarray(xs), jnp.asarray(ys)), (jnp.asarray(xq), jnp.asarray(yq))
    theta = jnp.asarray(theta)
    lr, steps = 0.15, 2
    g1 = jax.grad(meta_objective(linear_mse, support, query, steps=steps, lr=lr,
                                 first_order=True))(theta)
    g2 = jax.grad(meta_objective(linear_mse, support, query, steps=steps, lr=lr))(theta)
    theta_k, _ = closed_form_adapt(np.asarray(theta), xs, ys, lr, steps)
    a_q, b_q = quadratic_terms(xq, yq)
    np.testing.assert_allclose(np.asarray(g1), a_q @ theta_k - b_q, rtol=1e-10, atol=1e-12)
    assert np.max(np.abs(np.asarray(g1) - np.asarray(g2))) > 1e-2


def test_first_order_with_momentum_inner_opt_is_query_gradient(x64):
    params, support, query = mlp_problem(seed=3)
    opt = optax.sgd(0.1, momentum=0.9)
    adapted = metajax.adapt(mlp_mse, params, support, steps=3, inner_opt=opt)
    g1 = jax.grad(meta_objective(mlp_mse, support, query, steps=3, inner_opt=opt,
                                 first_order=True))(params)
    assert_trees_all_close(g1, jax.grad(mlp_mse)(adapted, query), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Finite differences on a small MLP
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 2])
def test_meta_gradient_mlp_finite_differences(x64, steps):
    params, support, query = mlp_problem(seed=4)
    f = meta_objective(mlp_mse, support, query, steps=steps, lr=0.3)
    grad = jax.grad(f)(params)
    assert_trees_all_close(grad, fd_gradient(f, params), rtol=1e-6, atol=1e-9)
    # The second-order correction is not negligible here, so the check has teeth.
    g1 = jax.grad(meta_objective(mlp_mse, support, query, steps=steps, lr=0.3,
                                 first_order=True))(params)
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in
               zip(jax.tree.leaves(grad), jax.tree.leaves(g1), strict=True)) > 1e-3


def test_meta_gradient_mlp_random_direction(x64):
    params, support, query = mlp_problem(seed=5)
    f = meta_objective(mlp_mse, support, query, steps=3, lr=0.2)
    grad = jax.grad(f)(params)
    rng = np.random.default_rng(9)
    direction = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)), params)
    eps = 1e-5
    shift = lambda s: jax.tree.map(lambda p, d: p + s * eps * d, params, direction)  # noqa: E731
    fd = (f(shift(1.0)) - f(shift(-1.0))) / (2 * eps)
    np.testing.assert_allclose(float(tree_dot(grad, direction)), float(fd), rtol=1e-7)


# ---------------------------------------------------------------------------------------------
# Per-parameter learning rates (Meta-SGD)
# ---------------------------------------------------------------------------------------------


def per_parameter_lr(params, seed=0):
    """Positive per-parameter rates: full-shape arrays for weights, a scalar leaf for b2."""
    rng = np.random.default_rng(100 + seed)
    lr = {k: jnp.asarray(rng.uniform(0.05, 0.3, size=v.shape)) for k, v in params.items()}
    lr["b2"] = jnp.asarray(0.2)
    return lr


def test_per_parameter_lr_gradient_finite_differences(x64):
    params, support, query = mlp_problem(seed=6)
    lr = per_parameter_lr(params)

    def f(lr_tree):
        adapted = metajax.adapt(mlp_mse, params, support, steps=2, lr=lr_tree)
        return mlp_mse(adapted, query)

    grad = jax.grad(f)(lr)
    assert_trees_all_close(grad, fd_gradient(f, lr), rtol=1e-6, atol=1e-9)
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grad))
    # The meta-gradient w.r.t. the initialisation is right too when rates differ per parameter
    # (checked along a random direction).
    f_params = meta_objective(mlp_mse, support, query, steps=2, lr=lr)
    rng = np.random.default_rng(3)
    direction = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)), params)
    eps = 1e-5
    shift = lambda s: jax.tree.map(lambda p, d: p + s * eps * d, params, direction)  # noqa: E731
    fd = (f_params(shift(1.0)) - f_params(shift(-1.0))) / (2 * eps)
    np.testing.assert_allclose(float(tree_dot(jax.grad(f_params)(params), direction)),
                               float(fd), rtol=1e-7)


def test_per_parameter_lr_applies_elementwise(x64):
    params, support, _ = mlp_problem(seed=7)
    lr = per_parameter_lr(params, seed=1)
    grads = jax.grad(mlp_mse)(params, support)
    expected = jax.tree.map(lambda p, a, g: p - a * g, params, lr, grads)
    got = metajax.adapt(mlp_mse, params, support, steps=1, lr=lr)
    assert_trees_all_close(got, expected, rtol=1e-12, atol=1e-14)


def test_uniform_per_parameter_lr_equals_scalar_lr(x64):
    params, support, query = mlp_problem(seed=8)
    scalar = 0.17
    tree_lr = jax.tree.map(lambda p: jnp.full(p.shape, scalar), params)
    for steps in (1, 3):
        assert_trees_all_close(
            metajax.adapt(mlp_mse, params, support, steps=steps, lr=tree_lr),
            metajax.adapt(mlp_mse, params, support, steps=steps, lr=scalar),
            rtol=1e-12, atol=1e-14)
    g_tree = jax.grad(meta_objective(mlp_mse, support, query, steps=2, lr=tree_lr))(params)
    g_scalar = jax.grad(meta_objective(mlp_mse, support, query, steps=2, lr=scalar))(params)
    assert_trees_all_close(g_tree, g_scalar, rtol=1e-12, atol=1e-14)


def test_per_parameter_lr_for_list_params_of_different_shapes():
    # Params as a list of differently shaped arrays, with a matching list of rates.
    w, b = jnp.full((2, 3), 0.5), jnp.full((3,), -0.25)
    x = jnp.arange(8.0).reshape(4, 2) / 8.0
    y = jnp.ones((4, 3))

    def loss(p, batch):
        xb, yb = batch
        return jnp.mean((xb @ p[0] + p[1] - yb) ** 2)

    lr = [jnp.full((2, 3), 0.1), jnp.full((3,), 0.3)]
    grads = jax.grad(loss)([w, b], (x, y))
    got = metajax.adapt(loss, [w, b], (x, y), steps=1, lr=lr)
    assert_trees_all_close(got, [w - 0.1 * grads[0], b - 0.3 * grads[1]])


# ---------------------------------------------------------------------------------------------
# Optax inner optimizers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_opt",
    [lambda: optax.sgd(0.2, momentum=0.9), lambda: optax.adam(0.05)],
    ids=["momentum", "adam"],
)
def test_inner_opt_meta_gradient_finite_differences(x64, make_opt):
    params, support, query = mlp_problem(seed=10)
    f = meta_objective(mlp_mse, support, query, steps=2, inner_opt=make_opt())
    grad = jax.grad(f)(params)
    assert_trees_all_close(grad, fd_gradient(f, params), rtol=1e-5, atol=1e-8)


def test_adam_inner_opt_meta_gradient_needs_eps_root_where_a_gradient_is_zero(x64):
    # a feature that is zero on the support set: its coordinate's gradient is exactly 0
    theta, (xs, ys), query = linear_problem(seed=13)
    xs[:, 2] = 0.0
    support = (jnp.asarray(xs), jnp.asarray(ys))
    query = tuple(jnp.asarray(a) for a in query)
    theta = jnp.asarray(theta)
    plain = meta_objective(linear_mse, support, query, steps=2, inner_opt=optax.adam(0.05))
    assert not np.all(np.isfinite(np.asarray(jax.grad(plain)(theta))))  # sqrt'(0) = inf
    safe = meta_objective(linear_mse, support, query, steps=2,
                          inner_opt=optax.adam(0.05, eps_root=1e-8))
    grad = jax.grad(safe)(theta)
    assert np.all(np.isfinite(np.asarray(grad)))
    assert_trees_all_close(grad, fd_gradient(safe, theta), rtol=1e-5, atol=1e-8)


def test_inner_opt_sgd_equals_lr(x64):
    params, support, query = mlp_problem(seed=11)
    lr = 0.25
    for steps in (1, 4):
        assert_trees_all_close(
            metajax.adapt(mlp_mse, params, support, steps=steps, inner_opt=optax.sgd(lr)),
            metajax.adapt(mlp_mse, params, support, steps=steps, lr=lr),
            rtol=1e-12, atol=1e-14)
    assert_trees_all_close(
        jax.grad(meta_objective(mlp_mse, support, query, steps=2, inner_opt=optax.sgd(lr)))(
            params),
        jax.grad(meta_objective(mlp_mse, support, query, steps=2, lr=lr))(params),
        rtol=1e-12, atol=1e-14)


def test_momentum_inner_opt_differs_from_plain_sgd(x64):
    params, support, _ = mlp_problem(seed=12)
    plain = metajax.adapt(mlp_mse, params, support, steps=3, lr=0.1)
    momentum = metajax.adapt(mlp_mse, params, support, steps=3,
                             inner_opt=optax.sgd(0.1, momentum=0.9))
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
               zip(jax.tree.leaves(plain), jax.tree.leaves(momentum), strict=True))
    assert diff > 1e-4


# ---------------------------------------------------------------------------------------------
# remat / unroll / jit give identical results
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [3, 12])
def test_remat_and_unroll_variants_match_closed_form(x64, steps):
    # Short loops default to straight-line code, loops longer than MAX_UNROLLED_STEPS (10) to
    # lax.scan; every variant must give the same adapted params and meta-gradient.
    theta, (xs, ys), (xq, yq) = linear_problem(seed=14)
    lr = 0.05
    theta_k, m = closed_form_adapt(theta, xs, ys, lr, steps)
    a_q, b_q = quadratic_terms(xq, yq)
    expected_grad = np.linalg.matrix_power(m, steps).T @ (a_q @ theta_k - b_q)
    support, query = (jnp.asarray(xs), jnp.asarray(ys)), (jnp.asarray(xq), jnp.asarray(yq))
    other_path = dict(unroll=1) if steps <= metajax_adapt.MAX_UNROLLED_STEPS else dict(
        unroll=True)
    variants = [dict(), other_path, dict(remat=True), dict(remat=True, **other_path),
                dict(unroll=2)]
    for extra in variants:
        adapted = metajax.adapt(linear_mse, jnp.asarray(theta), support, steps=steps, lr=lr,
                                **extra)
        np.testing.assert_allclose(np.asarray(adapted), theta_k, rtol=1e-11, atol=1e-12,
                                   err_msg=str(extra))
        g = jax.grad(meta_objective(linear_mse, support, query, steps=steps, lr=lr, **extra))(
            jnp.asarray(theta))
        np.testing.assert_allclose(np.asarray(g), expected_grad, rtol=1e-9, atol=1e-12,
                                   err_msg=str(extra))


def test_remat_mlp_meta_gradient_equals_default(x64):
    params, support, query = mlp_problem(seed=13)
    g = jax.grad(meta_objective(mlp_mse, support, query, steps=2, lr=0.1))(params)
    g_remat = jax.grad(meta_objective(mlp_mse, support, query, steps=2, lr=0.1, remat=True))(
        params)
    assert_trees_all_close(g_remat, g, rtol=1e-12, atol=1e-13)


def test_jit_equals_no_jit(x64):
    params, support, query = mlp_problem(seed=15)

    def f(p):  # query loss, with the adapted params as aux
        adapted = metajax.adapt(mlp_mse, p, support, steps=2, lr=0.1)
        return mlp_mse(adapted, query), adapted

    eager = jax.grad(f, has_aux=True)(params)
    jitted = jax.jit(jax.grad(f, has_aux=True))(params)
    assert_trees_all_close(jitted, eager, rtol=1e-12, atol=1e-13)


def test_has_aux_adapt_ignores_aux_and_matches_plain(x64):
    params, support, _ = mlp_problem(seed=16)
    with_aux = lambda p, b: (mlp_mse(p, b), {"n": jnp.asarray(b[0].shape[0])})  # noqa: E731
    assert_trees_all_close(
        metajax.adapt(with_aux, params, support, steps=2, lr=0.1, has_aux=True),
        metajax.adapt(mlp_mse, params, support, steps=2, lr=0.1),
        rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------------------------


def _tiny():
    return jnp.zeros(2), (jnp.ones((3, 2)), jnp.ones(3))


@pytest.mark.parametrize("steps", [0, -1, 1.5, True, "2"])
def test_bad_steps(steps):
    theta, support = _tiny()
    with pytest.raises(ValueError, match="`steps`"):
        metajax.adapt(linear_mse, theta, support, steps=steps, lr=0.1)


def test_non_scalar_loss():
    theta, support = _tiny()
    per_example = lambda t, b: (b[0] @ t - b[1]) ** 2  # noqa: E731
    with pytest.raises(ValueError, match="scalar"):
        metajax.adapt(per_example, theta, support, steps=1, lr=0.1)


def test_lr_and_inner_opt_both_given():
    theta, support = _tiny()
    with pytest.raises(ValueError, match="not both"):
        metajax.adapt(linear_mse, theta, support, steps=1, lr=0.1, inner_opt=optax.sgd(0.1))


def test_missing_lr():
    theta, support = _tiny()
    with pytest.raises(ValueError, match="`lr` is required"):
        metajax.adapt(linear_mse, theta, support, steps=1)


def test_lr_pytree_wrong_structure():
    params = {"a": jnp.zeros(2), "b": jnp.zeros(())}
    loss = lambda p, batch: jnp.sum(p["a"] ** 2) + p["b"] ** 2  # noqa: E731
    with pytest.raises(ValueError, match="`lr`"):
        metajax.adapt(loss, params, None, steps=1, lr={"a": 0.1})
    with pytest.raises(ValueError, match="`lr`"):
        metajax.adapt(loss, params, None, steps=1, lr=[0.1, 0.1])
    with pytest.raises(ValueError, match="`lr`"):
        metajax.adapt(loss, params, None, steps=1, lr=jnp.full(2, 0.1))


def test_lr_pytree_wrong_leaf_shape():
    params = {"a": jnp.zeros(2), "b": jnp.zeros(())}
    loss = lambda p, batch: jnp.sum(p["a"] ** 2) + p["b"] ** 2  # noqa: E731
    with pytest.raises(ValueError, match="per-parameter `lr`"):
        metajax.adapt(loss, params, None, steps=1, lr={"a": jnp.ones(3), "b": 0.1})


def test_has_aux_mismatch():
    theta, support = _tiny()
    with_aux = lambda t, b: (linear_mse(t, b), {})  # noqa: E731
    with pytest.raises(TypeError, match="has_aux=True"):
        metajax.adapt(with_aux, theta, support, steps=1, lr=0.1)
    with pytest.raises(TypeError, match="has_aux=True"):
        metajax.adapt(linear_mse, theta, support, steps=1, lr=0.1, has_aux=True)


def test_default_dtype_is_float32_outside_the_x64_fixture():
    # Guards against the float64 fixture leaking into other tests.
    assert jnp.ones(1).dtype == jnp.float32
