"""The coordinatewise LSTM optimizer of Andrychowicz et al. (2016)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax._src.core.checks import check_int
from metajax._src.lopt.base import LearnedOptimizer, check_num_steps, check_theta


class LSTMOptState(NamedTuple):
    """State of :func:`lstm_optimizer`: per layer, the ``(h, c)`` trees ``[*p.shape, units]``."""

    hidden: tuple


def log_sign_preprocess(g: jax.Array, p: float = 10.0) -> jax.Array:
    """Andrychowicz et al.'s gradient preprocessing, ``[*g.shape, 2]``:
    ``(log|g| / p, sign g)`` if ``|g| >= e^-p``, else ``(-1, e^p g)``."""
    big = jnp.abs(g) >= np.exp(-p)
    # the log of a safe stand-in where |g| is small: differentiating log|g| at g = 0 would put
    # 0 * inf = NaN into the (meta-)gradient even though that branch is not selected
    first = jnp.where(big, jnp.log(jnp.abs(jnp.where(big, g, 1.0))) / p, -1.0)
    second = jnp.where(big, jnp.sign(g), np.exp(p) * g)
    return jnp.stack([first, second], axis=-1)


def lstm_cell(layer, x, h, c):
    """One LSTM step: gates ``x Wx + h Wh + b`` split as (input, forget, cell, output)."""
    i, f, g, o = jnp.split(x @ layer["wx"] + h @ layer["wh"] + layer["b"], 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c), c


def lstm_optimizer(*, units: int = 20, layers: int = 2, output_scale: float = 0.1,
                   preprocess: float = 10.0) -> LearnedOptimizer:
    """A two-layer LSTM applied to every coordinate with shared weights (Andrychowicz et al.).

    Each scalar parameter has its own LSTM state; the input is its gradient after
    :func:`log_sign_preprocess`, the update ``output_scale * (W h + b)`` of the last layer's
    ``h``. ``theta = {"cells": [{"wx", "wh", "b"}, ...], "out": {"w", "b"}}``; forget-gate
    biases start at 1. ``num_steps`` is accepted and ignored.

    Args:
        units: LSTM width (20 in the paper).
        layers: stacked LSTM layers (2 in the paper).
        output_scale: the output multiplier (0.1 in the paper).
        preprocess: the ``p`` of the preprocessing.

    Returns:
        A :class:`LearnedOptimizer`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from metajax import lopt
        >>> opt = lopt.lstm_optimizer()
        >>> tx = opt.opt_fn(opt.init(jax.random.PRNGKey(0)), num_steps=100)
        >>> u, state = tx.update(jnp.ones(5), tx.init(jnp.zeros(5)))
        >>> u.shape, state.hidden[0][0].shape
        ((5,), (5, 20))
    """
    units, layers = check_int("units", units, 1), check_int("layers", layers, 1)

    def init(key: jax.Array):
        keys = jax.random.split(key, 2 * layers + 1)
        cells = []
        for i in range(layers):
            n_in = 2 if i == 0 else units
            bias = jnp.zeros(4 * units).at[units:2 * units].set(1.0)
            cells.append({"wx": jax.random.normal(keys[2 * i], (n_in, 4 * units)) / np.sqrt(n_in),
                          "wh": jax.random.normal(keys[2 * i + 1], (units, 4 * units))
                          / np.sqrt(units), "b": bias})
        out = {"w": jax.random.normal(keys[-1], (units, 1)) / np.sqrt(units), "b": jnp.zeros(1)}
        return {"cells": cells, "out": out}

    template = init(jax.random.PRNGKey(0))

    def opt_fn(theta, *, num_steps: int) -> optax.GradientTransformation:
        check_theta(theta, template)
        check_num_steps(num_steps)
        dtype = jnp.result_type(theta["out"]["w"])

        def init_state(params):
            zeros = jax.tree.map(lambda p: jnp.zeros((*jnp.shape(p), units), dtype), params)
            return LSTMOptState(tuple((zeros, zeros) for _ in range(layers)))

        def update(grads, state, params=None):
            del params
            leaves, treedef = jax.tree.flatten(grads)
            new_hidden = [([], []) for _ in range(layers)]
            updates = []
            for j, g in enumerate(leaves):
                x = log_sign_preprocess(g.astype(dtype), preprocess)
                for i, cell in enumerate(theta["cells"]):
                    h = jax.tree.leaves(state.hidden[i][0])[j]
                    c = jax.tree.leaves(state.hidden[i][1])[j]
                    x, c = lstm_cell(cell, x, h, c)
                    new_hidden[i][0].append(x)
                    new_hidden[i][1].append(c)
                out = (x @ theta["out"]["w"] + theta["out"]["b"])[..., 0]
                updates.append((output_scale * out).astype(g.dtype))
            hidden = tuple((treedef.unflatten(h), treedef.unflatten(c)) for h, c in new_hidden)
            return treedef.unflatten(updates), LSTMOptState(hidden)

        return optax.GradientTransformation(init_state, update)

    return LearnedOptimizer(init=init, opt_fn=opt_fn)
