"""Rollouts: vmapped tasks equal a Python loop; done-masking at early ends and the horizon."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import rl

ENV = rl.point_navigation(horizon=12)
PI = rl.gaussian_mlp_policy(2, 2, hidden=(8,))
PARAMS = PI.init(jax.random.PRNGKey(0))


def _fixed_action(action):
    """A deterministic policy that always takes ``action``."""
    return rl.Policy(init=lambda key: {}, dist=lambda p, obs: jnp.asarray(action, jnp.float32),
                     sample=lambda key, d: d, log_prob=lambda d, a: jnp.zeros([]),
                     kl=lambda a, b: jnp.zeros([]), entropy=lambda d: jnp.zeros([]))


def test_rollout_over_tasks_equals_a_python_loop():
    goals = ENV.sample_tasks(jax.random.PRNGKey(1), 3)
    keys = jax.random.split(jax.random.PRNGKey(2), 3)
    batched = rl.rollout_tasks(ENV, PI, PARAMS, keys, goals, num_episodes=4)
    for i in range(3):
        one = rl.rollout(ENV, PI, PARAMS, keys[i], goals[i], num_episodes=4)
        for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(batched), strict=True):
            np.testing.assert_allclose(a, b[i], rtol=1e-5, atol=1e-6)
    assert batched.obs.shape == (3, 4, 12, 2) and batched.mask.shape == (3, 4, 12)


def test_an_episode_that_ends_early_is_masked_and_frozen():
    goal = jnp.array([0.2, 0.0])  # two steps of +0.1 reach it
    traj = rl.rollout(ENV, _fixed_action([1.0, 0.0]), {}, jax.random.PRNGKey(0), goal,
                      num_episodes=2)
    np.testing.assert_array_equal(traj.mask[0], [1, 1] + [0] * 10)
    np.testing.assert_allclose(traj.rewards[0, :2], [-0.1, 0.0], atol=1e-6)
    assert float(jnp.abs(traj.rewards[0, 2:]).max()) == 0.0
    np.testing.assert_allclose(traj.obs[0, 2:], np.tile([0.2, 0.0], (10, 1)), atol=1e-6)
    np.testing.assert_allclose(rl.episode_returns(traj), [-0.1, -0.1], atol=1e-6)


def test_an_episode_that_never_ends_runs_to_the_horizon():
    traj = rl.rollout(ENV, _fixed_action([0.0, 0.0]), {}, jax.random.PRNGKey(0),
                      jnp.array([0.3, 0.4]), num_episodes=1)
    np.testing.assert_array_equal(traj.mask, np.ones((1, 12)))
    np.testing.assert_allclose(rl.episode_returns(traj), [-0.5 * 12], rtol=1e-6)


def test_rollouts_are_jittable_and_agree():
    goal = jnp.array([0.1, 0.1])
    eager = rl.rollout(ENV, PI, PARAMS, jax.random.PRNGKey(3), goal, num_episodes=2)
    jitted = jax.jit(lambda p: rl.rollout(ENV, PI, p, jax.random.PRNGKey(3), goal,
                                          num_episodes=2))(PARAMS)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bad_rollout_input_is_named():
    goals = ENV.sample_tasks(jax.random.PRNGKey(1), 3)
    with pytest.raises(ValueError, match="`tasks`: expected a leading task axis of 2"):
        rl.rollout_tasks(ENV, PI, PARAMS, jax.random.split(jax.random.PRNGKey(0), 2), goals,
                         num_episodes=2)
    with pytest.raises(ValueError, match="`params`: with params_per_task"):
        rl.rollout_tasks(ENV, PI, PARAMS, jax.random.split(jax.random.PRNGKey(0), 3), goals,
                         num_episodes=2, params_per_task=True)
    with pytest.raises(ValueError, match="`num_episodes`"):
        rl.rollout(ENV, PI, PARAMS, jax.random.PRNGKey(0), goals[0], num_episodes=0)
