"""A per-parameter MLP learned optimizer (Metz et al. style), with a nominal SGD term."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax._src.lopt.base import LearnedOptimizer, check_num_steps, check_theta, fraction_done

TIME_SCALES = (10.0, 100.0, 1000.0)


class MLPOptState(NamedTuple):
    """State of :func:`mlp_optimizer`: step count, momenta (one tree per decay), second moment."""

    count: jax.Array
    momenta: tuple
    second: optax.Params


def _normalize(x):
    """Each feature divided by its root mean square over the parameter tensor."""
    axes = tuple(range(x.ndim - 1))
    return x * jax.lax.rsqrt(1e-5 + jnp.mean(x**2, axis=axes, keepdims=True))


def _mlp(layers, x):
    for i, layer in enumerate(layers):
        x = x @ layer["w"] + layer["b"]
        if i < len(layers) - 1:
            x = jax.nn.relu(x)
    return x


def mlp_features(g, p, momenta, second, count, num_steps):
    """The ``[*p.shape, F]`` inputs of one parameter tensor: gradient, parameter, momenta, the
    gradient over its root second moment (each normalised over the tensor), then the fraction
    of training done and ``tanh(t / s - 1)`` for ``s`` in ``TIME_SCALES`` (broadcast)."""
    per_coord = [g, p, *momenta, g * jax.lax.rsqrt(second + 1e-12)]
    x = _normalize(jnp.stack(per_coord, axis=-1))
    t = jnp.asarray(count, x.dtype)
    time = jnp.stack([fraction_done(count, num_steps).astype(x.dtype)]
                     + [jnp.tanh(t / s - 1.0) for s in TIME_SCALES])
    return jnp.concatenate([x, jnp.broadcast_to(time, (*jnp.shape(g), time.shape[0]))], -1)


def mlp_optimizer(*, hidden: Sequence[int] = (32, 32),
                  decays: Sequence[float] = (0.5, 0.9, 0.99, 0.999), second_decay: float = 0.999,
                  step_mult: float = 1e-3, exp_mult: float = 1e-3,
                  init_lr: float = 1e-3) -> LearnedOptimizer:
    """A small MLP applied to every scalar parameter, as in Metz et al. (2019, 2020).

    For each parameter the MLP reads :func:`mlp_features` (gradient, parameter value, momenta at
    ``decays``, the gradient over its root second moment, each normalised over its tensor, and
    the fraction of training done) and outputs a direction ``d`` and a log-magnitude ``m``. The
    update adds a nominal SGD term whose log rate is learned too::

        update = -(exp(log_lr) * g + step_mult * d * exp(exp_mult * m))

    so the zero MLP output is SGD at ``exp(log_lr)`` (a stable starting point, Harrison et al.
    2022). ``theta = {"log_lr": scalar, "layers": [{"w", "b"}, ...]}``.

    Args:
        hidden: widths of the MLP's ReLU layers.
        decays: momentum decays (features).
        second_decay: decay of the second-moment accumulator.
        step_mult: scale of the learned step.
        exp_mult: scale of the log-magnitude.
        init_lr: the initial nominal SGD rate.

    Returns:
        A :class:`LearnedOptimizer`; ``opt_fn(theta, num_steps=N)`` needs ``params`` in
        ``update`` (the parameter value is a feature).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from metajax import lopt
        >>> opt = lopt.mlp_optimizer(hidden=(8,))
        >>> tx = opt.opt_fn(opt.init(jax.random.PRNGKey(0)), num_steps=100)
        >>> p = {"w": jnp.ones((2, 3))}
        >>> u, state = tx.update(p, tx.init(p), p)
        >>> u["w"].shape
        (2, 3)
    """
    decays, hidden = tuple(float(d) for d in decays), tuple(int(h) for h in hidden)
    if any(h < 1 for h in hidden):
        raise ValueError(f"`hidden` widths must be >= 1; got {hidden}.")
    if not all(0.0 <= d < 1.0 for d in (*decays, second_decay)):
        raise ValueError(f"`decays` and `second_decay` must be in [0, 1); got {decays}, "
                         f"{second_decay}.")
    n_in = 3 + len(decays) + 1 + len(TIME_SCALES)
    sizes = (n_in, *hidden, 2)

    def init(key: jax.Array):
        keys = jax.random.split(key, len(sizes) - 1)
        layers = [{"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)}
                  for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)]
        return {"log_lr": jnp.asarray(np.log(init_lr), jnp.float32), "layers": layers}

    template = init(jax.random.PRNGKey(0))

    def opt_fn(theta, *, num_steps: int) -> optax.GradientTransformation:
        check_theta(theta, template)
        num_steps = check_num_steps(num_steps)

        def init_state(params):
            zeros = jax.tree.map(jnp.zeros_like, params)
            return MLPOptState(jnp.zeros([], jnp.int32), tuple(zeros for _ in decays), zeros)

        def update(grads, state, params=None):
            if params is None:
                raise ValueError("mlp_optimizer reads the parameters: pass `params` to update.")
            momenta = tuple(jax.tree.map(lambda m, g, d=d: d * m + (1 - d) * g, ms, grads)
                            for d, ms in zip(decays, state.momenta, strict=True))
            second = jax.tree.map(lambda v, g: second_decay * v + (1 - second_decay) * g**2,
                                  state.second, grads)

            def one(g, p, v, *ms):
                out = _mlp(theta["layers"], mlp_features(g, p, ms, v, state.count, num_steps))
                step = step_mult * out[..., 0] * jnp.exp(exp_mult * out[..., 1])
                return -(jnp.exp(theta["log_lr"]) * g + step).astype(g.dtype)

            updates = jax.tree.map(one, grads, params, second, *momenta)
            return updates, MLPOptState(state.count + 1, momenta, second)

        return optax.GradientTransformation(init_state, update)

    return LearnedOptimizer(init=init, opt_fn=opt_fn)
