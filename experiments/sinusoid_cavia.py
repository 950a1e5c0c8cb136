"""CAVIA on sinusoid regression (context adaptation) vs scratch and pretrained."""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import metajax
from metajax import models, tasks
from metajax.distributed import task_axis
from metajax.experiment import (
    RunWriter,
    adam_with_clipping,
    meta_train,
    plots,
    pretrain,
    read_records,
    select_lr,
)


@dataclasses.dataclass(frozen=True)
class Config:
    """Sinusoids as in MAML (K=10, MB 25); CAVIA adapts 5 context inputs; ~1 min on 2 cores.

    CAVIA adapts only the context (from zeros, SGD with ``inner_lr``); the baselines are the same
    network with the context fixed at zero (an MLP on ``x``), fine-tuned on all parameters with
    the SGD step size that is best on validation tasks.
    """

    seed: int = 0
    num_steps: int = 30_000
    meta_batch: int = 25
    k_shot: int = 10
    n_query: int = 10
    num_context: int = 5
    inner_steps: int = 2
    inner_lr: float = 1.0
    outer_lr: float = 1e-3
    first_order: bool = False
    clip_grad_norm: float = 0.0  # clip the meta-gradient's global norm; 0 = off
    hidden: tuple[int, ...] = (40, 40)
    eval_k_shot: int = 5
    eval_n_query: int = 100
    eval_steps: tuple[int, ...] = (1, 5, 10)
    test_tasks: int = 1000
    val_tasks: int = 300
    val_every: int = 3_000
    log_every: int = 1_000
    steps_per_call: int = 1_000
    pretrain_steps: int = 30_000
    pretrain_lr: float = 1e-3
    baseline_lrs: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1)
    plot_tasks: int = 4


def _summarize(out, report_steps):
    per_step = {s: {k: np.asarray(v[i]) for k, v in out.items()}
                for i, s in enumerate(report_steps)}
    return metajax.summarize(per_step)


