"""The policy-gradient surrogate and the vanilla policy-gradient step (differentiable)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from metajax._src.rl.policy import Policy
from metajax._src.rl.rollout import Trajectory

PyTree = Any


def log_probs(policy: Policy, params: PyTree, traj: Trajectory) -> jax.Array:
    """``log pi(a_t | o_t)`` of every step of ``traj``: ``[episodes, horizon]``."""
    one = lambda o, a: policy.log_prob(policy.dist(params, o), a)  # noqa: E731
    return jax.vmap(jax.vmap(one))(traj.obs, traj.actions)


def pg_surrogate(policy: Policy, params: PyTree, traj: Trajectory, adv: jax.Array
                 ) -> jax.Array:
    """The REINFORCE surrogate ``sum(mask * log pi(a|o) * adv) / sum(mask)``.

    rllab's mean over valid steps: when no episode ends early, the mean over episodes of
    ``sum_t log pi(a_t|o_t) adv_t`` divided by the horizon. Its gradient in ``params`` is the
    policy-gradient estimate (ascend it).
    """
    lp = log_probs(policy, params, traj)
    return jnp.sum(lp * adv * traj.mask) / jnp.maximum(jnp.sum(traj.mask), 1.0)


def vpg_update(policy: Policy, params: PyTree, traj: Trajectory, adv: jax.Array, *, lr,
               first_order: bool = False) -> PyTree:
    """One vanilla policy-gradient ascent step ``params + lr * grad pg_surrogate``.

    Differentiable in ``params`` (the MAML-RL inner step); with ``first_order`` the step's
    gradient is treated as a constant (``stop_gradient``).
    """
    g = jax.grad(pg_surrogate, argnums=1)(policy, params, traj, adv)
    if first_order:
        g = jax.lax.stop_gradient(g)
    return jax.tree.map(lambda p, d: p + lr * d, params, g)
