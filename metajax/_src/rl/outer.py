"""Outer policy updates on a surrogate objective: TRPO and PPO-clip (or any Optax optimizer)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from metajax._src.core.implicit import conjugate_gradient
from metajax._src.rl.env import check_int

PyTree = Any


class Surrogate(NamedTuple):
    """What an outer update optimises, as functions of candidate parameters.

    The objective at ``params`` is ``sum(weights * f(exp(logratio(params))) * advantages) +
    extra(params)`` where ``f`` is the identity (TRPO, the importance-sampled policy
    gradient) or PPO's clipping; at the sampling parameters ``logratio`` and ``extra`` are 0.

    The trust region is the weighted KL divergence ``sum(kl_weights * divergence(old_dist,
    dist(params)))`` of the action distributions at the sampled observations; its Hessian at
    the sampling parameters (the Fisher matrix) is applied as ``J' H J`` with ``J`` the
    Jacobian of ``dist``: exact there, because the divergence's gradient in its second
    argument vanishes at the old distribution (a categorical KL must be written in logits,
    not in log-probabilities, in which it is linear and its Hessian 0).

    Attributes:
        logratio: ``params -> [...]`` log-probability ratios of the sampled actions against
            the policy that sampled them.
        advantages: ``[...]`` their advantages (constants).
        weights: ``[...]`` per-sample weights (masks over the number of samples; constants).
        extra: ``params -> scalar``: terms added to the objective (0 at the sampling params).
        dist: ``params -> dists``: the action distributions at the sampled observations.
        old_dist: the sampling policy's distributions there (constants).
        divergence: ``(old, new) -> [...]`` KL divergence per sample.
        kl_weights: ``[...]`` per-sample weights of the divergence (a weighted mean).
    """

    logratio: Callable[[PyTree], jax.Array]
    advantages: jax.Array
    weights: jax.Array
    extra: Callable[[PyTree], jax.Array]
    dist: Callable[[PyTree], PyTree]
    old_dist: PyTree
    divergence: Callable[[PyTree, PyTree], jax.Array]
    kl_weights: jax.Array


def mean_kl(s: Surrogate, params: PyTree) -> jax.Array:
    """The weighted KL divergence of :class:`Surrogate` ``s`` at ``params``."""
    return jnp.sum(s.kl_weights * s.divergence(s.old_dist, s.dist(params)))


def fisher_vector_product(s: Surrogate, params: PyTree) -> Callable[[jax.Array], jax.Array]:
    """``v -> F v`` on flat parameter vectors, ``F`` the Hessian of :func:`mean_kl` at
    ``params`` (the sampling parameters), as ``J' H J`` (one linearisation, reused)."""
    flat, unravel = ravel_pytree(params)
    d0, jvp_fn = jax.linearize(lambda x: s.dist(unravel(x)), flat)
    vjp_fn = jax.linear_transpose(jvp_fn, flat)
    grad_d = jax.grad(lambda d: jnp.sum(s.kl_weights * s.divergence(s.old_dist, d)))
    return lambda v: vjp_fn(jax.jvp(grad_d, (d0,), (jvp_fn(v),))[1])[0]


class PolicyOptimizer(NamedTuple):
    """An outer update: ``init(params) -> state``; ``update(params, state, surrogate) ->
    (params, state, metrics)``, maximising the :class:`Surrogate`."""

    init: Callable[[PyTree], PyTree]
    update: Callable[[PyTree, PyTree, Surrogate], tuple[PyTree, PyTree, dict]]


def surrogate_value(s: Surrogate, params: PyTree, *, clip: float | None = None) -> jax.Array:
    """The importance-sampled objective of :class:`Surrogate` (PPO-clipped with ``clip``)."""
    ratio = jnp.exp(s.logratio(params))
    obj = ratio * s.advantages
    if clip is not None:
        obj = jnp.minimum(obj, jnp.clip(ratio, 1 - clip, 1 + clip) * s.advantages)
    return jnp.sum(s.weights * obj) + s.extra(params)


