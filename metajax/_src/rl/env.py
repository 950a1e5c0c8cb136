"""The environment interface of the meta-RL family: pure functions with explicit tasks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

PyTree = Any


class Environment(NamedTuple):
    """A family of tasks (MDPs) as pure functions; the task is an explicit argument.

    ``reset`` and ``step`` see one task; batch them with ``jax.vmap`` (tasks, episodes).
    Episodes have the fixed length ``horizon``; an episode that ends early (``done``) is
    masked by the rollout from then on, so every trajectory has one shape.

    Attributes:
        reset: ``reset(key, task) -> (obs, state)``.
        step: ``step(key, state, action, task) -> (obs, state, reward, done)``; ``reward`` a
            float scalar, ``done`` a bool scalar.
        sample_tasks: ``sample_tasks(key, n) -> tasks``: a pytree whose leaves have a leading
            axis of ``n``.
        horizon: steps per episode (an int >= 1).
        observation_shape: the shape of one observation.
        action_shape: the shape of one action (``()`` for a discrete action).
        num_actions: the number of discrete actions, or ``None`` for continuous actions.

    Examples:
        A user's own environment: a 1-D point that should reach its task's target.

        >>> import jax, jax.numpy as jnp
        >>> env = Environment(
        ...     reset=lambda key, task: (jnp.zeros(1), jnp.zeros(1)),
        ...     step=lambda key, s, a, task: (s + a, s + a, -jnp.abs(s + a - task)[0],
        ...                                   jnp.array(False)),
        ...     sample_tasks=lambda key, n: jax.random.uniform(key, (n, 1)),
        ...     horizon=10, observation_shape=(1,), action_shape=(1,), num_actions=None)
        >>> check_environment(env).horizon
        10
    """

    reset: Callable[[jax.Array, PyTree], tuple[jax.Array, PyTree]]
    step: Callable[..., tuple[jax.Array, PyTree, jax.Array, jax.Array]]
    sample_tasks: Callable[[jax.Array, int], PyTree]
    horizon: int
    observation_shape: tuple[int, ...]
    action_shape: tuple[int, ...]
    num_actions: int | None = None


def check_environment(env: Environment, *, name: str = "env") -> Environment:
    """Returns ``env`` after checking its static fields; raises naming what is wrong."""
    if not isinstance(env, Environment):
        raise TypeError(f"`{name}` must be a metajax.rl.Environment; got {type(env).__name__}.")
    for field in ("reset", "step", "sample_tasks"):
        if not callable(getattr(env, field)):
            raise TypeError(f"`{name}.{field}` must be callable.")
    if not isinstance(env.horizon, int | np.integer) or env.horizon < 1:
        raise ValueError(f"`{name}.horizon`: expected an int >= 1; got {env.horizon!r}.")
    if env.num_actions is not None and (not isinstance(env.num_actions, int | np.integer)
                                        or env.num_actions < 2):
        raise ValueError(f"`{name}.num_actions`: expected an int >= 2 (or None for continuous "
                         f"actions); got {env.num_actions!r}.")
    return env


def check_int(name: str, value, *, low: int = 1, note: str = "") -> int:
    """``value`` as an ``int`` once it is an integer (not a bool) of at least ``low``; else a
    ``ValueError`` naming the argument ``name`` (``note`` says what the value is).

    Examples:
        >>> check_int("num_pulls", 10)
        10
        >>> check_int("num_arms", 1, low=2, note=" (k arms)")
        Traceback (most recent call last):
        ...
        ValueError: `num_arms`: expected an int >= 2 (k arms); got 1.
    """
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
        raise ValueError(f"`{name}`: expected an int >= {low}{note}; got {value!r}.")
    return int(value)


def check_action(action: jax.Array, shape: tuple[int, ...], *, name: str = "action") -> None:
    """Raises a ``ValueError`` naming ``name`` when ``action`` does not have ``shape``."""
    if np.shape(action) != tuple(shape):
        raise ValueError(f"`{name}`: expected shape {tuple(shape)}; got {np.shape(action)}.")


def with_horizon(env: Environment, horizon: int) -> Environment:
    """``env`` with another episode length (e.g. shorter episodes for a quick test)."""
    return check_environment(env._replace(horizon=horizon))
