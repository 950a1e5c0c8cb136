"""Learned optimizers: meta-parameters ``theta`` define an ordinary Optax optimizer.

A :class:`LearnedOptimizer` is ``(init, opt_fn)``: ``theta = init(key)`` and
``opt_fn(theta, num_steps=N)`` an ``optax.GradientTransformation``, usable in any Optax loop
and as the inner optimizer of :func:`metajax.adapt` or :func:`metajax.maml`. Meta-training
estimates the gradient of a meta-loss of inner training on a :class:`TaskFamily` with
:func:`truncated_backprop`, :func:`evolution_strategies` or :func:`pes` and applies it with any
Optax optimizer through :func:`meta_trainer` (a :class:`metajax.MetaLearner`).

Examples:
    >>> import jax, optax
    >>> from metajax import lopt
    >>> opt = lopt.mlp_optimizer(hidden=(8,))
    >>> family = lopt.quadratic_family(dim=4)
    >>> est = lopt.truncated_backprop(opt, family, num_steps=20, truncation=10, n_tasks=4)
    >>> trainer = lopt.meta_trainer(est, optax.adam(1e-3), key=jax.random.PRNGKey(0))
    >>> state = trainer.init(opt.init(jax.random.PRNGKey(1)))
    >>> step = jax.jit(trainer.step)
    >>> for t in range(3):
    ...     state, metrics = step(state, jax.random.PRNGKey(t))
    >>> tx = opt.opt_fn(state.params, num_steps=20)   # an optax.GradientTransformation
"""

from metajax._src.lopt.base import LearnedOptimizer, check_theta
from metajax._src.lopt.estimators import (
    AntitheticState,
    GradientEstimator,
    evolution_strategies,
    pes,
    truncated_backprop,
)
from metajax._src.lopt.evaluate import training_curves
from metajax._src.lopt.families import (
    TaskFamily,
    linear_regression_family,
    mlp_classification_family,
    quadratic_family,
)
from metajax._src.lopt.hyper import adam_schedule
from metajax._src.lopt.learner import LOptState, meta_trainer
from metajax._src.lopt.lstm import LSTMOptState, log_sign_preprocess, lstm_optimizer
from metajax._src.lopt.mlp import MLPOptState, mlp_features, mlp_optimizer
from metajax._src.lopt.unroll import UnrollState, inner_steps, start_episode

__all__ = [
    "AntitheticState",
    "GradientEstimator",
    "LOptState",
    "LSTMOptState",
    "LearnedOptimizer",
    "MLPOptState",
    "TaskFamily",
    "UnrollState",
    "adam_schedule",
    "check_theta",
    "evolution_strategies",
    "inner_steps",
    "linear_regression_family",
    "log_sign_preprocess",
    "lstm_optimizer",
    "meta_trainer",
    "mlp_classification_family",
    "mlp_features",
    "mlp_optimizer",
    "pes",
    "quadratic_family",
    "start_episode",
    "training_curves",
    "truncated_backprop",
]
