"""RL^2: the recurrent state carries across a trial's episodes; replay reproduces the sampled
log-probabilities; PPO training beats random play."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metajax import rl

MDP = rl.tabular_mdp(np.full((2, 2, 2), 0.5), np.array([[1.0, 0.0], [0.0, 1.0]]),
                     np.array([1.0, 0.0]), horizon=3)
PI = rl.gru_policy(2, 2, hidden=8)
PARAMS = PI.init(jax.random.PRNGKey(0))
TASK = jax.tree.map(lambda x: x[0], MDP.sample_tasks(jax.random.PRNGKey(0), 1))


def test_a_trial_carries_the_previous_step_into_the_next_episode():
    trial = rl.rollout_trial(MDP, PI, PARAMS, jax.random.PRNGKey(1), TASK, episodes_per_trial=2)
    assert trial.inputs.shape == (6, 2 + 2 + 2)
    done = trial.inputs[:, -1]
    np.testing.assert_array_equal(done, [0, 0, 0, 1, 0, 0])  # episode 2 starts with done
    first_of_second = trial.inputs[3]
    np.testing.assert_array_equal(first_of_second[2:4], jax.nn.one_hot(trial.actions[2], 2))
    assert float(first_of_second[4]) == float(trial.rewards[2])


def test_replay_reproduces_the_sampled_log_probabilities():
    trial = rl.rollout_trial(MDP, PI, PARAMS, jax.random.PRNGKey(2), TASK, episodes_per_trial=3)
    logits, values = rl.replay(PI, PARAMS, trial.inputs, trial.mask)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), trial.actions[:, None], 1)[:, 0]
    np.testing.assert_allclose(logp, trial.logp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(values, trial.values, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_ppo_trained_rl2_beats_random_play_on_bandits():
    env = rl.bernoulli_bandit(2, 10)
    pi = rl.gru_policy(1, 2, hidden=16)
    learner = rl.rl2(env, pi, optax.adam(1e-2), meta_batch=64, epochs=2, entropy_coef=0.0)
    state = learner.init(pi.init(jax.random.PRNGKey(0)))
    run = jax.jit(lambda s: jax.lax.scan(lambda s, k: learner.step(s, k), s,
                                         jax.random.split(jax.random.PRNGKey(1), 300)))
    state, _ = run(state)
    tasks = env.sample_tasks(jax.random.PRNGKey(9), 4000)
    totals = np.asarray(rl.trial_returns(env, pi, state.params, jax.random.PRNGKey(3), tasks))
    se = totals.std() / np.sqrt(len(totals))
    assert totals.mean() > 5.0 + 10 * se  # random play earns 5.0


def test_bad_rl2_input_is_named():
    with pytest.raises(ValueError, match="discrete actions"):
        rl.rollout_trial(rl.point_navigation(), PI, PARAMS, jax.random.PRNGKey(0),
                         jnp.zeros(2))
    with pytest.raises(ValueError, match="episodes_per_trial"):
        rl.rollout_trial(MDP, PI, PARAMS, jax.random.PRNGKey(0), TASK, episodes_per_trial=0)
    with pytest.raises(ValueError, match="meta_batch"):
        rl.rl2(MDP, PI, optax.adam(1e-3), meta_batch=0)
