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


def _numpy_grid_step(pos, action, task, size):
    moves = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    nxt = np.clip(np.array(pos) + moves[action], 0, size - 1)
    if task.walls[nxt[0], nxt[1]]:
        nxt = np.array(pos)
    at_goal = bool(np.all(nxt == task.goal))
    reward = -0.01 + (1.0 if at_goal else 0.0) + (
        -0.5 if task.hazards[nxt[0], nxt[1]] and not at_goal else 0.0)
    return nxt, reward, at_goal


def test_gridworld_steps_equal_numpy_and_every_goal_is_reachable():
    env = rl.gridworld(size=5)
    tasks = env.sample_tasks(jax.random.PRNGKey(0), 64)
    rng = np.random.default_rng(0)
    for i in range(8):
        task = jax.tree.map(lambda x, i=i: x[i], tasks)
        np_task = jax.tree.map(np.asarray, task)
        _, pos = env.reset(jax.random.PRNGKey(0), task)
        ref = np.zeros(2, int)
        for a in rng.integers(0, 4, 40):
            obs, pos, r, done = env.step(jax.random.PRNGKey(0), pos, jnp.int32(a), task)
            ref, ref_r, ref_done = _numpy_grid_step(ref, int(a), np_task, 5)
            np.testing.assert_array_equal(pos, ref)
            assert abs(float(r) - ref_r) < 1e-6 and bool(done) == ref_done
            # the observed 3x3 window: the centre cell is never a wall (the agent stands there)
            assert float(obs[2:].reshape(9, 4)[4, 1]) == 0.0
            if ref_done:
                break
    # a breadth-first search in NumPy reaches every task's goal from the start
    for i in range(64):
        walls, goal = np.asarray(tasks.walls[i]), tuple(np.asarray(tasks.goal[i]))
        seen, frontier = {(0, 0)}, [(0, 0)]
        while frontier:
            r, c = frontier.pop()
            for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                n = (r + dr, c + dc)
                if 0 <= n[0] < 5 and 0 <= n[1] < 5 and not walls[n] and n not in seen:
                    seen.add(n)
                    frontier.append(n)
        assert goal in seen and goal != (0, 0) and not np.asarray(tasks.hazards[i])[goal]


def test_gridworld_bad_options_are_named():
    with pytest.raises(ValueError, match="size"):
        rl.gridworld(size=1)
    with pytest.raises(ValueError, match="wall_prob"):
        rl.gridworld(wall_prob=1.0)
