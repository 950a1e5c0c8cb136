"""Meta-training a learned optimizer as a :class:`MetaLearner`: an estimator plus Optax."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metajax._src.core.types import MetaLearner
from metajax._src.lopt.estimators import GradientEstimator


class LOptState(NamedTuple):
    """State of :func:`meta_trainer`.

    Attributes:
        params: the learned optimizer's meta-parameters ``theta``.
        opt_state: the outer Optax optimizer's state.
        step: outer updates so far (int32).
        runs: the estimator's batch of inner-training runs.
    """

    params: Any
    opt_state: Any
    step: jax.Array
    runs: Any


def meta_trainer(estimator: GradientEstimator, optimizer: optax.GradientTransformation, *,
                 key: jax.Array) -> MetaLearner:
    """Outer training of a learned optimizer: one ``optimizer`` update per estimate.

    ``step(state, key)`` advances the estimator's runs by one truncation with its PRNG
    ``key`` (new tasks and perturbations are drawn from it: the "tasks" of the step) and
    applies the estimated meta-gradient. Clip the meta-gradient by composition, e.g.
    ``optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))``. A truncation whose
    meta-loss or gradient is not finite is left out of the mean (``nonfinite_tasks`` counts
    them) and its run starts a new episode; if every one is, ``loss`` is NaN and
    ``metajax.experiment.meta_train`` stops with a ``FloatingPointError`` naming the step.

    Args:
        estimator: e.g. :func:`truncated_backprop`, :func:`evolution_strategies`, :func:`pes`.
        optimizer: the outer Optax optimizer.
        key: PRNG key of the initial runs (``init``).

    Returns:
        ``MetaLearner(init, step)``; ``init(theta) -> LOptState``.

    Examples:
        >>> import jax, optax
        >>> from metajax import lopt
        >>> opt = lopt.adam_schedule(num_knots=2)
        >>> est = lopt.truncated_backprop(opt, lopt.quadratic_family(dim=3), num_steps=8,
        ...                               truncation=4, n_tasks=2)
        >>> trainer = lopt.meta_trainer(est, optax.adam(1e-2), key=jax.random.PRNGKey(0))
        >>> state = trainer.init(opt.init(jax.random.PRNGKey(1)))
        >>> state, metrics = jax.jit(trainer.step)(state, jax.random.PRNGKey(2))
        >>> int(state.step), sorted(metrics)
        (1, ['episodes_started', 'grad_norm', 'loss', 'nonfinite_tasks'])
    """
    if not isinstance(estimator, GradientEstimator):
        raise TypeError(f"`estimator` must be a metajax.lopt.GradientEstimator; got "
                        f"{type(estimator).__name__}.")
    key = jnp.asarray(key)

    def init(theta) -> LOptState:
        return LOptState(theta, optimizer.init(theta), jnp.zeros([], jnp.int32),
                         estimator.init(theta, key))

    def step(state: LOptState, step_key: jax.Array):
        runs, grad, metrics = estimator.estimate(state.params, state.runs, step_key)
        updates, opt_state = optimizer.update(grad, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "grad_norm": optax.tree.norm(grad)}
        return LOptState(params, opt_state, state.step + 1, runs), metrics

    return MetaLearner(init=init, step=step)
