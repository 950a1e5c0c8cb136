"""Learned-optimizer experiments: meta-train on a task family, test against tuned Optax optimizers.

:func:`run_lopt` is the driver of ``lopt_linear_regression``, ``lopt_quadratics`` and
``lopt_digits_mlp``: outer training with validation, checkpoints and ``--resume``
(:func:`meta_train`), SGD / momentum / Adam with learning rates tuned on meta-validation tasks
(a grid), then every optimizer on the same held-out tasks at the trained horizon and at
multiples of it, with the closed-form optimum where the family has one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax._src.core.evaluate import mean_ci95
from metajax._src.experiment import plots
from metajax._src.experiment.config import (
    ConfigError,
    Count,
    PositiveRate,
    Rate,
    Rates,
    Rule,
    Size,
    Steps,
    TestTasks,
    one_of,
    validate_config,
)
from metajax._src.experiment.run_io import RunWriter, read_records
from metajax._src.experiment.training import meta_train
from metajax._src.lopt.estimators import evolution_strategies, pes, truncated_backprop
from metajax._src.lopt.evaluate import training_curves
from metajax._src.lopt.families import TaskFamily
from metajax._src.lopt.hyper import adam_schedule
from metajax._src.lopt.learner import meta_trainer
from metajax._src.lopt.lstm import lstm_optimizer
from metajax._src.lopt.mlp import mlp_optimizer
from metajax._src.tasks.streams import split_key

OPTIMIZERS = ("mlp", "lstm", "adam_schedule")
ESTIMATORS = ("tbptt", "es", "pes")
# the meta-objective of one truncation's training losses (``final``: the last of them)
META_LOSSES = {"mean": jnp.mean, "mean_log": lambda losses: jnp.mean(jnp.log(losses + 1e-8)),
               "final": lambda losses: losses[-1]}
BASELINES = {"sgd": optax.sgd, "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
             "adam": optax.adam}


@dataclasses.dataclass(frozen=True)
class LOptConfig:
    """Shared fields of the learned-optimizer experiments.

    ``optimizer`` is ``mlp``, ``lstm`` or ``adam_schedule``; ``estimator`` ``tbptt``
    (truncated backprop), ``es`` (antithetic ES over whole episodes) or ``pes``; ``meta_loss``
    ``mean`` (of a truncation's training losses), ``mean_log`` or ``final`` (the last loss of
    each truncation: with ``truncation == num_steps``, the final training loss). ``num_steps``
    is the inner horizon meta-trained on; held-out tasks are trained for ``num_steps`` times
    every entry of ``horizons``, and the learned optimizer is told the run's length (its
    fraction-of-training feature stretches). Baseline learning rates are tuned on the
    validation tasks for the final training loss at ``num_steps``.
    """

    seed: int = 0
    optimizer: one_of(*OPTIMIZERS) = "mlp"
    estimator: one_of(*ESTIMATORS) = "tbptt"
    meta_loss: one_of(*META_LOSSES) = "mean_log"
    num_steps: Steps = 100
    truncation: Steps = 20
    n_tasks: Count = 16
    outer_steps: Steps = 2_000
    outer_lr: PositiveRate = 1e-3
    clip_grad_norm: Rate = 1.0
    es_std: PositiveRate = 0.01
    hidden: Size = (32, 32)
    num_knots: Count = 10
    val_tasks: Count = 64
    test_tasks: TestTasks = 256
    baseline_lrs: Rates = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)
    horizons: Annotated[tuple[int, ...], Rule(low=1, high=10**4)] = (1, 2, 10)
    log_every: Steps = 100
    val_every: Steps = 500
    steps_per_call: Steps = 50

    def __post_init__(self):
        validate_config(self)

    def validate(self):
        """Rules across fields (the fields' own are in their annotations)."""
        if self.truncation > self.num_steps or self.num_steps % self.truncation:
            raise ConfigError(f"truncation: expected a divisor of num_steps "
                              f"({self.num_steps}); got {self.truncation}.")


def learned_optimizer(config: LOptConfig):
    if config.optimizer == "mlp":
        return mlp_optimizer(hidden=config.hidden)
    if config.optimizer == "lstm":
        return lstm_optimizer()
    return adam_schedule(num_knots=config.num_knots)


def estimator_of(config: LOptConfig, lopt, family: TaskFamily):
    common = dict(num_steps=config.num_steps, n_tasks=config.n_tasks,
                  meta_loss=META_LOSSES[config.meta_loss])
    if config.estimator == "tbptt":
        return truncated_backprop(lopt, family, truncation=config.truncation, **common)
    if config.estimator == "es":
        return evolution_strategies(lopt, family, std=config.es_std, **common)
    return pes(lopt, family, truncation=config.truncation, std=config.es_std, **common)


def _final_and_mean(curves: dict, num_steps: int) -> dict[str, np.ndarray]:
    train = np.asarray(curves["train"][:, :num_steps + 1])
    out = {"final_loss": train[:, -1], "mean_loss": train[:, :-1].mean(1)}
    if "test" in curves:
        out["final_test_loss"] = np.asarray(curves["test"][:, num_steps])
    return out


def paired_comparison(finals: dict, learned: str) -> dict:
    """The learned optimizer against each baseline on the same test tasks.

    ``finals[method][horizon]`` holds per-task final losses. For every other method and
    horizon: ``diff``, the mean ± 95% CI over tasks of ``learned - baseline`` (negative: the
    learned optimizer ends lower on average, the experiments' metric), ``log10_ratio``, the
    same for ``log10(learned / baseline)`` (how many decades, task by task), and
    ``frac_lower``, the fraction of tasks where it ends lower.
    """
    out = {}
    for name, by_h in finals.items():
        if name == learned:
            continue
        out[name] = {}
        for h, base in by_h.items():
            mine, base = np.asarray(finals[learned][h]), np.asarray(base)
            ratio = (np.log10(np.maximum(mine, 1e-30))
                     - np.log10(np.maximum(base, 1e-30)))
            out[name][h] = {"diff": mean_ci95(mine - base)._asdict(),
                            "log10_ratio": mean_ci95(ratio)._asdict(),
                            "frac_lower": float(np.mean(mine < base))}
    return out


def format_paired(summary: dict) -> str:
    """A markdown table of ``summary["paired"]`` (see :func:`paired_comparison`)."""
    paired = summary["paired"]
    horizons = list(next(iter(paired.values())))
    lines = ["| against | " + " | ".join(f"{h} steps" for h in horizons) + " |",
             "|---|" + "---|" * len(horizons)]
    for name, by_h in paired.items():
        cells = [f"{v['diff']['mean']:+.3g} ± {v['diff']['ci95']:.2g}; "
                 f"{v['log10_ratio']['mean']:+.2f} ± {v['log10_ratio']['ci95']:.2f} decades; "
                 f"{100 * v['frac_lower']:.0f}% of tasks lower" for v in by_h.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _keys(seed: int, split: str, n: int) -> jax.Array:
    return jax.random.split(split_key(seed, split), n)


def tune_baselines(family: TaskFamily, keys: jax.Array, *, num_steps: int,
                   lrs: tuple[float, ...]) -> dict[str, dict]:
    """For each of SGD, momentum and Adam: the rate of ``lrs`` with the lowest mean final
    training loss at ``num_steps`` on the tasks of ``keys`` (non-finite runs lose)."""
    tuned = {}
    for name, make in BASELINES.items():
        scores = {}
        # the rate is an argument of the compiled run: one compilation per optimizer
        run = jax.jit(lambda k, lr, m=make: training_curves(m(lr), family, k,
                                                             num_steps=num_steps))
        for lr in lrs:
            final = np.asarray(run(keys, jnp.float32(lr))["train"][:, -1])
            scores[lr] = float(np.mean(final)) if np.all(np.isfinite(final)) else np.inf
        best = min(scores, key=scores.get)
        tuned[name] = {"lr": best, "val_final_loss": scores[best],
                       "at_grid_edge": best in (min(lrs), max(lrs)),
                       "grid": {str(k): v for k, v in scores.items()}}
    return tuned


def run_lopt(config: LOptConfig, family: TaskFamily, *, out_dir: str | Path | None = None,
             progress: bool = True) -> dict:
    """Meta-trains ``config.optimizer`` on ``family`` and tests it against tuned baselines.

    With ``out_dir``: ``metrics.jsonl`` (meta-loss, validation loss against training
    seconds), checkpoints (``--resume``), ``summary.json``, ``learning_curve.png`` and
    ``loss_curves.png`` (mean log training loss of every optimizer over the longest horizon).

    Returns:
        ``{"metric": "final_loss", "results": {method: {"1x": {mean, ci95, n}, ...}}, ...}``,
        methods the learned optimizer, ``sgd``, ``momentum``, ``adam`` and (where known)
        ``optimum``; also ``mean_loss`` (mean over the run's steps), ``log10_final_loss``,
        ``final_test_loss`` where the family has held-out data, and ``paired`` (the learned
        optimizer against each baseline task by task, :func:`paired_comparison`).
    """
    lopt = learned_optimizer(config)
    key = jax.random.PRNGKey(config.seed)
    theta0 = lopt.init(jax.random.fold_in(key, 1))
    outer = optax.adam(config.outer_lr)
    if config.clip_grad_norm > 0:
        outer = optax.chain(optax.clip_by_global_norm(config.clip_grad_norm), outer)
    trainer = meta_trainer(estimator_of(config, lopt, family), outer,
                           key=jax.random.fold_in(key, 2))
    val_keys = _keys(config.seed, "val", config.val_tasks)
    val_curves = jax.jit(lambda theta: training_curves(
        lopt.opt_fn(theta, num_steps=config.num_steps), family, val_keys,
        num_steps=config.num_steps))

    def validate(theta):
        final = np.asarray(val_curves(theta)["train"][:, -1])
        return {"final_loss": float(np.mean(final)) if np.all(np.isfinite(final)) else np.inf}

    writer = RunWriter(out_dir) if out_dir is not None else None
    checkpointer = None
    if writer is not None:
        checkpointer = writer.checkpointer(config.optimizer)
        steps = checkpointer.steps()
        writer.drop_records_after(config.optimizer, steps[-1] if steps else 0)
    result = meta_train(
        trainer.step, trainer.init(theta0), lambda k: k, key=split_key(config.seed, "train"),
        num_steps=config.outer_steps, tasks_per_step=config.n_tasks,
        steps_per_call=config.steps_per_call, log_every=config.log_every, validate=validate,
        val_every=config.val_every, val_metric="final_loss",
        on_record=(lambda r: writer.log({"method": config.optimizer, **r})) if writer else None,
        checkpointer=checkpointer, progress=progress, desc=config.optimizer)
    tuned = tune_baselines(family, val_keys, num_steps=config.num_steps,
                           lrs=tuple(config.baseline_lrs))
    test_keys = _keys(config.seed, "test", config.test_tasks)
    longest = config.num_steps * max(config.horizons)
    optimizers: dict[str, Callable[[int], optax.GradientTransformation]] = {
        config.optimizer: lambda n: lopt.opt_fn(result.best_params, num_steps=n),
        **{name: (lambda n, m=BASELINES[name], lr=t["lr"]: m(lr)) for name, t in tuned.items()}}
    tables: dict[str, dict] = {"final_loss": {}, "mean_loss": {}, "log10_final_loss": {}}
    mean_log_curves, finals = {}, {}
    for name, make in optimizers.items():
        if name != config.optimizer:  # a fixed rate: the longest run holds every horizon
            longest_curves = jax.jit(lambda k, m=make: training_curves(
                m(longest), family, k, num_steps=longest))(test_keys)
        for h in config.horizons:
            n = config.num_steps * h
            if name == config.optimizer:  # told the run's length: one run per horizon
                curves = jax.jit(lambda k, n=n: training_curves(make(n), family, k,
                                                                num_steps=n))(test_keys)
            else:
                curves = longest_curves
            scores = _final_and_mean(curves, n)
            scores["log10_final_loss"] = np.log10(np.maximum(scores["final_loss"], 1e-30))
            finals.setdefault(name, {})[f"{h}x"] = scores["final_loss"]
            for metric, values in scores.items():
                tables.setdefault(metric, {}).setdefault(name, {})[f"{h}x"] = (
                    mean_ci95(values)._asdict())
            if n == longest:
                mean_log_curves[name] = np.mean(np.log10(np.maximum(
                    np.asarray(curves["train"]), 1e-30)), 0)
            if "optimum" in curves and name == config.optimizer:
                optimum = np.asarray(curves["optimum"])
                for metric in ("final_loss", "mean_loss"):
                    tables[metric].setdefault("optimum", {})[f"{h}x"] = mean_ci95(
                        optimum)._asdict()
                tables["log10_final_loss"].setdefault("optimum", {})[f"{h}x"] = mean_ci95(
                    np.log10(np.maximum(optimum, 1e-30)))._asdict()
    summary = {
        "metric": "final_loss",
        "results": tables.pop("final_loss"),
        **tables,
        "paired": paired_comparison(finals, config.optimizer),
        "tuned_lrs": {k: v["lr"] for k, v in tuned.items()},
        "tuning": tuned,
        "num_test_tasks": config.test_tasks,
        "trained_horizon": config.num_steps,
        "best_step": result.best_step,
        "train_seconds": result.train_seconds,
    }
    if writer is not None:
        writer.write("summary.json", summary)
        plots.plot_learning_curve(read_records(writer.path("metrics.jsonl")),
                                  writer.path("learning_curve.png"), log_scale=False)
        plots.plot_loss_curves(writer.path("loss_curves.png"), mean_log_curves,
                               trained_horizon=config.num_steps)
    return summary
