"""Meta-gradient estimators over truncated unrolls: truncated backprop, ES and PES."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from metajax._src.core.checks import check_int
from metajax._src.lopt.base import LearnedOptimizer
from metajax._src.lopt.families import TaskFamily
from metajax._src.lopt.unroll import (
    UnrollState,
    all_finite,
    inner_steps,
    renew_finished,
    start_episode,
    start_runs,
    tree_where,
)


class GradientEstimator(NamedTuple):
    """A meta-gradient estimator over a batch of truncated inner-training runs.

    Attributes:
        init: ``init(theta, key) -> state``, the batch of runs (staggered in time).
        estimate: ``estimate(theta, state, key) -> (state, grad, metrics)``: the runs advance
            by one truncation; ``grad`` estimates the gradient of the mean meta-loss over the
            batch; ``metrics`` has ``loss`` (the mean meta-loss) and ``nonfinite_tasks``.
    """

    init: Callable[[Any, jax.Array], Any]
    estimate: Callable[[Any, Any, jax.Array], tuple[Any, Any, dict]]


class AntitheticState(NamedTuple):
    """The runs of ES / PES: one per perturbation sign, and the accumulated perturbation."""

    pos: UnrollState
    neg: UnrollState
    accumulated: Any


def _check(lopt, family, num_steps, truncation, n_tasks):
    if not isinstance(lopt, LearnedOptimizer):
        raise TypeError(f"`lopt` must be a metajax.lopt.LearnedOptimizer; got "
                        f"{type(lopt).__name__}.")
    if not isinstance(family, TaskFamily):
        raise TypeError(f"`family` must be a metajax.lopt.TaskFamily; got "
                        f"{type(family).__name__}.")
    num_steps = check_int("num_steps", num_steps, 1)
    truncation = check_int("truncation", truncation, 1)
    if truncation > num_steps:
        raise ValueError(f"`truncation` ({truncation}) is longer than the unroll "
                         f"(`num_steps`={num_steps}).")
    if num_steps % truncation:
        raise ValueError(f"`truncation` ({truncation}) must divide `num_steps` ({num_steps}): "
                         "episodes end at truncation boundaries.")
    return num_steps, truncation, check_int("n_tasks", n_tasks, 1)


def _end_if_diverged(state: UnrollState, loss, grad, num_steps: int) -> UnrollState:
    """Marks a run whose truncation gave a non-finite loss or gradient as finished, so that it
    starts a new episode at the next estimate."""
    ok = jnp.isfinite(loss) & all_finite(grad)
    return state._replace(step=jnp.where(ok, state.step, num_steps))


def _masked_mean(ok: jax.Array, values: Any) -> Any:
    """Mean over the leading (task) axis of the entries where ``ok``; 0 where none is."""
    n = jnp.maximum(jnp.sum(ok), 1)
    return jax.tree.map(
        lambda v: jnp.sum(jnp.where(ok.reshape((-1,) + (1,) * (v.ndim - 1)), v, 0), 0) / n,
        values)


def _summarize(losses: jax.Array, grads: Any, renewed: jax.Array):
    ok = jnp.isfinite(losses) & jax.vmap(all_finite)(grads)
    loss = jnp.where(jnp.any(ok), _masked_mean(ok, losses), jnp.nan)
    return _masked_mean(ok, grads), {"loss": loss,
                                     "nonfinite_tasks": jnp.sum(~ok).astype(jnp.float32),
                                     "episodes_started": jnp.sum(renewed).astype(jnp.float32)}


def truncated_backprop(lopt: LearnedOptimizer, family: TaskFamily, *, num_steps: int,
                       truncation: int, n_tasks: int,
                       meta_loss: Callable[[jax.Array], jax.Array] = jnp.mean,
                       stagger: bool = True) -> GradientEstimator:
    """Truncated backpropagation through inner training (TBPTT), ``vmap``-ped over tasks.

    Each of ``n_tasks`` runs trains a task of ``family`` for ``num_steps`` steps with
    ``lopt.opt_fn(theta, num_steps=num_steps)``; one ``estimate`` advances every run by
    ``truncation`` steps and differentiates ``meta_loss`` of their training losses through
    those steps (through the inner gradients too: second order), the state entering the
    truncation held fixed. Biased towards short horizons (the truncation), cheap.

    Args:
        lopt: the learned optimizer.
        family: the training problems.
        num_steps: length of an inner training run (an episode); a multiple of ``truncation``.
        truncation: inner steps per estimate.
        n_tasks: runs in the batch.
        meta_loss: ``meta_loss(losses[truncation]) -> scalar`` (mean by default; e.g.
            ``lambda l: l[-1]`` for the last loss, ``lambda l: jnp.mean(jnp.log(l))``).
        stagger: start the runs at random truncations of their episodes.

    Returns:
        A :class:`GradientEstimator`.
    """
    num_steps, truncation, n_tasks = _check(lopt, family, num_steps, truncation, n_tasks)

    def init(theta, key):
        return start_runs(family, lopt.opt_fn(theta, num_steps=num_steps), key, n_tasks,
                          num_steps=num_steps, truncation=truncation, stagger=stagger)

    def one(theta, state: UnrollState, key):
        state, renewed = renew_finished(family, lopt.opt_fn(theta, num_steps=num_steps), state,
                                        key, num_steps=num_steps)

        def objective(theta):
            new, losses = inner_steps(family, lopt.opt_fn(theta, num_steps=num_steps), state,
                                      length=truncation)
            return meta_loss(losses), new

        (loss, new), grad = jax.value_and_grad(objective, has_aux=True)(theta)
        return _end_if_diverged(new, loss, grad, num_steps), grad, loss, renewed

    def estimate(theta, state, key):
        new, grads, losses, renewed = jax.vmap(one, in_axes=(None, 0, 0))(
            theta, state, jax.random.split(key, n_tasks))
        grad, metrics = _summarize(losses, grads, renewed)
        return new, grad, metrics

    return GradientEstimator(init, estimate)


def _antithetic(lopt, family, *, num_steps, truncation, n_tasks, std, meta_loss, stagger,
                accumulate: bool) -> GradientEstimator:
    num_steps, truncation, n_tasks = _check(lopt, family, num_steps, truncation, n_tasks)
    if not std > 0:
        raise ValueError(f"`std` must be > 0; got {std!r}.")

    def init(theta, key):
        runs = start_runs(family, lopt.opt_fn(theta, num_steps=num_steps), key, n_tasks,
                          num_steps=num_steps, truncation=truncation, stagger=stagger)
        zeros = jax.tree.map(lambda t: jnp.zeros((n_tasks, *jnp.shape(t)), jnp.result_type(t)),
                             theta)
        return AntitheticState(runs, runs, zeros)

    def one(theta, state: AntitheticState, key):
        k_new, k_eps = jax.random.split(key)
        renewed = ((state.pos.step >= num_steps) | ~all_finite(state.pos.params)
                   | ~all_finite(state.neg.params))
        # both signs start an episode together, on the same task from the same initialisation
        fresh = start_episode(family, lopt.opt_fn(theta, num_steps=num_steps), k_new)
        pos, neg = tree_where(renewed, fresh, state.pos), tree_where(renewed, fresh, state.neg)
        leaves, treedef = jax.tree.flatten(theta)
        keys = jax.random.split(k_eps, len(leaves))
        eps = treedef.unflatten([std * jax.random.normal(k, jnp.shape(a), jnp.result_type(a))
                                 for k, a in zip(keys, leaves, strict=True)])
        pos, lp = inner_steps(family, lopt.opt_fn(jax.tree.map(jnp.add, theta, eps),
                                                  num_steps=num_steps), pos, length=truncation)
        neg, ln = inner_steps(family, lopt.opt_fn(jax.tree.map(jnp.subtract, theta, eps),
                                                  num_steps=num_steps), neg, length=truncation)
        if accumulate:
            acc = jax.tree.map(lambda a, e: jnp.where(renewed, 0, a) + e, state.accumulated, eps)
        else:
            acc = eps
        lp, ln = meta_loss(lp), meta_loss(ln)
        grad = jax.tree.map(lambda a: a * (lp - ln) / (2 * std**2), acc)
        loss = (lp + ln) / 2
        pos = _end_if_diverged(pos, loss, grad, num_steps)
        neg = _end_if_diverged(neg, loss, grad, num_steps)
        return AntitheticState(pos, neg, acc), grad, loss, renewed

    def estimate(theta, state, key):
        new, grads, losses, renewed = jax.vmap(one, in_axes=(None, 0, 0))(
            theta, state, jax.random.split(key, n_tasks))
        grad, metrics = _summarize(losses, grads, renewed)
        return new, grad, metrics

    return GradientEstimator(init, estimate)


def evolution_strategies(lopt: LearnedOptimizer, family: TaskFamily, *, num_steps: int,
                         n_tasks: int, std: float = 0.01, truncation: int | None = None,
                         meta_loss: Callable[[jax.Array], jax.Array] = jnp.mean,
                         stagger: bool = True) -> GradientEstimator:
    """Antithetic evolution strategies: ``E[eps (L(theta + eps) - L(theta - eps))] / (2 std^2)``.

    Each of ``n_tasks`` pairs draws ``eps ~ N(0, std^2 I)`` and trains the same task from the
    same initialisation with ``theta + eps`` and ``theta - eps``. With ``truncation=None`` (the
    default) every estimate is a whole episode of ``num_steps``: full ES, an unbiased estimate
    of the gradient of the Gaussian-smoothed meta-loss, with no backpropagation through the
    unroll. With a shorter ``truncation`` each truncation draws a new ``eps`` (truncated ES,
    biased; :func:`pes` removes the bias).

    Args:
        lopt: the learned optimizer.
        family: the training problems.
        num_steps: episode length.
        n_tasks: antithetic pairs per estimate.
        std: perturbation standard deviation.
        truncation: inner steps per estimate (``None``: ``num_steps``).
        meta_loss: ``meta_loss(losses) -> scalar`` over a truncation's training losses.
        stagger: start the runs at random truncations of their episodes.

    Returns:
        A :class:`GradientEstimator`.
    """
    return _antithetic(lopt, family, num_steps=num_steps,
                       truncation=num_steps if truncation is None else truncation,
                       n_tasks=n_tasks, std=std, meta_loss=meta_loss, stagger=stagger,
                       accumulate=False)


def pes(lopt: LearnedOptimizer, family: TaskFamily, *, num_steps: int, truncation: int,
        n_tasks: int, std: float = 0.01, meta_loss: Callable[[jax.Array], jax.Array] = jnp.mean,
        stagger: bool = True) -> GradientEstimator:
    """Persistent evolution strategies (Vicol et al. 2021): unbiased over truncated unrolls.

    As truncated ES, but each pair keeps the sum ``xi`` of the perturbations applied since its
    episode began and weighs the loss difference of a truncation by ``xi`` instead of the last
    ``eps``: ``xi (L+ - L-) / (2 std^2)``. Every perturbation so far shaped that truncation's
    loss, so this estimates the gradient of its Gaussian-smoothed expectation without bias.

    Args:
        lopt: the learned optimizer.
        family: the training problems.
        num_steps: episode length; a multiple of ``truncation``.
        truncation: inner steps per estimate.
        n_tasks: antithetic pairs.
        std: perturbation standard deviation.
        meta_loss: ``meta_loss(losses[truncation]) -> scalar``.
        stagger: start the runs at random truncations of their episodes.

    Returns:
        A :class:`GradientEstimator`.
    """
    return _antithetic(lopt, family, num_steps=num_steps, truncation=truncation,
                       n_tasks=n_tasks, std=std, meta_loss=meta_loss, stagger=stagger,
                       accumulate=True)
