"""MAML on sinusoid regression (Finn et al., 2017): meta-learned init vs scratch and pretrained."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import metajax
from metajax import losses, models, tasks
from metajax.experiment import (
    RunWriter,
    SweepProblem,
    adam_with_clipping,
    compare_with_baselines,
    plots,
    read_records,
)


@dataclasses.dataclass(frozen=True)
class Config:
    """Defaults reproduce the MAML paper's setup (App. C): K=10, 1 step, lr 0.01, MB 25, 70k."""

    seed: int = 0
    num_steps: int = 70_000
    meta_batch: int = 25
    k_shot: int = 10
    n_query: int = 10
    inner_steps: int = 1
    inner_lr: float = 0.01
    outer_lr: float = 1e-3
    first_order: bool = False
    clip_grad_norm: float = 0.0  # clip the meta-gradient's global norm; 0 = off
    hidden: tuple[int, ...] = (40, 40)
    eval_k_shot: int = 5
    eval_n_query: int = 100
    eval_steps: tuple[int, ...] = (1, 5, 10)
    test_tasks: int = 1000
    val_tasks: int = 300
    val_every: int = 5_000
    log_every: int = 1_000
    steps_per_call: int = 1_000
    pretrain_steps: int = 70_000
    baseline_lrs: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1)
    plot_tasks: int = 4


def main(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Runs the experiment; writes metrics, summary and plots into ``out_dir`` if given."""
    model = models.MLP(features=(*config.hidden, 1))
    apply = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    loss_fn = losses.mse(apply)
    init_fn = lambda key: model.init(key, jnp.zeros((1, 1)))["params"]  # noqa: E731
    eval_tasks = functools.partial(tasks.sinusoid, k_shot=config.eval_k_shot,
                                   n_query=config.eval_n_query)
    test, test_params = eval_tasks(tasks.split_key(config.seed, "test"), config.test_tasks,
                                   return_params=True)
    writer = RunWriter(out_dir) if out_dir is not None else None
    outer_opt = adam_with_clipping(config.outer_lr, clip_grad_norm=config.clip_grad_norm)
    learner = metajax.maml(loss_fn, outer_opt, inner_steps=config.inner_steps,
                           inner_lr=config.inner_lr, first_order=config.first_order)
    result = compare_with_baselines(
        learner=learner, name="maml", loss_fn=loss_fn, init_fn=init_fn,
        sample_train=functools.partial(tasks.sinusoid, n_tasks=config.meta_batch,
                                       k_shot=config.k_shot, n_query=config.n_query),
        val_tasks=eval_tasks(tasks.split_key(config.seed, "val"), config.val_tasks),
        test_tasks=test, seed=config.seed, num_steps=config.num_steps,
        tasks_per_step=config.meta_batch, inner_lr=config.inner_lr,
        eval_steps=config.eval_steps, val_adapt_steps=config.inner_steps,
        pretrain_steps=config.pretrain_steps, baseline_lrs=config.baseline_lrs,
        steps_per_call=config.steps_per_call, log_every=config.log_every,
        val_every=config.val_every, writer=writer, progress=progress)
    if writer is not None and config.plot_tasks > 0:
        _plot(writer, result, apply, loss_fn, test, test_params, config)
    return result.summary


def _plot(writer, result, apply, loss_fn, test, test_params, config):
    plots.plot_learning_curve(read_records(writer.path("metrics.jsonl")),
                              writer.path("learning_curve.png"))
    n = config.plot_tasks
    support = jax.tree.map(lambda a: a[:n], test.support)
    x_grid = jnp.linspace(-5.0, 5.0, 200)
    sub = jax.tree.map(lambda a: a[:n], test_params)
    y_true = np.asarray(tasks.sinusoid_curve(sub, jnp.broadcast_to(x_grid[None, :, None],
                                                                   (n, 200, 1))))[..., 0]
    maml_params = result.params["maml"]
    preds = {"meta-init": np.asarray(apply(maml_params, x_grid[:, None]))[None, :, 0].repeat(n, 0)}
    for steps in (1, max(config.eval_steps)):
        adapt = functools.partial(metajax.adapt, loss_fn, steps=steps, lr=config.inner_lr)
        preds[f"MAML, {steps} step(s)"] = plots.predict_adapted(
            apply, lambda p, s, a=adapt: a(p, s), maml_params, support, x_grid)
    lr = result.summary["adapt_lr"]["pretrained"]
    adapt = functools.partial(metajax.adapt, loss_fn, steps=max(config.eval_steps), lr=lr)
    preds[f"pretrained, {max(config.eval_steps)} steps"] = plots.predict_adapted(
        apply, lambda p, s: adapt(p, s), result.params["pretrained"], support, x_grid)
    plots.plot_regression_tasks(writer.path("tasks.png"), x_support=np.asarray(support[0]),
                                y_support=np.asarray(support[1]), x_grid=np.asarray(x_grid),
                                y_true=y_true, predictions=preds)


SWEEPABLE = ("inner_lr", "outer_lr")  # shape-preserving keys: `metajax sweep` vmaps over them


def sweep_problem(config: Config) -> SweepProblem:
    """The experiment as one vmappable training function (see ``metajax sweep``)."""
    model = models.MLP(features=(*config.hidden, 1))
    loss_fn = losses.mse(lambda p, x: model.apply({"params": p}, x))

    def make_learner(h):
        outer = adam_with_clipping(h.get("outer_lr", config.outer_lr),
                                   clip_grad_norm=config.clip_grad_norm)
        return metajax.maml(loss_fn, outer, inner_steps=config.inner_steps,
                            inner_lr=h.get("inner_lr", config.inner_lr),
                            first_order=config.first_order)

    return SweepProblem(
        make_learner=make_learner,
        init_fn=lambda key: model.init(key, jnp.zeros((1, 1)))["params"],
        sample_train=functools.partial(tasks.sinusoid, n_tasks=config.meta_batch,
                                       k_shot=config.k_shot, n_query=config.n_query),
        sample_test=lambda seed: tasks.sinusoid(
            tasks.split_key(seed, "test"), config.test_tasks, k_shot=config.eval_k_shot,
            n_query=config.eval_n_query),
        loss_fn=loss_fn, eval_lr=lambda h: h.get("inner_lr", config.inner_lr),
        num_steps=config.num_steps)
