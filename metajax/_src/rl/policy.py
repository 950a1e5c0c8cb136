"""Stochastic policies as pure functions: Gaussian and categorical MLPs."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from metajax._src.rl.env import check_int

PyTree = Any


class Policy(NamedTuple):
    """A stochastic policy ``pi(a | obs)`` as pure functions of its parameters.

    Attributes:
        init: ``init(key) -> params``.
        dist: ``dist(params, obs) -> d``: the action distribution's parameters at ``obs``
            (a pytree; batch over observations with ``vmap``).
        sample: ``sample(key, d) -> action``.
        log_prob: ``log_prob(d, action) -> scalar``.
        kl: ``kl(d_old, d_new) -> scalar``: ``KL(pi_old || pi_new)`` at one observation, as
            a function of ``d_new`` whose gradient vanishes at ``d_new = d_old`` (TRPO's
            Fisher-vector product is ``J' H J`` with ``J`` the Jacobian of ``dist``).
        entropy: ``entropy(d) -> scalar``.
    """

    init: Callable[[jax.Array], PyTree]
    dist: Callable[[PyTree, jax.Array], PyTree]
    sample: Callable[[jax.Array, PyTree], jax.Array]
    log_prob: Callable[[PyTree, jax.Array], jax.Array]
    kl: Callable[[PyTree, PyTree], jax.Array]
    entropy: Callable[[PyTree], jax.Array]


def glorot_uniform(key: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """Glorot-uniform weights of a ``[fan_in, fan_out]`` matrix: ``U[-b, b]``,
    ``b = sqrt(6 / (fan_in + fan_out))``."""
    bound = math.sqrt(6.0 / sum(shape))
    return jax.random.uniform(key, shape, minval=-bound, maxval=bound)


def _mlp_init(key, sizes: Sequence[int]) -> list[dict]:
    keys = jax.random.split(key, len(sizes) - 1)
    return [{"w": glorot_uniform(k, (n_in, n_out)), "b": jnp.zeros(n_out)}
            for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:], strict=True)]


def _mlp_apply(layers, x, activation):
    for i, layer in enumerate(layers):
        x = x @ layer["w"] + layer["b"]
        if i < len(layers) - 1:
            x = activation(x)
    return x


def _check_sizes(name: str, obs_dim, out_dim, hidden) -> tuple[int, ...]:
    for arg, v in (("obs_dim", obs_dim), (name, out_dim)):
        check_int(arg, v)
    hidden = tuple(hidden)
    if any(not isinstance(h, int) or h < 1 for h in hidden):
        raise ValueError(f"`hidden`: expected positive ints; got {hidden!r}.")
    return hidden


def gaussian_mlp_policy(obs_dim: int, action_dim: int, *, hidden: Sequence[int] = (100, 100),
                        activation: Callable = jax.nn.relu, init_log_std: float = 0.0
                        ) -> Policy:
    """A diagonal Gaussian whose mean is an MLP of the observation and whose log standard
    deviation is a learned vector (the MAML paper's policy: hidden ``(100, 100)``, ReLU, unit
    initial standard deviation).

    Params are ``{"mean": [layers], "log_std": [action_dim]}``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> pi = gaussian_mlp_policy(2, 2, hidden=(8,))
        >>> params = pi.init(jax.random.PRNGKey(0))
        >>> d = pi.dist(params, jnp.zeros(2))
        >>> float(pi.kl(d, d)), pi.sample(jax.random.PRNGKey(1), d).shape
        (0.0, (2,))
    """
    hidden = _check_sizes("action_dim", obs_dim, action_dim, hidden)

    def init(key):
        return {"mean": _mlp_init(key, (obs_dim, *hidden, action_dim)),
                "log_std": jnp.full(action_dim, init_log_std, jnp.float32)}

    def dist(params, obs):
        return _mlp_apply(params["mean"], obs, activation), params["log_std"]

    def sample(key, d):
        mean, log_std = d
        return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)

    def log_prob(d, action):
        mean, log_std = d
        z = (action - mean) * jnp.exp(-log_std)
        return jnp.sum(-0.5 * z ** 2 - log_std - 0.5 * math.log(2 * math.pi))

    def kl(d_old, d_new):
        (m0, s0), (m1, s1) = d_old, d_new
        return jnp.sum(s1 - s0 + (jnp.exp(2 * s0) + (m0 - m1) ** 2) / (2 * jnp.exp(2 * s1))
                       - 0.5)

    def entropy(d):
        return jnp.sum(d[1] + 0.5 * math.log(2 * math.pi * math.e))

    return Policy(init, dist, sample, log_prob, kl, entropy)


def categorical_mlp_policy(obs_dim: int, num_actions: int, *, hidden: Sequence[int] = (32,),
                           activation: Callable = jnp.tanh) -> Policy:
    """A softmax over ``num_actions`` whose logits are an MLP of the observation (``hidden=()``:
    a linear map, i.e. a tabular policy for one-hot observations).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> pi = categorical_mlp_policy(3, 2, hidden=())
        >>> d = pi.dist(pi.init(jax.random.PRNGKey(0)), jnp.eye(3)[0])
        >>> round(float(jnp.exp(pi.log_prob(d, 0)) + jnp.exp(pi.log_prob(d, 1))), 6)
        1.0
    """
    hidden = _check_sizes("num_actions", obs_dim, num_actions, hidden)

    def init(key):
        return _mlp_init(key, (obs_dim, *hidden, num_actions))

    def dist(params, obs):
        return jax.nn.log_softmax(_mlp_apply(params, obs, activation))

    def sample(key, logp):
        return jax.random.categorical(key, logp)

    def log_prob(logp, action):
        return logp[action]

    def kl(logp_old, logp_new):
        # of the logits: log_softmax is the identity on log-probabilities, but it carries the
        # softmax's curvature (the KL is linear in log-probabilities, its Hessian there 0)
        logp_old, logp_new = jax.nn.log_softmax(logp_old), jax.nn.log_softmax(logp_new)
        return jnp.sum(jnp.exp(logp_old) * (logp_old - logp_new))

    def entropy(logp):
        return -jnp.sum(jnp.exp(logp) * logp)

    return Policy(init, dist, sample, log_prob, kl, entropy)
