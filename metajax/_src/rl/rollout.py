"""Rollouts under ``lax.scan``: episodes of one task, then one explicit ``vmap`` over tasks."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metajax._src.rl.env import Environment, check_environment, check_int
from metajax._src.rl.policy import Policy

PyTree = Any


class Trajectory(NamedTuple):
    """Fixed-length episodes; leaves are ``[episodes, horizon, ...]`` (``[tasks, ...]`` first
    when batched over tasks).

    Attributes:
        obs: the observation each action was taken at.
        actions: the actions.
        rewards: the rewards (0 where ``mask`` is 0).
        mask: 1.0 for steps of the episode, 0.0 after it ended (the step that ends it counts).
    """

    obs: jax.Array
    actions: jax.Array
    rewards: jax.Array
    mask: jax.Array


def episode_returns(traj: Trajectory) -> jax.Array:
    """The undiscounted return of each episode: ``[..., episodes]``."""
    return jnp.sum(traj.rewards * traj.mask, axis=-1)


def rollout(env: Environment, policy: Policy, params: PyTree, key: jax.Array, task: PyTree, *,
            num_episodes: int) -> Trajectory:
    """Runs ``num_episodes`` episodes of ``env.horizon`` steps of one task in parallel.

    Steps after an episode's ``done`` are masked (``mask`` 0, reward 0) and its state is
    frozen, so every episode has the same length.

    Args:
        env: the environment.
        policy: the policy; actions are ``policy.sample`` of ``policy.dist(params, obs)``.
        params: the policy's parameters.
        key: PRNG key of the episodes.
        task: one task (a pytree, e.g. a row of ``env.sample_tasks``).
        num_episodes: episodes to run (an int >= 1).

    Returns:
        A :class:`Trajectory` with leaves ``[num_episodes, env.horizon, ...]``.

    Examples:
        >>> import jax
        >>> from metajax import rl
        >>> env = rl.point_navigation(horizon=5)
        >>> pi = rl.gaussian_mlp_policy(2, 2, hidden=(8,))
        >>> goal = env.sample_tasks(jax.random.PRNGKey(0), 1)[0]
        >>> traj = rl.rollout(env, pi, pi.init(jax.random.PRNGKey(1)), jax.random.PRNGKey(2),
        ...                   goal, num_episodes=3)
        >>> traj.rewards.shape
        (3, 5)
    """
    check_environment(env)
    n = check_int("num_episodes", num_episodes)

    def episode(key):
        k_reset, k_steps = jax.random.split(key)
        obs, state = env.reset(k_reset, task)

        def body(carry, k):
            obs, state, alive = carry
            k_act, k_env = jax.random.split(k)
            action = policy.sample(k_act, policy.dist(params, obs))
            next_obs, next_state, reward, done = env.step(k_env, state, action, task)
            keep = lambda new, old: jax.tree.map(  # noqa: E731
                lambda a, b: jnp.where(alive, a, b), new, old)
            out = (obs, action, jnp.where(alive, reward, 0.0), alive.astype(jnp.float32))
            carry = (keep(next_obs, obs), keep(next_state, state), alive & ~done)
            return carry, out

        _, (o, a, r, m) = jax.lax.scan(body, (obs, state, jnp.array(True)),
                                       jax.random.split(k_steps, env.horizon))
        return Trajectory(o, a, r.astype(jnp.float32), m)

    return jax.vmap(episode)(jax.random.split(key, n))


def rollout_tasks(env: Environment, policy: Policy, params: PyTree, keys: jax.Array,
                  tasks: PyTree, *, num_episodes: int, params_per_task: bool = False
                  ) -> Trajectory:
    """:func:`rollout` of every task of ``tasks`` with its own key of ``keys`` (one ``vmap``).

    Args:
        keys: ``[n]`` PRNG keys, one per task.
        tasks: a task batch whose leaves have a leading axis of ``n``.
        params_per_task: ``params`` carries a leading task axis (e.g. adapted parameters).

    Raises:
        ValueError: if ``keys``, ``tasks`` (and per-task ``params``) disagree on ``n``.
    """
    n = np.shape(keys)[0] if np.ndim(keys) else None
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(tasks)}
    if n is None or sizes != {n}:
        raise ValueError(f"`tasks`: expected a leading task axis of {n} (the number of `keys`) "
                         f"on every leaf; got {sorted(map(str, sizes))}.")
    if params_per_task:
        psizes = {np.shape(leaf)[0] if np.ndim(leaf) else None
                  for leaf in jax.tree.leaves(params)}
        if psizes != {n}:
            raise ValueError(f"`params`: with params_per_task, expected a leading task axis of "
                             f"{n}; got {sorted(map(str, psizes))}.")
    one = lambda p, k, t: rollout(env, policy, p, k, t, num_episodes=num_episodes)  # noqa: E731
    return jax.vmap(one, in_axes=(0 if params_per_task else None, 0, 0))(params, keys, tasks)