def trpo(*, max_kl: float = 0.01, cg_iters: int = 10, cg_damping: float = 1e-5,
         backtrack_ratio: float = 0.8, max_backtracks: int = 15) -> PolicyOptimizer:
    """Trust-region policy optimisation (Schulman et al., 2015), as rllab's
    ``ConjugateGradientOptimizer``.

    The step direction solves ``(F + cg_damping I) d = g`` by ``cg_iters`` conjugate-gradient
    iterations on Fisher-vector products (Hessian-vector products of the mean KL), where ``g``
    is the surrogate's gradient; the step ``sqrt(2 max_kl / d'Fd) d`` is shrunk by
    ``backtrack_ratio`` up to ``max_backtracks`` times until the surrogate improves and the
    KL is at most ``max_kl``; if no candidate passes, the parameters stay.

    Examples:
        >>> opt = trpo(max_kl=0.01)
        >>> opt.init({"w": 0.0})
        ()
    """
    for name, v, lo in (("max_kl", max_kl, 0.0), ("cg_damping", cg_damping, -1e-300)):
        if not v > lo:
            raise ValueError(f"`{name}`: expected a positive number; got {v!r}.")
    if not 0.0 < backtrack_ratio < 1.0:
        raise ValueError(f"`backtrack_ratio`: expected a number in (0, 1); got "
                         f"{backtrack_ratio!r}.")
    check_int("cg_iters", cg_iters)
    check_int("max_backtracks", max_backtracks)

    def update(params, state, s: Surrogate):
        flat, unravel = ravel_pytree(params)
        objective = lambda x: surrogate_value(s, unravel(x))  # noqa: E731
        kl = lambda x: mean_kl(s, unravel(x))  # noqa: E731
        value0, g = jax.value_and_grad(objective)(flat)
        fvp = fisher_vector_product(s, params)
        d = conjugate_gradient(fvp, g, maxiter=cg_iters, tol=0.0, damping=cg_damping)
        dfd = jnp.dot(d, fvp(d))
        full = jnp.sqrt(2 * max_kl / (dfd + 1e-8)) * d

        def candidate(j):
            x = flat + backtrack_ratio ** j * full
            return x, objective(x), kl(x)

        def cond(c):
            j, _, v, k = c
            ok = (v > value0) & (k <= max_kl) & jnp.isfinite(v)
            return (j < max_backtracks) & ~ok

        def body(c):
            j = c[0] + 1
            return (j, *candidate(j))

        j, x, v, k = jax.lax.while_loop(cond, body, (0, *candidate(0)))
        accepted = (v > value0) & (k <= max_kl) & jnp.isfinite(v)
        new = jnp.where(accepted, x, flat)
        metrics = {"surrogate_gain": jnp.where(accepted, v - value0, 0.0),
                   "kl": jnp.where(accepted, k, 0.0), "backtracks": j.astype(jnp.float32),
                   "step_accepted": accepted.astype(jnp.float32),
                   "grad_norm": jnp.linalg.norm(g)}
        return unravel(new), state, metrics

    return PolicyOptimizer(init=lambda params: (), update=update)


def ppo_clip(optimizer: optax.GradientTransformation, *, clip: float = 0.2, epochs: int = 5
             ) -> PolicyOptimizer:
    """PPO's clipped surrogate (Schulman et al., 2017), ascended for ``epochs`` full-batch
    steps of ``optimizer`` on the same samples (the ProMP / MAML-PPO outer step).

    Examples:
        >>> import optax
        >>> opt = ppo_clip(optax.adam(1e-3), clip=0.2)
        >>> len(opt.init({"w": 0.0}))
        2
    """
    if not 0.0 < clip < 1.0:
        raise ValueError(f"`clip`: expected a number in (0, 1); got {clip!r}.")
    check_int("epochs", epochs)

    def update(params, state, s: Surrogate):
        loss = lambda p: -surrogate_value(s, p, clip=clip)  # noqa: E731

        def epoch(carry, _):
            p, st = carry
            g = jax.grad(loss)(p)
            u, st = optimizer.update(g, st, p)
            return (optax.apply_updates(p, u), st), None

        value0 = -loss(params)
        (new, state), _ = jax.lax.scan(epoch, (params, state), None, length=epochs)
        metrics = {"surrogate_gain": -loss(new) - value0, "kl": mean_kl(s, new),
                   "step_accepted": jnp.float32(1.0)}
        return new, state, metrics

    return PolicyOptimizer(init=optimizer.init, update=update)
