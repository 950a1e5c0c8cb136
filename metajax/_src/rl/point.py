"""2-D point navigation to a random goal (Finn et al., 2017, Sec. 5.3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from metajax._src.rl.env import Environment, check_action


def point_navigation(*, horizon: int = 100, goal_range: float = 0.5, max_action: float = 0.1,
                     success_box: float = 0.01, normalized_actions: bool = True,
                     oracle: bool = False) -> Environment:
    """A point in the plane moves towards a goal it does not see; the goal is the task.

    The point starts at ``(0, 0)``; each task's goal is drawn from
    ``U[-goal_range, goal_range]^2``. An action moves the point by the action clipped to
    ``[-max_action, max_action]^2``; the reward is minus the distance to the goal after the
    move, and the episode ends once both coordinates are within ``success_box`` of the goal.
    The observation is the position (``oracle=True``: position and goal, the "oracle" policy
    of the paper's comparison). With ``normalized_actions`` (the default, as in the paper's
    code, which wraps the environment in rllab's ``normalize``), actions live in ``[-1, 1]^2``
    and are scaled by ``max_action`` before clipping.

    Args:
        horizon: steps per episode.
        goal_range: half-width of the square goals are drawn from.
        max_action: the largest move per step and coordinate.
        success_box: the episode ends within this distance of the goal in both coordinates.
        normalized_actions: scale ``[-1, 1]`` actions to ``[-max_action, max_action]``.
        oracle: append the goal to the observation.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> env = point_navigation()
        >>> goal = jnp.array([0.3, 0.0])
        >>> obs, pos = env.reset(jax.random.PRNGKey(0), goal)
        >>> obs, pos, reward, done = env.step(jax.random.PRNGKey(1), pos, jnp.array([1.0, 0.0]),
        ...                                   goal)
        >>> round(float(reward), 3), bool(done)
        (-0.2, False)
    """
    scale = max_action if normalized_actions else 1.0

    def reset(key, goal):
        del key
        pos = jnp.zeros(2)
        return observe(pos, goal), pos

    def observe(pos, goal):
        return jnp.concatenate([pos, goal]) if oracle else pos

    def step(key, pos, action, goal):
        del key
        check_action(action, (2,))
        pos = pos + jnp.clip(scale * action, -max_action, max_action)
        delta = pos - goal
        reward = -jnp.sqrt(jnp.sum(delta ** 2))
        done = jnp.all(jnp.abs(delta) < success_box)
        return observe(pos, goal), pos, reward, done

    def sample_tasks(key, n):
        return jax.random.uniform(key, (n, 2), minval=-goal_range, maxval=goal_range)

    return Environment(reset=reset, step=step, sample_tasks=sample_tasks, horizon=horizon,
                       observation_shape=(4,) if oracle else (2,), action_shape=(2,))
