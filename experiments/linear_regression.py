"""MAML on few-point linear regression (y = w.x + b + noise) vs scratch and pretrained."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp

import metajax
from metajax import losses, tasks
from metajax.distributed import task_axis
from metajax.experiment import (
    RunWriter,
    adam_with_clipping,
    compare_with_baselines,
    plots,
    read_records,
)


@dataclasses.dataclass(frozen=True)
class Config:
    """A linear model on 4-d inputs, fewer support points than parameters, non-centred prior."""

    seed: int = 0
    num_steps: int = 5_000
    meta_batch: int = 25
    dim: int = 4
    k_shot: int = 3
    n_query: int = 20
    w_mean: float = 1.5
    w_std: float = 0.5
    noise_std: float = 0.1
    x_max: float = 1.0
    inner_steps: int = 1
    inner_lr: float = 0.1
    outer_lr: float = 1e-2
    first_order: bool = False
    clip_grad_norm: float = 0.0  # clip the meta-gradient's global norm; 0 = off
    eval_steps: tuple[int, ...] = (1, 5, 10)
    test_tasks: int = 1000
    val_tasks: int = 300
    val_every: int = 1_000
    log_every: int = 250
    steps_per_call: int = 250
    pretrain_steps: int = 5_000
    baseline_lrs: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03)


def linear_apply(params: dict, x: jnp.ndarray) -> jnp.ndarray:
    """The learner: ``x @ w + b``."""
    return x @ params["w"] + params["b"]


def main(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Runs the experiment; writes metrics, summary and a learning curve into ``out_dir``."""
    loss_fn = losses.mse(linear_apply)
    init_fn = lambda key: {"w": 0.1 * jax.random.normal(key, (config.dim, 1)),  # noqa: E731
                           "b": jnp.zeros((1,))}
    sample = functools.partial(tasks.linear_regression, dim=config.dim, w_mean=config.w_mean,
                               w_std=config.w_std, noise_std=config.noise_std,
                               x_range=(-config.x_max, config.x_max))
    writer = RunWriter(out_dir) if out_dir is not None else None
    outer_opt = adam_with_clipping(config.outer_lr, clip_grad_norm=config.clip_grad_norm)
    learner = metajax.maml(loss_fn, outer_opt, inner_steps=config.inner_steps,
                           inner_lr=config.inner_lr, first_order=config.first_order,
                           axis_name=task_axis())
    result = compare_with_baselines(
        learner=learner, name="maml", loss_fn=loss_fn, init_fn=init_fn,
        sample_train=functools.partial(sample, n_tasks=config.meta_batch, k_shot=config.k_shot,
                                       n_query=config.n_query),
        val_tasks=sample(tasks.split_key(config.seed, "val"), config.val_tasks,
                         k_shot=config.k_shot, n_query=config.n_query),
        test_tasks=sample(tasks.split_key(config.seed, "test"), config.test_tasks,
                          k_shot=config.k_shot, n_query=config.n_query),
        seed=config.seed, num_steps=config.num_steps, tasks_per_step=config.meta_batch,
        inner_lr=config.inner_lr, eval_steps=config.eval_steps,
        val_adapt_steps=config.inner_steps, pretrain_steps=config.pretrain_steps,
        baseline_lrs=config.baseline_lrs, steps_per_call=config.steps_per_call,
        log_every=config.log_every, val_every=config.val_every, writer=writer, progress=progress)
    if writer is not None:
        plots.plot_learning_curve(read_records(writer.path("metrics.jsonl")),
                                  writer.path("learning_curve.png"))
    return result.summary