def main(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Runs the experiment; writes metrics, summary and plots into ``out_dir`` if given.

    The summary has the structure of :func:`metajax.experiment.compare_with_baselines`'s:
    ``results[method][steps] = {mean, ci95, n}`` for ``cavia``, ``pretrained`` and ``scratch``.
    """
    t0 = time.perf_counter()
    model = models.ContextMLP(features=(*config.hidden, 1))
    zero = jnp.zeros(config.num_context)

    def loss_fn(params, context, batch):  # CAVIA's loss: the context is an extra input
        x, y = batch
        return jnp.mean((model.apply({"params": params}, x, context) - y) ** 2)

    def base_loss(params, batch):  # the baselines' loss: the same network, context at zero
        return loss_fn(params, zero, batch)

    init_fn = lambda key: model.init(key, jnp.zeros((1, 1)), zero)["params"]  # noqa: E731
    eval_tasks = functools.partial(tasks.sinusoid, k_shot=config.eval_k_shot,
                                   n_query=config.eval_n_query)
    test, test_params = eval_tasks(tasks.split_key(config.seed, "test"), config.test_tasks,
                                   return_params=True)
    val = eval_tasks(tasks.split_key(config.seed, "val"), config.val_tasks)
    sample_train = functools.partial(tasks.sinusoid, n_tasks=config.meta_batch,
                                     k_shot=config.k_shot, n_query=config.n_query)
    writer = RunWriter(out_dir) if out_dir is not None else None
    outer_opt = adam_with_clipping(config.outer_lr, clip_grad_norm=config.clip_grad_norm)
    learner = metajax.cavia(loss_fn, outer_opt, num_context=config.num_context,
                            inner_steps=config.inner_steps, inner_lr=config.inner_lr,
                            first_order=config.first_order, axis_name=task_axis())

    # Same seeding as compare_with_baselines: stream, meta-init and scratch init from one root.
    root = jax.random.PRNGKey(config.seed)
    train_key = jax.random.fold_in(root, 0)
    init_params = init_fn(jax.random.fold_in(root, 1))
    scratch_params = init_fn(jax.random.fold_in(root, 2))
    eval_steps = tuple(sorted(set(config.eval_steps)))
    report_steps = (0, *[s for s in eval_steps if s > 0])

    val_eval = jax.jit(metajax.cavia_evaluator(loss_fn, num_context=config.num_context,
                                               lr=config.inner_lr, steps=(config.inner_steps,)))

    def validate(params):
        return {k: float(np.mean(v)) for k, v in jax.device_get(val_eval(params, val)).items()}

    def phase(method):
        """Logging and checkpointing of one training phase (resumable with --resume)."""
        def on_record(record):
            if writer is not None:
                writer.log({"method": method, **record})
        if writer is None:
            return {"on_record": on_record}
        checkpointer = writer.checkpointer(method)
        steps = checkpointer.steps()
        writer.drop_records_after(method, steps[-1] if steps else 0)
        return {"on_record": on_record, "checkpointer": checkpointer,
                "checkpoint_every": config.val_every}

    train = meta_train(learner.step, learner.init(init_params), sample_train, key=train_key,
                       num_steps=config.num_steps, tasks_per_step=config.meta_batch,
                       steps_per_call=config.steps_per_call, log_every=config.log_every,
                       validate=validate, val_every=config.val_every, progress=progress,
                       desc="cavia", **phase("cavia"))
    t_meta = time.perf_counter() - t0
    joint = pretrain(base_loss, optax.adam(config.pretrain_lr))
    pre = meta_train(joint.step, joint.init(init_params), sample_train, key=train_key,
                     num_steps=config.pretrain_steps, tasks_per_step=config.meta_batch,
                     steps_per_call=config.steps_per_call, log_every=config.log_every,
                     progress=progress, desc="pretrained", **phase("pretrained"))

    params = {"cavia": train.best_params, "pretrained": pre.state.params,
              "scratch": scratch_params}
    all_metrics = {"cavia": _summarize(jax.device_get(jax.jit(metajax.cavia_evaluator(
        loss_fn, num_context=config.num_context, lr=config.inner_lr,
        steps=report_steps))(params["cavia"], test)), report_steps)}
    lrs, lr_scores = {"cavia": config.inner_lr}, {}
    test_eval = jax.jit(lambda p, t, lr: metajax.make_evaluator(  # lr traced: compiled once
        base_loss, steps=report_steps, lr=lr)(p, t))
    for method in ("pretrained", "scratch"):
        lrs[method], lr_scores[method] = select_lr(base_loss, params[method], val,
                                                   lrs=config.baseline_lrs, steps=max(eval_steps))
        out = jax.device_get(test_eval(params[method], test, jnp.asarray(lrs[method])))
        all_metrics[method] = _summarize(out, report_steps)

    summary = {
        "metric": "loss",
        "results": {m: table["loss"] for m, table in all_metrics.items()},
        "all_metrics": all_metrics,
        "adapt_lr": lrs,
        "adapted_parameters": {"cavia": f"context ({config.num_context} inputs)",
                               "pretrained": "all", "scratch": "all"},
        "baseline_lr_search": {m: {str(k): v for k, v in s.items()}
                               for m, s in lr_scores.items()},
        "best_val_step": train.best_step,
        "num_test_tasks": config.test_tasks,
        "meta_train_seconds": t_meta,
        "wall_seconds": time.perf_counter() - t0,
    }
    if writer is not None:
        writer.write("summary.json", summary)
        if config.plot_tasks > 0:
            _plot(writer, params, lrs, loss_fn, base_loss, model, test, test_params, config)
    return summary


def _plot(writer, params, lrs, loss_fn, base_loss, model, test, test_params, config):
    plots.plot_learning_curve(read_records(writer.path("metrics.jsonl")),
                              writer.path("learning_curve.png"))
    n = config.plot_tasks
    support = jax.tree.map(lambda a: a[:n], test.support)
    x_grid = jnp.linspace(-5.0, 5.0, 200)
    sub = jax.tree.map(lambda a: a[:n], test_params)
    y_true = np.asarray(tasks.sinusoid_curve(sub, jnp.broadcast_to(x_grid[None, :, None],
                                                                   (n, 200, 1))))[..., 0]
    steps = max(config.eval_steps)
    zero = jnp.zeros(config.num_context)
    cavia = params["cavia"]

    def predict(context):
        return model.apply({"params": cavia}, x_grid[:, None], context)[:, 0]

    adapt = functools.partial(metajax.cavia_adapt, loss_fn, cavia, num_context=config.num_context,
                              steps=steps, lr=config.inner_lr)
    preds = {"CAVIA, zero context": np.asarray(predict(zero))[None].repeat(n, 0),
             f"CAVIA, {steps} context steps": np.asarray(jax.vmap(
                 lambda s: predict(adapt(s)))(support))}
    apply = lambda p, x: model.apply({"params": p}, x, zero)  # noqa: E731
    fine_tune = functools.partial(metajax.adapt, base_loss, steps=steps, lr=lrs["pretrained"])
    preds[f"pretrained, {steps} steps"] = plots.predict_adapted(
        apply, lambda p, s: fine_tune(p, s), params["pretrained"], support, x_grid)
    plots.plot_regression_tasks(writer.path("tasks.png"), x_support=np.asarray(support[0]),
                                y_support=np.asarray(support[1]), x_grid=np.asarray(x_grid),
                                y_true=y_true, predictions=preds)
