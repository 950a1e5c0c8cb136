"""Bandit baselines and the Bayes-optimal value: closed forms and their Monte Carlo estimates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import rl


def _mean_and_se(rule, k, n, tasks=20000, seed=0):
    probs = rl.bernoulli_bandit(k, n).sample_tasks(jax.random.PRNGKey(seed), tasks)
    totals = np.asarray(jax.jit(lambda p: rl.run_bandit_rule(
        rule, p, jax.random.PRNGKey(seed + 1), num_pulls=n))(probs))
    return totals.mean(), totals.std() / np.sqrt(tasks)


def test_bayes_optimal_value_by_hand():
    # two pulls of two arms: 1/2, then the winner again (2/3) or the other arm (1/2)
    assert rl.bayes_optimal_value(2, 2) == pytest.approx(0.5 + 0.5 * 2 / 3 + 0.5 * 0.5)
    assert rl.bayes_optimal_value(3, 1) == pytest.approx(0.5)
    assert rl.bayes_optimal_value(5, 10) < 10 * 5 / 6  # below always pulling the best arm


def test_greedy_is_bayes_optimal_for_two_pulls():
    mean, se = _mean_and_se(rl.greedy_rule(), 2, 2)
    assert abs(mean - rl.bayes_optimal_value(2, 2)) < 4 * se


@pytest.mark.slow
def test_no_rule_beats_the_bayes_optimal_value():
    best = rl.bayes_optimal_value(3, 6)
    for rule in (rl.greedy_rule(epsilon=0.1), rl.ucb1_rule(), rl.thompson_rule()):
        mean, se = _mean_and_se(rule, 3, 6, tasks=8000)
        assert mean < best + 4 * se


def test_random_rule_earns_half_a_pull():
    mean, se = _mean_and_se(rl.random_rule(), 4, 10, tasks=8000)
    assert abs(mean - 5.0) < 4 * se


def test_ucb1_pulls_every_arm_once_first():
    rule = rl.ucb1_rule()
    s, f = jnp.zeros(4), jnp.zeros(4)
    pulled = []
    for t in range(4):
        arm = int(rule(jax.random.PRNGKey(t), s, f, jnp.float32(t)))
        pulled.append(arm)
        f = f.at[arm].add(1.0)
    assert sorted(pulled) == [0, 1, 2, 3]


@pytest.mark.parametrize("make, match", [(lambda: rl.greedy_rule(epsilon=2.0), "epsilon"),
                                         (lambda: rl.ucb1_rule(c=-1.0), "`c`"),
                                         (lambda: rl.bayes_optimal_value(1, 3), "num_arms")])
def test_bad_options_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_pulls_sum_to_the_totals_and_random_pulls_have_the_expected_regret():
    probs = jax.random.uniform(jax.random.PRNGKey(0), (4000, 4))
    key, n = jax.random.PRNGKey(1), 12
    rewards, arms = rl.bandit_rule_pulls(rl.random_rule(), probs, key, num_pulls=n)
    np.testing.assert_array_equal(rewards.sum(-1),
                                  rl.run_bandit_rule(rl.random_rule(), probs, key, num_pulls=n))
    regret = np.asarray(rl.expected_regret(probs, arms))
    assert np.all(np.diff(regret, axis=1) >= -1e-6)  # cumulative: never decreases
    # a uniformly random arm loses max(p) - mean(p) per pull in expectation
    exact = n * (probs.max(-1) - probs.mean(-1))
    err = regret[:, -1] - np.asarray(exact)
    assert abs(err.mean()) < 4 * err.std() / np.sqrt(err.size)
    best = jnp.argmax(probs, -1)[:, None] * jnp.ones((1, n), jnp.int32)
    np.testing.assert_allclose(rl.expected_regret(probs, best), 0.0)
