"""Conditional neural process on sinusoids, beside MAML and the pretrained baseline.

The CNP reads the 5-shot context and predicts at once (0 adaptation steps); MAML and the
pretrained network are trained as in ``sinusoid_maml`` and fine-tuned for 1/5/10 steps. All
are scored by the query MSE of the same held-out tasks (those of ``sinusoid_maml`` at the same
seed).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp

import metajax
from metajax import tasks
from metajax.experiment import (
    HeldOut,
    ProcessConfig,
    ProcessProblem,
    SinusoidConfig,
    adam_with_clipping,
    run_process,
    run_sinusoid,
    sinusoid_mlp,
)


@dataclasses.dataclass(frozen=True)
class Config(ProcessConfig):
    """The CNP trains on sinusoid tasks with 3-10 context points and 10 more targets; held-out
    tasks are MAML's (5-shot, 100 query points). ``maml_steps > 0`` also trains MAML and the
    pretrained baseline for that many steps (``sinusoid_maml``'s defaults otherwise)."""

    model: str = "cnp"
    num_steps: int = 40_000
    lr: float = 5e-4
    min_context: int = 3
    max_context: int = 10
    n_query: int = 10
    eval_k_shot: int = 5
    eval_n_query: int = 100
    test_tasks: int = 1000
    val_tasks: int = 300
    maml_steps: int = 70_000


def _train_sample(config: Config):
    def sample(key):
        k_tasks, k_n = jax.random.split(key)
        points = metajax.as_points(tasks.sinusoid(k_tasks, config.batch,
                                                  k_shot=config.max_context,
                                                  n_query=config.n_query))
        n_context = jax.random.randint(k_n, (config.batch, 1), config.min_context,
                                       config.max_context + 1)
        mask = jnp.arange(config.max_context)[None, :] < n_context
        return points._replace(support=points.support._replace(mask=mask))

    return sample


def _held_out(config: Config, split: str, n: int) -> HeldOut:
    batch = tasks.sinusoid(tasks.split_key(config.seed, split), n, k_shot=config.eval_k_shot,
                           n_query=config.eval_n_query)
    return HeldOut(metajax.as_points(batch, targets_include_context=False))


def main(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Runs the experiment; writes metrics, summary and plots into ``out_dir`` if given."""
    problem = ProcessProblem(sample_train=_train_sample(config),
                             val=_held_out(config, "val", config.val_tasks),
                             test=_held_out(config, "test", config.test_tasks),
                             x_range=(-5.0, 5.0))
    cnp = run_process(config, problem, out_dir=out_dir, progress=progress)
    summary = {"metric": "mse", "results": {config.model: {"0": cnp["mse"][config.model]}},
               "log_lik": cnp["results"], "num_test_tasks": config.test_tasks,
               "train_seconds": {config.model: cnp["train_seconds"]}}
    if config.maml_steps > 0:
        maml = _maml(config, None if out_dir is None else Path(out_dir) / "maml", progress)
        summary["results"].update(maml["results"])
        summary["adapt_lr"] = maml.get("adapt_lr")
    if out_dir is not None:
        metajax.experiment.RunWriter(out_dir).write("summary.json", summary)
    return summary


def _maml(config: Config, out_dir, progress):
    maml_config = SinusoidConfig(seed=config.seed, num_steps=config.maml_steps,
                                 pretrain_steps=config.maml_steps, test_tasks=config.test_tasks,
                                 eval_k_shot=config.eval_k_shot,
                                 eval_n_query=config.eval_n_query, plot_tasks=0)
    _, _, loss_fn, _ = sinusoid_mlp(maml_config)
    learner = metajax.maml(loss_fn, adam_with_clipping(maml_config.outer_lr),
                           inner_steps=maml_config.inner_steps, inner_lr=maml_config.inner_lr,
                           axis_name=metajax.distributed.task_axis())
    return run_sinusoid(maml_config, learner, name="maml", out_dir=out_dir, progress=progress)


