"""Training objectives of neural processes, each for one task: ``objective(params, task, key)``.

The apply function is ``apply(params, context, x_target, *, key=None, target=None) ->
NPOutput`` (:func:`metajax.models.process_apply` makes one from a Flax module).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from metajax._src.amortized.gaussian import gaussian_kl, gaussian_log_prob, masked_mean
from metajax._src.core.types import Metrics, Params, TaskBatch

ProcessApply = Callable[..., object]
ProcessObjective = Callable[[Params, TaskBatch, jax.Array], tuple[jax.Array, Metrics]]


def target_log_lik(y: jax.Array, mean: jax.Array, std: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over the valid targets of ``log N(y | mean, std**2)`` (summed over ``y``'s dims)."""
    return masked_mean(gaussian_log_prob(y, mean, std).sum(-1), mask)


def conditional_nll(apply: ProcessApply) -> ProcessObjective:
    """The conditional neural process's objective: the mean target negative log-likelihood.

    With a latent path the latent is drawn from its prior given the context.

    Args:
        apply: the model's ``apply(params, context, x_target, *, key, target)``.

    Returns:
        ``objective(params, task, key) -> (loss, {"log_lik": ...})`` for one task, a
        ``TaskBatch(support=Points, query=Points)`` without the task axis.
    """

    def objective(params, task, key):
        context, target = task
        out = apply(params, context, target.x, key=key)
        log_lik = target_log_lik(target.y, out.mean, out.std, target.mask)
        return -log_lik, {"log_lik": log_lik}

    return objective


def elbo(apply: ProcessApply) -> ProcessObjective:
    """The latent neural process's objective: minus its evidence lower bound per target point.

    ``loss = -mean_t log p(y_t | z, x_t) + KL(q(z | targets) || q(z | context)) / n_targets``
    with ``z`` drawn from the posterior given the targets (which include the context), as in
    Garnelo et al. (2018b) and Kim et al. (2019).

    Args:
        apply: the model's ``apply``; the model must have a latent path.

    Returns:
        ``objective(params, task, key) -> (loss, {"log_lik", "kl"})`` for one task.
    """

    def objective(params, task, key):
        context, target = task
        out = apply(params, context, target.x, key=key, target=target)
        if out.posterior is None:
            raise ValueError("`elbo` needs a model with a latent path (NeuralProcess(latent=...));"
                             " use `conditional_nll` for a deterministic one.")
        log_lik = target_log_lik(target.y, out.mean, out.std, target.mask)
        kl = jnp.sum(gaussian_kl(*out.posterior, *out.prior))
        n_targets = jnp.maximum(jnp.sum(jnp.asarray(target.mask, log_lik.dtype)), 1.0)
        return kl / n_targets - log_lik, {"log_lik": log_lik, "kl": kl}

    return objective
