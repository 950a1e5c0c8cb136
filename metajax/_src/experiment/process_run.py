"""Neural-process experiments: train on a task family, test on held-out tasks, beside an oracle.

:func:`run_process` is the driver of ``gp_cnp``, ``gp_np``, ``gp_anp`` and ``sinusoid_cnp``:
meta-training with validation, checkpoints and ``--resume`` (:func:`meta_train`), then the
per-task target log-likelihood and MSE on held-out tasks with 95% CIs, and, on GP tasks, the
same for the exact GP predictive (the ``gp_oracle`` row).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metajax._src.amortized.evaluate import make_process_evaluator, predictive_metrics
from metajax._src.amortized.learner import neural_process
from metajax._src.amortized.models import (
    attentive_np,
    cnp,
    init_process,
    latent_np,
    process_apply,
)
from metajax._src.amortized.objectives import conditional_nll, elbo
from metajax._src.core.evaluate import mean_ci95
from metajax._src.core.types import TaskBatch
from metajax._src.distributed.processes import task_axis
from metajax._src.experiment import plots
from metajax._src.experiment.baselines import adam_with_clipping
from metajax._src.experiment.config import (
    ConfigError,
    Count,
    NonNegative,
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
from metajax._src.tasks.gp import GPKernel, gp_curves, gp_posterior
from metajax._src.tasks.streams import split_key

MODELS = ("cnp", "np", "anp")


@dataclasses.dataclass(frozen=True)
class ProcessConfig:
    """Shared fields of the neural-process experiments (DeepMind's notebook setup).

    ``model`` is one of ``cnp`` (trained on the conditional NLL), ``np`` and ``anp`` (on their
    ELBO). Held-out tasks are scored by their mean target log-likelihood (with latent models,
    the mixture over ``num_samples`` prior draws) and MSE.
    """

    seed: int = 0
    model: one_of(*MODELS) = "cnp"
    num_steps: Steps = 40_000
    batch: Count = 64
    lr: PositiveRate = 1e-4
    clip_grad_norm: Rate = 0.0
    encoder: Size = (128, 128, 128, 128)
    decoder: Size = (128, 128)
    latent_dim: Count = 128
    # self-attention layers in the ANP's encoders
    self_attention: Annotated[int, Rule(low=0, high=64)] = 2
    num_heads: Count = 8
    num_samples: Count = 32  # latent draws per held-out task (latent models)
    test_tasks: TestTasks = 3000
    val_tasks: Count = 256
    val_every: Steps = 2_000
    log_every: Steps = 1_000
    steps_per_call: Steps = 500
    plot_tasks: NonNegative = 4

    def __post_init__(self):
        validate_config(self)


class HeldOut(NamedTuple):
    """Held-out tasks, with each task's true kernel where the family has an exact oracle.

    Attributes:
        tasks: a ``TaskBatch`` of ``Points``.
        kernel: the tasks' :class:`metajax.tasks.GPKernel` (GP families), else ``None``.
    """

    tasks: TaskBatch
    kernel: GPKernel | None = None


class ProcessProblem(NamedTuple):
    """A task family for :func:`run_process`.

    Attributes:
        sample_train: ``sample(key) -> TaskBatch`` of ``Points`` (one meta-batch; jittable).
        val: meta-validation tasks.
        test: meta-test tasks.
        noise: the observation noise of a GP family (its oracle's), else ``None``.
        x_range: the input interval (plots).
    """

    sample_train: Callable[[jax.Array], TaskBatch]
    val: HeldOut
    test: HeldOut
    noise: float | None = None
    x_range: tuple[float, float] = (-2.0, 2.0)


def process_model(config: ProcessConfig):
    """The Flax module and training objective of ``config.model``."""
    if config.model not in MODELS:
        raise ValueError(f"`model` must be one of {MODELS}; got {config.model!r}.")
    if config.model == "cnp":
        return cnp(encoder=config.encoder, decoder=config.decoder), conditional_nll
    if config.model == "np":
        return latent_np(encoder=config.encoder, decoder=config.decoder,
                         latent_dim=config.latent_dim), elbo
    return attentive_np(encoder=config.encoder, decoder=config.decoder,
                        latent_dim=config.latent_dim, self_attention=config.self_attention,
                        num_heads=config.num_heads), elbo


def sample_in_chunks(sample: Callable[[jax.Array, int], TaskBatch], key: jax.Array, n: int, *,
                     chunk: int = 250) -> TaskBatch:
    """``n`` tasks as the concatenation of ``sample(fold_in(key, i), chunk)`` (bounded memory;
    the same tasks for the same ``key`` and ``chunk``)."""
    sample = jax.jit(sample, static_argnums=1)
    parts = [sample(jax.random.fold_in(key, i), min(chunk, n - i * chunk))
             for i in range(-(-n // chunk))]
    return jax.tree.map(lambda *a: jnp.concatenate(a), *parts)


@functools.partial(jax.jit, static_argnames="noise")
def gp_predict(context, x_target, kernel: GPKernel, *, noise: float):
    """The exact GP predictive ``(mean, std)`` ``[n, m, 1]`` of every task (true kernel)."""
    return jax.lax.map(lambda a: gp_posterior(*a, noise),
                       (context, x_target, kernel.lengthscale, kernel.sigma_f), batch_size=250)


def gp_oracle_metrics(held_out: HeldOut, *, noise: float) -> dict:
    """Per-task ``log_lik`` and ``mse`` of the exact GP predictive on ``held_out``."""
    tasks = held_out.tasks
    mean, std = gp_predict(tasks.support, tasks.query.x, held_out.kernel, noise=noise)
    return jax.vmap(predictive_metrics)(mean, std, tasks.query)


def run_process(config: ProcessConfig, problem: ProcessProblem, *,
                out_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Trains ``config.model`` on ``problem`` and scores it on its held-out tasks.

    With ``out_dir``: ``metrics.jsonl`` (training loss, validation log-likelihood against
    training seconds: the accuracy-versus-budget curve), checkpoints (``--resume``),
    ``summary.json``, ``learning_curve.png`` and ``tasks.png`` (predictive mean ± 2σ with the
    oracle's band).

    Returns:
        ``{"metric": "log_lik", "results": {row: {mean, ci95, n}}, "mse": {row: ...}, ...}``
        with rows ``config.model`` and, if the problem has one, ``gp_oracle``.
    """
    model, objective = process_model(config)
    apply = process_apply(model)
    key = jax.random.PRNGKey(config.seed)
    params = init_process(model, jax.random.fold_in(key, 1), problem.val.tasks)
    learner = neural_process(objective(apply),
                             adam_with_clipping(config.lr, clip_grad_norm=config.clip_grad_norm),
                             key=jax.random.fold_in(key, 2), axis_name=task_axis())
    samples = 1 if config.model == "cnp" else config.num_samples
    evaluate = jax.jit(make_process_evaluator(apply, num_samples=samples))
    eval_key = jax.random.fold_in(key, 3)

    def validate(p):
        return {"log_lik": float(jnp.mean(evaluate(p, problem.val.tasks, eval_key)["log_lik"]))}

    writer = RunWriter(out_dir) if out_dir is not None else None
    if writer is not None:
        checkpointer = writer.checkpointer(config.model)
        steps = checkpointer.steps()
        writer.drop_records_after(config.model, steps[-1] if steps else 0)
    result = meta_train(
        learner.step, learner.init(params), problem.sample_train,
        key=split_key(config.seed, "train"), num_steps=config.num_steps,
        tasks_per_step=config.batch, steps_per_call=config.steps_per_call,
        log_every=config.log_every, validate=validate, val_every=config.val_every,
        val_metric="log_lik", higher_is_better=True,
        on_record=(lambda r: writer.log({"method": config.model, **r})) if writer else None,
        checkpointer=checkpointer if writer else None,
        progress=progress, desc=config.model)
    test = evaluate(result.best_params, problem.test.tasks, jax.random.fold_in(key, 4))
    rows = {config.model: test}
    has_oracle = problem.test.kernel is not None
    if has_oracle:
        rows["gp_oracle"] = gp_oracle_metrics(problem.test, noise=problem.noise)
    summary = {
        "metric": "log_lik",
        "results": {k: mean_ci95(v["log_lik"])._asdict() for k, v in rows.items()},
        "mse": {k: mean_ci95(v["mse"])._asdict() for k, v in rows.items()},
        "num_test_tasks": int(problem.test.tasks.support.x.shape[0]),
        "best_step": result.best_step,
        "train_seconds": result.train_seconds,
        "latent_samples": samples,
    }
    if has_oracle:
        summary["val_oracle_log_lik"] = float(jnp.mean(
            gp_oracle_metrics(problem.val, noise=problem.noise)["log_lik"]))
    if writer is not None:
        writer.write("summary.json", summary)
        plots.plot_learning_curve(read_records(writer.path("metrics.jsonl")),
                                  writer.path("learning_curve.png"), log_scale=False)
        if config.plot_tasks > 0:
            _plot_tasks(writer.path("tasks.png"), apply, result.best_params, problem, config,
                        samples)
    return summary


def _plot_tasks(path, apply, params, problem: ProcessProblem, config, samples) -> None:
    n = config.plot_tasks
    tasks = jax.tree.map(lambda a: a[:n], problem.test.tasks)
    x_grid = jnp.linspace(*problem.x_range, 200)[:, None]

    @functools.partial(jax.vmap, in_axes=(0, 0))
    def predict(context, key):
        outs = jax.vmap(lambda k: apply(params, context, x_grid, key=k))(
            jax.random.split(key, samples))
        mean = outs.mean.mean(0)
        std = jnp.sqrt(jnp.mean(outs.std**2 + outs.mean**2, 0) - mean**2)
        return mean[:, 0], std[:, 0]

    mean, std = predict(tasks.support, jax.random.split(jax.random.PRNGKey(0), n))
    band = None
    if problem.test.kernel is not None:
        kernel = jax.tree.map(lambda a: a[:n], problem.test.kernel)
        o_mean, o_std = gp_predict(tasks.support, jnp.broadcast_to(x_grid, (n, *x_grid.shape)),
                                   kernel, noise=problem.noise)
        band = (np.asarray(o_mean[..., 0]), np.asarray(o_std[..., 0]))
    plots.plot_predictive_tasks(path, tasks=jax.device_get(tasks), x_grid=np.asarray(x_grid[:, 0]),
                                mean=np.asarray(mean), std=np.asarray(std), label=config.model,
                                oracle=band)


@dataclasses.dataclass(frozen=True)
class GPProcessConfig(ProcessConfig):
    """GP regression tasks (EQ kernel; DeepMind's notebook). One ``lengthscale`` / ``sigma_f``
    value fixes the kernel; two give the range it is drawn from per task. Held-out tasks
    observe ``grid`` evenly spaced points of [-2, 2], all of them targets."""

    min_context: Count = 3
    max_context: Count = 10
    min_extra_targets: NonNegative = 2
    max_extra_targets: NonNegative = 10
    lengthscale: Rates = (0.4,)
    sigma_f: Rates = (1.0,)
    noise: Rate = 0.02
    grid: Count = 400

    def validate(self):
        """Rules across fields (the fields' own are in their annotations)."""
        for low, high in (("min_context", "max_context"),
                          ("min_extra_targets", "max_extra_targets")):
            if getattr(self, low) > getattr(self, high):
                raise ConfigError(f"{low}: expected at most {high} ({getattr(self, high)}); got "
                                  f"{getattr(self, low)}.")
        for name in ("lengthscale", "sigma_f"):
            if len(getattr(self, name)) not in (1, 2):
                raise ConfigError(f"{name}: expected one value (fixed) or two (a per-task "
                                  f"range); got {getattr(self, name)!r}.")


def _hyper(name: str, values: tuple[float, ...]):
    if len(values) not in (1, 2):
        raise ValueError(f"`{name}` must be one value (fixed) or two (a per-task range); got "
                         f"{values!r}.")
    return values[0] if len(values) == 1 else tuple(values)


def gp_problem(config: GPProcessConfig) -> ProcessProblem:
    """The GP family of ``config``: training sampler and validation / test tasks with kernels.

    The three streams come from :func:`metajax.tasks.split_key` of ``config.seed``, so the
    test tasks are disjoint from training and the same for every model at one seed.
    """
    kernel = {"lengthscale": _hyper("lengthscale", config.lengthscale),
              "sigma_f": _hyper("sigma_f", config.sigma_f), "noise": config.noise}
    context = (config.min_context, config.max_context)
    sample = functools.partial(gp_curves, context=context, **kernel)

    def held_out(split, n):
        tasks, k = sample_in_chunks(
            lambda key, m: sample(key, m, grid=config.grid, return_kernel=True),
            split_key(config.seed, split), n)
        return HeldOut(tasks, k)

    return ProcessProblem(
        sample_train=functools.partial(
            sample, n_tasks=config.batch,
            extra_targets=(config.min_extra_targets, config.max_extra_targets)),
        val=held_out("val", config.val_tasks), test=held_out("test", config.test_tasks),
        noise=config.noise)
