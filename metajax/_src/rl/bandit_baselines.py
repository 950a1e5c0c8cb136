"""Classic bandit algorithms and the Bayes-optimal value: the baselines of a learned bandit
agent (RL^2) on :func:`metajax.rl.bernoulli_bandit`."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

# act(key, successes [k], failures [k], t) -> arm
BanditRule = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


def _argmax_random_ties(key, scores):
    noise = jax.random.uniform(key, scores.shape) * 1e-6
    return jnp.argmax(scores + noise)


def random_rule() -> BanditRule:
    """Pulls an arm uniformly at random."""
    return lambda key, s, f, t: jax.random.randint(key, (), 0, s.shape[0])


def greedy_rule(*, epsilon: float = 0.0) -> BanditRule:
    """The arm of highest posterior mean ``(s + 1) / (s + f + 2)`` (uniform prior); with
    ``epsilon``, a random arm with probability ``epsilon`` (epsilon-greedy)."""
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"`epsilon`: expected a number in [0, 1]; got {epsilon!r}.")

    def act(key, s, f, t):
        k1, k2, k3 = jax.random.split(key, 3)
        best = _argmax_random_ties(k1, (s + 1) / (s + f + 2))
        explore = jax.random.uniform(k2) < epsilon
        return jnp.where(explore, jax.random.randint(k3, (), 0, s.shape[0]), best)

    return act


def ucb1_rule(*, c: float = 1.0) -> BanditRule:
    """UCB1 (Auer et al., 2002): each arm once, then the mean plus ``c sqrt(2 ln t / n_a)``
    (``c = 1``: UCB1 as published; tune ``c`` for short horizons)."""
    if not c >= 0:
        raise ValueError(f"`c`: expected a number >= 0; got {c!r}.")

    def act(key, s, f, t):
        n = s + f
        bonus = c * jnp.sqrt(2 * jnp.log(jnp.maximum(t, 1)) / jnp.maximum(n, 1))
        scores = jnp.where(n == 0, jnp.inf, s / jnp.maximum(n, 1) + bonus)
        return _argmax_random_ties(key, jnp.where(jnp.isinf(scores), 1e9, scores))

    return act


def thompson_rule() -> BanditRule:
    """Thompson sampling with a uniform ``Beta(1, 1)`` prior per arm."""
    return lambda key, s, f, t: jnp.argmax(jax.random.beta(key, s + 1.0, f + 1.0))


def run_bandit_rule(rule: BanditRule, probs: jax.Array, key: jax.Array, *, num_pulls: int
                    ) -> jax.Array:
    """Total reward of ``rule`` over ``num_pulls`` pulls of each task of ``probs`` ``[n, k]``
    (one ``lax.scan`` over pulls, one ``vmap`` over tasks)."""
    return bandit_rule_pulls(rule, probs, key, num_pulls=num_pulls)[0].sum(-1)


def bandit_rule_pulls(rule: BanditRule, probs: jax.Array, key: jax.Array, *, num_pulls: int
                      ) -> tuple[jax.Array, jax.Array]:
    """The rewards and the arms ``[n, num_pulls]`` of ``rule`` on each task of ``probs``
    (the pulls that :func:`run_bandit_rule` sums)."""

    def one(p, key):
        def body(carry, k):
            s, f, t = carry
            k_act, k_pay = jax.random.split(k)
            arm = rule(k_act, s, f, t)
            r = jax.random.bernoulli(k_pay, p[arm]).astype(jnp.float32)
            hot = jax.nn.one_hot(arm, p.shape[0])
            return (s + r * hot, f + (1 - r) * hot, t + 1), (r, arm)

        zeros = jnp.zeros(p.shape[0])
        _, out = jax.lax.scan(body, (zeros, zeros, jnp.float32(0)),
                              jax.random.split(key, num_pulls))
        return out

    return jax.vmap(one)(probs, jax.random.split(key, probs.shape[0]))


def expected_regret(probs: jax.Array, arms: jax.Array) -> jax.Array:
    """Cumulative expected regret ``sum_t max(p) - p[arm_t]`` after each pull: ``[n, T]`` from
    ``probs`` ``[n, k]`` and the pulled ``arms`` ``[n, T]`` (the pseudo-regret: no reward
    noise).

    Examples:
        >>> import jax.numpy as jnp
        >>> regret = expected_regret(jnp.array([[0.2, 0.9]]), jnp.array([[0, 1, 0]]))
        >>> [round(r, 4) for r in regret[0].tolist()]
        [0.7, 0.7, 1.4]
    """
    best = jnp.max(probs, axis=-1, keepdims=True)
    return jnp.cumsum(best - jnp.take_along_axis(probs, arms, axis=-1), axis=-1)


def bayes_optimal_value(num_arms: int, num_pulls: int) -> float:
    """The Bayes-optimal expected total reward of ``num_pulls`` pulls of ``num_arms`` arms with
    success probabilities drawn from ``U[0, 1]``, by dynamic programming over posteriors.

    The state is the multiset of the arms' ``(successes, failures)``; the value is exact (no
    sampling). Feasible for small problems (``k = 5, n = 10``: about 10^5 states).

    Examples:
        >>> round(bayes_optimal_value(2, 1), 6)   # one pull: any arm pays 1/2
        0.5
    """
    if num_arms < 2 or num_pulls < 1:
        raise ValueError(f"`num_arms` >= 2 and `num_pulls` >= 1 expected; got {num_arms}, "
                         f"{num_pulls}.")

    @functools.cache
    def value(state: tuple, left: int) -> float:
        if left == 0:
            return 0.0
        best = 0.0
        for i, (s, f) in enumerate(state):
            if i and state[i - 1] == (s, f):
                continue  # an identical arm: the same value
            p = (s + 1) / (s + f + 2)
            win = tuple(sorted(state[:i] + ((s + 1, f),) + state[i + 1:]))
            lose = tuple(sorted(state[:i] + ((s, f + 1),) + state[i + 1:]))
            v = p * (1 + value(win, left - 1)) + (1 - p) * value(lose, left - 1)
            best = max(best, v)
        return best

    return float(value(tuple([(0, 0)] * num_arms), num_pulls))

