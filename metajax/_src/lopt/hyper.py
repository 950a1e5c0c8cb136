"""The simplest learned optimizer: Adam with a learned learning-rate schedule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax._src.core.checks import check_int
from metajax._src.lopt.base import LearnedOptimizer, check_num_steps, check_theta, fraction_done


def adam_schedule(*, num_knots: int = 10, init_lr: float = 1e-3, b1: float = 0.9,
                  b2: float = 0.999, eps: float = 1e-8,
                  eps_root: float = 1e-8) -> LearnedOptimizer:
    """Adam whose learning-rate schedule is the meta-parameter (``optax.inject_hyperparams``).

    ``theta = {"log_lr": [num_knots]}``: the log learning rate at ``num_knots`` evenly spaced
    fractions of training ``0, ..., 1``; the rate at step ``t`` of a run of ``num_steps`` is
    ``exp`` of the piecewise-linear interpolation at ``t / num_steps`` (held at the last knot
    beyond the horizon). ``num_knots=num_steps`` learns one rate per step; ``num_knots=1`` a
    constant rate, where ``opt_fn`` is ``optax.adam(exp(log_lr), eps_root=eps_root)``.

    Args:
        num_knots: knots of the schedule.
        init_lr: the initial (constant) rate.
        b1: Adam's first-moment decay.
        b2: Adam's second-moment decay.
        eps: Adam's epsilon.
        eps_root: added to the second moment inside the square root (optax's ``eps_root``).
            It keeps meta-gradients through the optimizer finite where a gradient is exactly
            zero (a dead ReLU unit): with ``eps_root=0`` the derivative of ``sqrt`` at 0 is
            infinite and the meta-gradient NaN.

    Returns:
        A :class:`LearnedOptimizer`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from metajax import lopt
        >>> opt = lopt.adam_schedule(num_knots=1, init_lr=0.1)
        >>> tx = opt.opt_fn(opt.init(jax.random.PRNGKey(0)), num_steps=10)
        >>> u, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
        >>> round(float(u[0]), 4)   # Adam's first step is -lr * sign(g)
        -0.1
    """
    num_knots = check_int("num_knots", num_knots, 1)
    if not init_lr > 0:
        raise ValueError(f"`init_lr` must be > 0; got {init_lr!r}.")
    if not eps_root >= 0:
        raise ValueError(f"`eps_root` must be >= 0; got {eps_root!r}.")
    knots = np.linspace(0.0, 1.0, num_knots, dtype=np.float32) if num_knots > 1 else None

    def init(key: jax.Array):
        del key
        return {"log_lr": jnp.full((num_knots,), np.log(init_lr), jnp.float32)}

    template = init(None)

    def opt_fn(theta, *, num_steps: int) -> optax.GradientTransformation:
        check_theta(theta, template)
        num_steps = check_num_steps(num_steps)
        log_lr = theta["log_lr"]

        def schedule(count):
            if knots is None:
                return jnp.exp(log_lr[0])
            return jnp.exp(jnp.interp(fraction_done(count, num_steps), knots, log_lr))

        return optax.inject_hyperparams(optax.adam)(learning_rate=schedule, b1=b1, b2=b2, eps=eps,
                                                     eps_root=eps_root)

    return LearnedOptimizer(init=init, opt_fn=opt_fn)
