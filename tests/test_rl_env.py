"""Environments of metajax.rl: steps equal hand-written NumPy versions; bad input is named."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import rl


def _numpy_point_episode(goal, actions):
    """rllab's PointEnvRandGoal under ``normalize``: the reference the JAX version must match."""
    state, out = np.zeros(2), []
    for a in actions:
        state = state + np.clip(0.1 * a, -0.1, 0.1)
        x, y = state - goal
        out.append((state.copy(), -(x ** 2 + y ** 2) ** 0.5, abs(x) < 0.01 and abs(y) < 0.01))
    return out


def test_point_navigation_steps_equal_numpy():
    env = rl.point_navigation()
    rng = np.random.default_rng(0)
    goal, actions = rng.uniform(-0.5, 0.5, 2), rng.normal(size=(30, 2)) * 1.5
    _, pos = env.reset(jax.random.PRNGKey(0), jnp.asarray(goal))
    for a, (ref_pos, ref_r, ref_done) in zip(actions, _numpy_point_episode(goal, actions),
                                             strict=True):
        obs, pos, r, done = env.step(jax.random.PRNGKey(1), pos, jnp.asarray(a, jnp.float32),
                                     jnp.asarray(goal, jnp.float32))
        np.testing.assert_allclose(obs, ref_pos, atol=1e-6)
        assert abs(float(r) - ref_r) < 1e-5 and bool(done) == ref_done


def test_point_navigation_goals_and_oracle_observation():
    goals = rl.point_navigation().sample_tasks(jax.random.PRNGKey(0), 2000)
    assert goals.shape == (2000, 2) and float(jnp.abs(goals).max()) <= 0.5
    assert abs(float(goals.mean())) < 0.02 and abs(float(goals.var()) - 1 / 12) < 0.01
    oracle = rl.point_navigation(oracle=True)
    obs, _ = oracle.reset(jax.random.PRNGKey(0), jnp.array([0.2, -0.1]))
    np.testing.assert_allclose(obs, [0.0, 0.0, 0.2, -0.1])


def test_bandit_pays_each_arm_with_its_probability():
    env = rl.bernoulli_bandit(3, 10)
    p = jnp.array([0.1, 0.5, 0.9])
    _, t = env.reset(jax.random.PRNGKey(0), p)
    pulls = jax.vmap(lambda k, a: env.step(k, t, a, p)[2], in_axes=(0, None))
    for arm in range(3):
        r = pulls(jax.random.split(jax.random.PRNGKey(arm), 20000), arm)
        se = np.sqrt(p[arm] * (1 - p[arm]) / 20000)
        assert abs(float(r.mean()) - float(p[arm])) < 5 * se


def test_tabular_mdp_expected_return_matches_monte_carlo():
    rng = np.random.default_rng(1)
    transitions = rng.dirichlet(np.ones(3), size=(3, 2))
    rewards, initial = rng.uniform(size=(3, 2)), np.array([0.5, 0.5, 0.0])
    env = rl.tabular_mdp(transitions, rewards, initial, horizon=4)
    pi = rl.categorical_mlp_policy(3, 2, hidden=())
    params = pi.init(jax.random.PRNGKey(0))
    probs = jax.nn.softmax(params[0]["w"] + params[0]["b"], axis=-1)  # one-hot observations
    exact = float(rl.expected_return(probs, transitions, rewards, initial, horizon=4))
    task = jax.tree.map(lambda x: x[0], env.sample_tasks(jax.random.PRNGKey(0), 1))
    traj = jax.jit(lambda k: rl.rollout(env, pi, params, k, task, num_episodes=40000))(
        jax.random.PRNGKey(2))
    returns = np.asarray(rl.episode_returns(traj))
    assert abs(returns.mean() - exact) < 5 * returns.std() / np.sqrt(len(returns))


@pytest.mark.parametrize("make, match", [
    (lambda: rl.bernoulli_bandit(1, 10), "num_arms"),
    (lambda: rl.bernoulli_bandit(5, 0), "num_pulls"),
    (lambda: rl.with_horizon(rl.point_navigation(), 0), "horizon"),
    (lambda: rl.tabular_mdp(np.ones((2, 2, 3)), np.ones((2, 2)), np.ones(2), horizon=2),
     "transitions"),
    (lambda: rl.check_environment("env"), "Environment"),
])
def test_bad_environments_are_named(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_actions_of_the_wrong_shape_are_named():
    env = rl.point_navigation()
    _, pos = env.reset(jax.random.PRNGKey(0), jnp.zeros(2))
    with pytest.raises(ValueError, match=r"`action`: expected shape \(2,\)"):
        env.step(jax.random.PRNGKey(0), pos, jnp.zeros(3), jnp.zeros(2))
    bandit = rl.bernoulli_bandit(4, 5)
    with pytest.raises(ValueError, match=r"`action`: expected shape \(\)"):
        bandit.step(jax.random.PRNGKey(0), 0, jnp.zeros(2, jnp.int32), jnp.zeros(4))
