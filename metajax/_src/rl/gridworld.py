"""A partially observed gridworld whose rules change per task: where the goal is, which cells
are walls and which are hazards."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metajax._src.rl.env import Environment, check_action

MOVES = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]], np.int32)  # up, down, left, right


class GridTask(NamedTuple):
    """One gridworld: ``goal`` ``[2]`` (row, column), ``walls`` and ``hazards`` ``[size, size]``
    booleans. The start is ``(0, 0)``; the goal is reachable from it around the walls."""

    goal: jax.Array
    walls: jax.Array
    hazards: jax.Array


def _reachable(walls: jax.Array) -> jax.Array:
    """Cells reachable from ``(0, 0)`` without crossing a wall (flood fill)."""
    size = walls.shape[0]
    start = jnp.zeros_like(walls).at[0, 0].set(True)

    def grow(reach, _):
        pad = jnp.pad(reach, 1)
        near = pad[:-2, 1:-1] | pad[2:, 1:-1] | pad[1:-1, :-2] | pad[1:-1, 2:] | reach
        return near & ~walls, None

    reach, _ = jax.lax.scan(grow, start, None, length=size * size)
    return reach


def gridworld(*, size: int = 5, wall_prob: float = 0.2, hazard_prob: float = 0.1,
              horizon: int | None = None, goal_reward: float = 1.0,
              hazard_reward: float = -0.5, step_reward: float = -0.01) -> Environment:
    """An agent starts at the top-left cell of a ``size`` × ``size`` grid and moves up, down,
    left or right (4 discrete actions); moving into a wall or off the grid leaves it in place.

    Each task draws walls (probability ``wall_prob`` per cell), hazards (``hazard_prob``) and a
    goal among the cells reachable from the start, so every task is solvable. Entering the goal
    pays ``goal_reward`` and ends the episode; entering a hazard pays ``hazard_reward``; every
    step costs ``step_reward``. The agent sees only its position and the 3 × 3 cells around it
    (one-hot: empty, wall or edge, hazard, goal), so it must explore to find the goal and can
    remember it across the episodes of a trial (:func:`metajax.rl.rl2`). ``horizon`` defaults
    to ``2 * size**2`` steps.

    Examples:
        >>> import jax
        >>> env = gridworld(size=4)
        >>> tasks = env.sample_tasks(jax.random.PRNGKey(0), 8)
        >>> obs, pos = env.reset(jax.random.PRNGKey(1), jax.tree.map(lambda x: x[0], tasks))
        >>> obs.shape, env.num_actions, env.horizon
        ((38,), 4, 32)
    """
    if not isinstance(size, int) or size < 2:
        raise ValueError(f"`size`: expected an int >= 2; got {size!r}.")
    for name, p in (("wall_prob", wall_prob), ("hazard_prob", hazard_prob)):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"`{name}`: expected a number in [0, 1); got {p!r}.")
    horizon = 2 * size * size if horizon is None else horizon

    def observe(pos, task):
        pad_walls = jnp.pad(task.walls, 1, constant_values=True)
        pad_haz = jnp.pad(task.hazards, 1)
        goal = jnp.zeros((size, size), bool).at[task.goal[0], task.goal[1]].set(True)
        pad_goal = jnp.pad(goal, 1)
        window = lambda g: jax.lax.dynamic_slice(g, (pos[0], pos[1]), (3, 3))  # noqa: E731
        w, h, g = window(pad_walls), window(pad_haz), window(pad_goal)
        empty = ~(w | h | g)
        cells = jnp.stack([empty, w, h, g], -1).reshape(-1).astype(jnp.float32)
        return jnp.concatenate([pos.astype(jnp.float32) / (size - 1), cells])

    def reset(key, task):
        del key
        pos = jnp.zeros(2, jnp.int32)
        return observe(pos, task), pos

    def step(key, pos, action, task):
        del key
        check_action(action, ())
        nxt = jnp.clip(pos + jnp.asarray(MOVES)[action], 0, size - 1)
        nxt = jnp.where(task.walls[nxt[0], nxt[1]], pos, nxt)
        at_goal = jnp.all(nxt == task.goal)
        reward = (step_reward + jnp.where(at_goal, goal_reward, 0.0)
                  + jnp.where(task.hazards[nxt[0], nxt[1]] & ~at_goal, hazard_reward, 0.0))
        return observe(nxt, task), nxt, reward, at_goal

    def sample_one(key):
        k_w, k_h, k_g = jax.random.split(key, 3)
        walls = jax.random.bernoulli(k_w, wall_prob, (size, size)).at[0, 0].set(False)
        reach = _reachable(walls).at[0, 0].set(False)  # where the goal may go
        # a start walled in gets its walls removed: every task is solvable
        walled_in = ~jnp.any(reach)
        walls = jnp.where(walled_in, False, walls)
        reach = jnp.where(walled_in, jnp.ones_like(reach).at[0, 0].set(False), reach)
        flat = jax.random.categorical(k_g, jnp.where(reach.reshape(-1), 0.0, -jnp.inf))
        goal = jnp.stack([flat // size, flat % size]).astype(jnp.int32)
        hazards = jax.random.bernoulli(k_h, hazard_prob, (size, size)) & reach
        hazards = hazards.at[goal[0], goal[1]].set(False)
        return GridTask(goal, walls, hazards)

    def sample_tasks(key, n):
        return jax.vmap(sample_one)(jax.random.split(key, n))

    return Environment(reset=reset, step=step, sample_tasks=sample_tasks, horizon=horizon,
                       observation_shape=(2 + 36,), action_shape=(), num_actions=4)
