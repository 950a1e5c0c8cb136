"""Returns, the linear feature baseline and advantage estimates of one task's episodes."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from metajax._src.rl.rollout import Trajectory

AdvantageFn = Callable[[Trajectory], jax.Array]


def discounted_returns(rewards: jax.Array, mask: jax.Array, discount: float) -> jax.Array:
    """``G_t = r_t + discount * G_{t+1}`` along the last axis (0 after an episode ends)."""

    def body(g, x):
        r, m = x
        g = (r + discount * g) * m
        return g, g

    rewards, mask = jnp.moveaxis(rewards, -1, 0), jnp.moveaxis(mask, -1, 0)
    _, g = jax.lax.scan(body, jnp.zeros(rewards.shape[1:]), (rewards, mask), reverse=True)
    return jnp.moveaxis(g, 0, -1)


def linear_features(traj: Trajectory) -> jax.Array:
    """rllab's ``LinearFeatureBaseline`` features per step: ``[o, o^2, t, t^2, t^3, 1]``, with
    the observation clipped to ``[-10, 10]`` and ``t`` the step index over 100."""
    obs = jnp.clip(traj.obs.reshape(*traj.obs.shape[:2], -1), -10.0, 10.0)
    t = jnp.broadcast_to(jnp.arange(obs.shape[1], dtype=jnp.float32)[None, :, None] / 100.0,
                         (*obs.shape[:2], 1))
    return jnp.concatenate([obs, obs ** 2, t, t ** 2, t ** 3, jnp.ones_like(t)], axis=-1)


def spd_solve(a: jax.Array, b: jax.Array) -> jax.Array:
    """``x`` with ``a x = b`` for a symmetric positive definite ``[n, n]`` ``a``, by a Cholesky
    factorisation written in XLA operations; NaN where ``a`` is not positive definite.

    Not ``jnp.linalg.solve``: batched (under ``vmap`` over tasks), jaxlib's CPU LAPACK kernels
    split the batch over XLA's intra-op thread pool and, two of them at once, can wait on each
    other forever on a 2-core machine.

    Examples:
        >>> import jax.numpy as jnp
        >>> spd_solve(jnp.array([[4.0, 2.0], [2.0, 3.0]]), jnp.array([2.0, 1.0])).tolist()
        [0.5, 0.0]
    """
    n = a.shape[-1]
    idx = jnp.arange(n)

    def column(j, low):  # columns >= j of ``low`` are still 0
        v = a[:, j] - low @ low[j]
        d = jnp.sqrt(v[j])
        return low.at[:, j].set(jnp.where(idx > j, v / d, 0.0).at[j].set(d))

    low = jax.lax.fori_loop(0, n, column, jnp.zeros_like(a))
    y = jax.lax.fori_loop(0, n, lambda i, y: y.at[i].set((b[i] - low[i] @ y) / low[i, i]),
                          jnp.zeros_like(b))

    def back(k, x):
        i = n - 1 - k
        return x.at[i].set((y[i] - low[:, i] @ x) / low[i, i])

    return jax.lax.fori_loop(0, n, back, jnp.zeros_like(b))


def fit_linear_baseline(traj: Trajectory, returns: jax.Array, *, reg: float = 1e-5
                        ) -> jax.Array:
    """Least-squares values of one task's steps from :func:`linear_features` (ridge ``reg``),
    fitted to ``returns`` over the steps where ``traj.mask`` is 1; no gradient flows.

    As rllab, a non-finite solution (a numerically singular system, e.g. one-hot observations
    whose squares repeat them) is solved again with ``reg`` ten times larger, up to four
    times; if all five fail, the baseline is 0.
    """
    traj, returns = jax.lax.stop_gradient((traj, returns))
    f = linear_features(traj) * traj.mask[..., None]
    flat, y = f.reshape(-1, f.shape[-1]), (returns * traj.mask).reshape(-1)
    gram, rhs, eye = flat.T @ flat, flat.T @ y, jnp.eye(flat.shape[1])
    ridges = reg * 10.0 ** jnp.arange(5.0)
    ws = jax.vmap(lambda r: spd_solve(gram + r * eye, rhs))(ridges)
    ok = jnp.all(jnp.isfinite(ws), axis=1)
    w = jnp.where(jnp.any(ok), ws[jnp.argmax(ok)], 0.0)
    return (f @ w) * traj.mask


def _normalize(adv, mask):
    n = jnp.maximum(jnp.sum(mask), 1.0)
    mean = jnp.sum(adv * mask) / n
    std = jnp.sqrt(jnp.sum(((adv - mean) * mask) ** 2) / n)
    return (adv - mean) / (std + 1e-8) * mask


def linear_baseline_advantages(*, discount: float = 0.99, gae_lambda: float = 1.0,
                               normalize: bool = True) -> AdvantageFn:
    """Advantages of one task's episodes against a linear feature baseline fitted to them.

    ``delta_t = r_t + discount * b_{t+1} - b_t`` and ``A = sum_l (discount * gae_lambda)^l
    delta_{t+l}`` (GAE; ``gae_lambda=1``: returns minus the baseline, as rllab's VPG and TRPO),
    then, with ``normalize``, centred and scaled to unit variance over the task's steps.
    rllab's defaults: ``discount=0.99``, ``gae_lambda=1``, ``normalize=True``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from metajax.rl import Trajectory
        >>> ones = jnp.ones((4, 3))  # 4 episodes of 3 steps, reward 1 each: returns 3, 2, 1
        >>> traj = Trajectory(jnp.zeros((4, 3, 1)), jnp.zeros((4, 3)), ones, ones)
        >>> adv = linear_baseline_advantages(normalize=False, discount=1.0)(traj)
        >>> bool(jnp.abs(adv).max() < 0.02)  # the baseline predicts them (up to its ridge)
        True
    """
    _check_unit("discount", discount)
    _check_unit("gae_lambda", gae_lambda)

    def advantages(traj: Trajectory) -> jax.Array:
        returns = discounted_returns(traj.rewards, traj.mask, discount)
        values = fit_linear_baseline(traj, returns)
        next_values = jnp.concatenate([values[:, 1:], jnp.zeros_like(values[:, :1])], axis=1)
        delta = (traj.rewards + discount * next_values - values) * traj.mask
        adv = discounted_returns(delta, traj.mask, discount * gae_lambda)
        return jax.lax.stop_gradient(_normalize(adv, traj.mask) if normalize else adv)

    return advantages


def reward_to_go_advantages(*, discount: float = 1.0, normalize: bool = False) -> AdvantageFn:
    """Plain REINFORCE: the discounted reward-to-go, no baseline (unbiased, high variance).

    With the defaults, the policy-gradient surrogate's gradient is an unbiased estimate of the
    gradient of the expected return.
    """
    _check_unit("discount", discount)

    def advantages(traj: Trajectory) -> jax.Array:
        adv = discounted_returns(traj.rewards, traj.mask, discount)
        return jax.lax.stop_gradient(_normalize(adv, traj.mask) if normalize else adv)

    return advantages


def _check_unit(name, value):
    if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}`: expected a number in [0, 1]; got {value!r}.")
