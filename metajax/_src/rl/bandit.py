"""k-armed Bernoulli bandits (Duan et al., 2016): a trial is ``num_pulls`` pulls of one task."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from metajax._src.rl.env import Environment, check_action, check_int


def bernoulli_bandit(num_arms: int, num_pulls: int) -> Environment:
    """Each task is a vector of ``num_arms`` success probabilities drawn from ``U[0, 1]``.

    One episode is a trial of ``num_pulls`` pulls; pulling arm ``a`` pays 1 with the task's
    probability ``p[a]`` and 0 otherwise. The observation is a constant (the agent learns only
    from its rewards: give a recurrent policy its previous action and reward, as
    :func:`metajax.rl.rl2` does).

    Args:
        num_arms: ``k >= 2``.
        num_pulls: the trial length ``n >= 1`` (the horizon).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> env = bernoulli_bandit(5, 10)
        >>> p = env.sample_tasks(jax.random.PRNGKey(0), 3)
        >>> p.shape, env.horizon
        ((3, 5), 10)
    """
    num_arms = check_int("num_arms", num_arms, low=2, note=" (k arms)")
    num_pulls = check_int("num_pulls", num_pulls, note=" (the horizon)")

    def reset(key, p):
        del key, p
        return jnp.zeros(1), jnp.zeros([], jnp.int32)

    def step(key, t, action, p):
        check_action(action, ())
        reward = jax.random.bernoulli(key, p[action]).astype(jnp.float32)
        return jnp.zeros(1), t + 1, reward, jnp.array(False)

    def sample_tasks(key, n):
        return jax.random.uniform(key, (n, num_arms))

    return Environment(reset=reset, step=step, sample_tasks=sample_tasks, horizon=num_pulls,
                       observation_shape=(1,), action_shape=(), num_actions=num_arms)
