"""Policy gradients: the estimator's mean equals the exact gradient of a closed-form return."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from metajax import rl

RNG = np.random.default_rng(0)
TRANSITIONS = RNG.dirichlet(np.ones(2), size=(2, 2))
REWARDS, INITIAL, HORIZON = RNG.uniform(size=(2, 2)), np.array([0.7, 0.3]), 3
ENV = rl.tabular_mdp(TRANSITIONS, REWARDS, INITIAL, horizon=HORIZON)
PI = rl.categorical_mlp_policy(2, 2, hidden=())  # one-hot observations: a tabular policy
PARAMS = [{"w": jnp.array([[0.4, -0.3], [-0.2, 0.5]]), "b": jnp.array([0.1, 0.0])}]
TASK = jax.tree.map(lambda x: x[0], ENV.sample_tasks(jax.random.PRNGKey(0), 1))


def _exact_return(params):
    probs = jax.nn.softmax(params[0]["w"] + params[0]["b"], axis=-1)
    return rl.expected_return(probs, TRANSITIONS, REWARDS, INITIAL, horizon=HORIZON)


def _estimates(advantages, n_batches=3000, episodes=8):
    def one(key):
        traj = rl.rollout(ENV, PI, PARAMS, key, TASK, num_episodes=episodes)
        g = jax.grad(rl.pg_surrogate, argnums=1)(PI, PARAMS, traj, advantages(traj))
        return ravel_pytree(g)[0]
    return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(1),
                                                               n_batches)))


def test_reinforce_is_unbiased_for_the_exact_policy_gradient():
    exact = np.asarray(ravel_pytree(jax.grad(_exact_return)(PARAMS))[0])
    g = _estimates(rl.reward_to_go_advantages()) * HORIZON  # the surrogate is per step
    mean, se = g.mean(0), g.std(0) / np.sqrt(len(g))
    assert np.all(np.abs(mean - exact) < 4.5 * se + 1e-6), (mean, exact, se)
    assert np.linalg.norm(exact) > 20 * se.max()  # the test can tell a wrong gradient


@pytest.mark.slow
def test_the_linear_baseline_lowers_the_variance():
    plain = _estimates(rl.reward_to_go_advantages(discount=1.0), n_batches=600)
    based = _estimates(rl.linear_baseline_advantages(discount=1.0, normalize=False),
                       n_batches=600)
    assert based.var(0).sum() < plain.var(0).sum()


def test_discounted_returns_and_vpg_step():
    r = jnp.array([[1.0, 2.0, 3.0]])
    m = jnp.array([[1.0, 1.0, 0.0]])
    np.testing.assert_allclose(rl.discounted_returns(r, m, 0.5), [[2.0, 2.0, 0.0]])
    traj = rl.rollout(ENV, PI, PARAMS, jax.random.PRNGKey(3), TASK, num_episodes=4)
    adv = rl.reward_to_go_advantages()(traj)
    new = rl.vpg_update(PI, PARAMS, traj, adv, lr=0.1)
    g = jax.grad(rl.pg_surrogate, argnums=1)(PI, PARAMS, traj, adv)
    for a, b, d in zip(jax.tree.leaves(new), jax.tree.leaves(PARAMS), jax.tree.leaves(g),
                       strict=True):
        np.testing.assert_allclose(a, b + 0.1 * d, rtol=1e-6)


def test_spd_solve_equals_numpy_and_is_nan_where_not_positive_definite():
    from metajax._src.rl.advantages import spd_solve

    rng = np.random.default_rng(0)
    m = rng.normal(size=(12, 30))
    a, b = m @ m.T + 1e-2 * np.eye(12), rng.normal(size=12)
    x = jax.jit(jax.vmap(spd_solve))(jnp.asarray(np.stack([a, 2 * a]), jnp.float32),
                                     jnp.asarray(np.stack([b, b]), jnp.float32))
    np.testing.assert_allclose(x[0], np.linalg.solve(a, b), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(x[1], np.linalg.solve(2 * a, b), rtol=1e-3, atol=1e-4)
    assert np.all(np.isnan(spd_solve(jnp.diag(jnp.array([1.0, -1.0])), jnp.ones(2))))
