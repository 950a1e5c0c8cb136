"""A finite MDP given by its tables: the exact expected return is a closed form."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from metajax._src.rl.env import Environment, check_action


def tabular_mdp(transitions, rewards, initial, *, horizon: int) -> Environment:
    """A finite MDP with one-hot observations; the task is ``(transitions, rewards)``.

    ``transitions[s, a]`` is the distribution of the next state, ``rewards[s, a]`` the
    expected reward (paid exactly), ``initial`` the distribution of the first state. The
    environment's tasks are the given MDP (``sample_tasks`` repeats it): pass tasks of your
    own to :func:`metajax.rl.rollout` for a family. :func:`expected_return` is its exact
    expected return under a tabular policy, what the policy-gradient tests compare with.

    Args:
        transitions: ``[S, A, S]`` probabilities.
        rewards: ``[S, A]``.
        initial: ``[S]`` probabilities.
        horizon: steps per episode.

    Examples:
        >>> import numpy as np
        >>> env = tabular_mdp(np.full((2, 2, 2), 0.5), np.eye(2), np.array([1.0, 0.0]),
        ...                   horizon=3)
        >>> env.observation_shape, env.num_actions
        ((2,), 2)
    """
    transitions, rewards, initial = (np.asarray(x, np.float32) for x in
                                     (transitions, rewards, initial))
    s, a = rewards.shape
    if transitions.shape != (s, a, s) or initial.shape != (s,):
        raise ValueError(f"`transitions` and `initial`: expected shapes {(s, a, s)} and {(s,)} "
                         f"for rewards of shape {(s, a)}; got {transitions.shape} and "
                         f"{initial.shape}.")
    if a < 2:
        raise ValueError(f"`rewards`: expected at least 2 actions; got {a}.")

    def reset(key, task):
        state = jax.random.categorical(key, jnp.log(initial))
        return jax.nn.one_hot(state, s), state

    def step(key, state, action, task):
        check_action(action, ())
        p, r = task
        nxt = jax.random.categorical(key, jnp.log(p[state, action]))
        return jax.nn.one_hot(nxt, s), nxt, r[state, action], jnp.array(False)

    def sample_tasks(key, n):
        del key
        return (jnp.broadcast_to(transitions, (n, *transitions.shape)),
                jnp.broadcast_to(rewards, (n, *rewards.shape)))

    return Environment(reset=reset, step=step, sample_tasks=sample_tasks, horizon=horizon,
                       observation_shape=(s,), action_shape=(), num_actions=a)


def expected_return(probs, transitions, rewards, initial, *, horizon: int) -> jax.Array:
    """The exact expected undiscounted return of the tabular policy ``probs[s, a]``.

    Differentiable in ``probs`` (and the MDP): ``jax.grad`` of it is the exact policy gradient.
    """
    d = jnp.asarray(initial)
    total = 0.0
    for _ in range(horizon):
        total = total + jnp.sum(d[:, None] * probs * rewards)
        d = jnp.einsum("s,sa,sat->t", d, probs, transitions)
    return total
