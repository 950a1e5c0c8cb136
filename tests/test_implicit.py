"""custom_root (implicit differentiation of roots) and the pytree conjugate-gradient solver."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import metajax


def _spd(n, seed):
    m = np.random.default_rng(seed).normal(size=(n, n))
    return m @ m.T + n * np.eye(n)


def _pytree_matvec(matrix, like):
    """``v -> matrix @ v`` on the flattened pytree ``v`` (structure of ``like``)."""
    _, unravel = ravel_pytree(like)
    return lambda v: unravel(jnp.asarray(matrix) @ ravel_pytree(v)[0])


def test_cg_solves_pytree_spd_system_against_numpy(x64):
    a = _spd(7, 0)
    b = {"u": jnp.arange(3.0) - 1.0, "m": jnp.array([[0.5, -2.0], [1.5, 3.0]])}
    x = metajax.conjugate_gradient(_pytree_matvec(a, b), b, tol=1e-12)
    assert jax.tree.structure(x) == jax.tree.structure(b) and x["m"].dtype == jnp.float64
    np.testing.assert_allclose(ravel_pytree(x)[0], np.linalg.solve(a, ravel_pytree(b)[0]),
                               rtol=1e-10, atol=1e-12)


def test_cg_damping_warm_start_and_iteration_budget(x64):
    a = _spd(5, 1)
    b = jnp.linspace(-1.0, 2.0, 5)
    matvec = lambda v: jnp.asarray(a) @ v  # noqa: E731
    damped = metajax.conjugate_gradient(matvec, b, damping=2.5, tol=1e-12)
    np.testing.assert_allclose(damped, np.linalg.solve(a + 2.5 * np.eye(5), b), rtol=1e-10)
    # Warm-started at the solution, nothing is left to do.
    exact = np.linalg.solve(a, b)
    np.testing.assert_allclose(metajax.conjugate_gradient(matvec, b, x0=jnp.asarray(exact)),
                               exact, rtol=1e-12)
    # One iteration from zero is one exact line search along b (steepest descent), not the
    # solution: maxiter bounds the work; maxiter = n reaches the solution (exact arithmetic).
    one = metajax.conjugate_gradient(matvec, b, maxiter=1, tol=0.0)
    np.testing.assert_allclose(one, (b @ b) / (b @ a @ b) * b, rtol=1e-12)
    assert np.linalg.norm(one - exact) > 1e-3
    np.testing.assert_allclose(metajax.conjugate_gradient(matvec, b, maxiter=5, tol=0.0), exact,
                               rtol=1e-8)


@pytest.mark.parametrize("kwargs, name", [({"maxiter": 0}, "maxiter"), ({"tol": -1.0}, "tol"),
                                          ({"damping": -0.1}, "damping")])
def test_cg_bad_options_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        metajax.conjugate_gradient(lambda v: v, jnp.ones(2), **kwargs)


# Quadratic problem: x*(theta) = argmin_x 1/2 x^T A x - (B theta_w + theta_c)^T x, so
# x* = A^{-1} (B theta_w + theta_c) with A SPD. Theta is a pytree.


def _quadratic(seed=0):
    a = jnp.asarray(_spd(4, seed))
    bmat = jnp.asarray(np.random.default_rng(seed + 1).normal(size=(4, 3)))
    theta = {"w": jnp.array([0.3, -1.2, 2.0]), "c": jnp.array([1.0, 0.0, -0.5, 0.25])}
    grad_x = lambda x, t: a @ x - (bmat @ t["w"] + t["c"])  # noqa: E731
    return a, bmat, theta, grad_x


def test_custom_root_gradient_equals_analytic_gradient(x64):
    a, bmat, theta, grad_x = _quadratic()
    lr = 1.0 / float(jnp.linalg.eigvalsh(a).max())

    # A while_loop solver: not reverse-differentiable itself, so only the implicit rule works.
    @metajax.custom_root(grad_x, solve=functools.partial(metajax.conjugate_gradient, tol=1e-12))
    def solve(init, t):
        def body(carry):
            x, _ = carry
            return x - lr * grad_x(x, t), x
        cond = lambda c: jnp.max(jnp.abs(c[0] - c[1])) > 1e-14  # noqa: E731
        return jax.lax.while_loop(cond, body, (init, init + 1.0))[0]

    c = jnp.array([1.0, -2.0, 0.5, 3.0])
    objective = lambda t: c @ solve(jnp.zeros(4), t) + jnp.sum(solve(jnp.zeros(4), t) ** 2)  # noqa: E731
    grads = jax.grad(objective)(theta)

    x_star = np.linalg.solve(a, bmat @ theta["w"] + theta["c"])
    np.testing.assert_allclose(solve(jnp.zeros(4), theta), x_star, rtol=1e-10)
    upstream = np.linalg.solve(a, c + 2 * x_star)             # A^{-T} dObjective/dx*
    np.testing.assert_allclose(grads["w"], bmat.T @ upstream, rtol=1e-8)
    np.testing.assert_allclose(grads["c"], upstream, rtol=1e-8)
    # The root does not depend on where the search starts: zero gradient in `init`.
    g_init = jax.grad(lambda x0: jnp.sum(solve(x0, theta)))(jnp.ones(4))
    np.testing.assert_array_equal(g_init, np.zeros(4))


def test_custom_root_nonsymmetric_jacobian_with_aux_under_jit_and_vmap(x64):
    m = jnp.array([[3.0, 1.0], [-0.5, 2.0]])                  # F(x, t) = M x - t, not symmetric
    f = lambda x, t: m @ x - t  # noqa: E731
    dense = lambda matvec, b: jnp.linalg.solve(jax.jacfwd(matvec)(jnp.zeros_like(b)), b)  # noqa: E731

    @metajax.custom_root(f, solve=dense, symmetric=False, has_aux=True)
    def solve(init, t):
        return jnp.linalg.solve(jax.lax.stop_gradient(m), t), {"iterations": jnp.int32(1)}

    c = jnp.array([1.0, -1.0])
    grad_fn = jax.jit(jax.vmap(jax.grad(lambda t: c @ solve(jnp.zeros(2), t)[0])))
    grads = grad_fn(jnp.ones((3, 2)))
    expected = np.linalg.solve(np.asarray(m).T, np.asarray(c))   # d(c . M^{-1} t)/dt = M^{-T} c
    np.testing.assert_allclose(grads, np.broadcast_to(expected, (3, 2)), rtol=1e-12)
    assert not np.allclose(expected, np.linalg.solve(np.asarray(m), np.asarray(c)))


def test_custom_root_checks_optimality_fn_output():
    @metajax.custom_root(lambda x, t: (x - t, x))
    def solve(init, t):
        return t

    with pytest.raises(ValueError, match="structure of `x`"):
        jax.grad(solve, argnums=1)(0.0, 1.0)
