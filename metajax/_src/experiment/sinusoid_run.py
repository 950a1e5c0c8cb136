"""Sinusoid-regression experiments: any meta-learner on an MLP vs scratch and pretrained."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from metajax import losses
from metajax._src.core.adapt import adapt
from metajax._src.core.types import Adaptation, MetaLearner, Params, adaptation_of
from metajax._src.experiment import plots
from metajax._src.experiment.comparison import compare_with_baselines
from metajax._src.experiment.config import (
    ConfigError,
    Count,
    MetaBatch,
    NonNegative,
    PositiveRate,
    Rate,
    Rates,
    Size,
    StepCounts,
    Steps,
    TestTasks,
    one_of,
    validate_config,
)
from metajax._src.experiment.run_io import RunWriter, read_records
from metajax._src.tasks.sinusoid import sinusoid, sinusoid_curve
from metajax._src.tasks.streams import split_key
from metajax.models import MLP

ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh}


@dataclasses.dataclass(frozen=True)
class SinusoidConfig:
    """Shared fields of the sinusoid experiments; defaults are MAML's setup (App. C).

    Training tasks have ``k_shot`` support and ``n_query`` query points; held-out tasks
    ``eval_k_shot`` and ``eval_n_query``. Experiments subclass it to add their method's fields
    and change defaults.
    """

    seed: int = 0
    num_steps: Steps = 70_000
    meta_batch: MetaBatch = 25
    k_shot: Count = 10
    n_query: Count = 10
    inner_steps: Steps = 1
    inner_lr: Rate = 0.01
    outer_lr: PositiveRate = 1e-3
    hidden: Size = (40, 40)
    eval_k_shot: Count = 5
    eval_n_query: Count = 100
    eval_steps: StepCounts = (1, 5, 10)
    test_tasks: TestTasks = 1000
    val_tasks: Count = 300
    val_every: Steps = 5_000
    log_every: Steps = 1_000
    steps_per_call: Steps = 1_000
    pretrain_steps: NonNegative = 70_000
    baseline_lrs: Rates = (0.001, 0.003, 0.01, 0.03, 0.1)
    plot_tasks: NonNegative = 4
    activation: one_of("relu", "tanh") = "relu"  # the MLP's nonlinearity: one of ACTIVATIONS

    def __post_init__(self):
        validate_config(self)

    def validate(self):
        """Rules across fields (the fields' own are in their annotations)."""
        if self.plot_tasks > self.test_tasks:
            raise ConfigError(f"plot_tasks: expected at most test_tasks ({self.test_tasks}); "
                              f"got {self.plot_tasks}.")


def sinusoid_mlp(config: SinusoidConfig) -> tuple[MLP, Callable, Callable, Callable]:
    """The MLP ``1 -> hidden... -> 1`` of ``config`` as ``(model, apply, loss_fn, init_fn)``.

    ``loss_fn`` is the MSE ``loss_fn(params, (x, y))`` and ``init_fn(key)`` the Flax parameters.
    The last layer (the head, for ANIL) is ``f"dense_{len(config.hidden)}"``.

    Examples:
        >>> model, apply, loss_fn, init_fn = sinusoid_mlp(SinusoidConfig(hidden=(8,)))
        >>> sorted(init_fn(jax.random.PRNGKey(0)))
        ['dense_0', 'dense_1']
    """
    if config.activation not in ACTIVATIONS:
        raise ValueError(f"`activation` must be one of {sorted(ACTIVATIONS)}; got "
                         f"{config.activation!r}.")
    model = MLP(features=(*config.hidden, 1), activation=ACTIVATIONS[config.activation])

    def apply(params: Params, x: jax.Array) -> jax.Array:
        return model.apply({"params": params}, x)

    def init_fn(key: jax.Array) -> Params:
        return model.init(key, jnp.zeros((1, 1)))["params"]

    return model, apply, losses.mse(apply), init_fn


def run_sinusoid(
    config: SinusoidConfig,
    learner: MetaLearner,
    *,
    name: str,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Meta-trains ``learner`` on sinusoids and compares it with scratch and pretrained.

    A thin wrapper of :func:`metajax.experiment.compare_with_baselines` on the MLP of
    :func:`sinusoid_mlp` with train/val/test task streams from ``config.seed``. Test-time
    adaptation of the meta-learner is its ``learner.adaptation`` if it has one, else SGD at
    ``config.inner_lr``. With ``out_dir`` it writes ``metrics.jsonl``,
    ``summary.json``, ``learning_curve.png`` and (``plot_tasks > 0``) ``tasks.png``.

    Args:
        config: the experiment's config (a :class:`SinusoidConfig` or subclass).
        learner: the meta-learner, built on ``sinusoid_mlp(config)``'s ``loss_fn``.
        name: the method's name in the results.
        out_dir: where run outputs go (optional).
        progress: show progress bars.

    Returns:
        The comparison's summary (``results[method][steps] = {mean, ci95, n}``).
    """
    _, apply, loss_fn, init_fn = sinusoid_mlp(config)
    eval_tasks = functools.partial(sinusoid, k_shot=config.eval_k_shot,
                                   n_query=config.eval_n_query)
    test, test_params = eval_tasks(split_key(config.seed, "test"), config.test_tasks,
                                   return_params=True)
    writer = RunWriter(out_dir) if out_dir is not None else None
    result = compare_with_baselines(
        learner=learner, name=name, loss_fn=loss_fn, init_fn=init_fn,
        sample_train=functools.partial(sinusoid, n_tasks=config.meta_batch,
                                       k_shot=config.k_shot, n_query=config.n_query),
        val_tasks=eval_tasks(split_key(config.seed, "val"), config.val_tasks),
        test_tasks=test, seed=config.seed, num_steps=config.num_steps,
        tasks_per_step=config.meta_batch, inner_lr=config.inner_lr,
        eval_steps=config.eval_steps, val_adapt_steps=config.inner_steps,
        pretrain_steps=config.pretrain_steps, baseline_lrs=config.baseline_lrs,
        steps_per_call=config.steps_per_call, log_every=config.log_every,
        val_every=config.val_every, writer=writer, progress=progress)
    if writer is not None and config.plot_tasks > 0:
        adaptation = adaptation_of(learner, result.train.best_params, lr=config.inner_lr)
        _plot(writer, result, name, adaptation, apply, loss_fn, test, test_params, config)
    return result.summary


def _plot(writer, result, name, adaptation, apply, loss_fn, test, test_params, config):
    plots.plot_learning_curve(read_records(writer.path("metrics.jsonl")),
                              writer.path("learning_curve.png"))
    n = config.plot_tasks
    support = jax.tree.map(lambda a: a[:n], test.support)
    x_grid = jnp.linspace(-5.0, 5.0, 200)
    sub = jax.tree.map(lambda a: a[:n], test_params)
    y_true = np.asarray(sinusoid_curve(sub, jnp.broadcast_to(x_grid[None, :, None],
                                                             (n, 200, 1))))[..., 0]
    learned = result.params[name]
    preds = {"meta-init": np.asarray(apply(learned, x_grid[:, None]))[None, :, 0].repeat(n, 0)}
    steps = max(config.eval_steps)
    pretrained = Adaptation(None, result.summary["adapt_lr"]["pretrained"])
    for method, how in ((name, adaptation), ("pretrained", pretrained)):
        fine_tune = functools.partial(adapt, loss_fn, steps=steps, lr=how.lr,
                                      inner_opt=how.inner_opt)
        preds[f"{method}, {steps} steps"] = plots.predict_adapted(
            apply, lambda p, s, f=fine_tune: f(p, s), result.params[method], support, x_grid)
    plots.plot_regression_tasks(writer.path("tasks.png"), x_support=np.asarray(support[0]),
                                y_support=np.asarray(support[1]), x_grid=np.asarray(x_grid),
                                y_true=y_true, predictions=preds)
