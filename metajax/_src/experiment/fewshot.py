"""Few-shot classification experiments: a metric learner vs. honest baselines, same test tasks."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax._src.core.chunking import map_task_chunks
from metajax._src.core.evaluate import mean_ci95
from metajax._src.core.loop import Sampler
from metajax._src.core.types import MetaLearner, Params, TaskBatch, num_tasks
from metajax._src.distributed.processes import task_split
from metajax._src.experiment import plots
from metajax._src.experiment.config import (
    ConfigError,
    Count,
    MetaBatch,
    PositiveRate,
    Rates,
    Size,
    Steps,
    TestTasks,
    Way,
    validate_config,
)
from metajax._src.experiment.run_io import RunWriter, read_records
from metajax._src.experiment.training import TrainResult, meta_train
from metajax._src.metric.finetune import finetune_head
from metajax._src.metric.learner import EmbedFn, TaskLossFn, check_n_way, make_episode_evaluator
from metajax._src.tasks.gaussian import gaussian_classes
from metajax._src.tasks.streams import split_key
from metajax.models import MLP


@dataclasses.dataclass(frozen=True)
class FewShotConfig:
    """Shared fields of the few-shot experiments on :func:`metajax.tasks.gaussian_classes`.

    The embedding is an MLP ``dim -> hidden... -> embed_dim``; meta-training uses Adam.
    """

    seed: int = 0
    num_steps: Steps = 2_000
    meta_batch: MetaBatch = 16
    n_way: Way = 5
    k_shot: Count = 1
    n_query: Count = 15
    dim: Count = 32
    n_informative: Count = 8
    hidden: Size = (64,)
    embed_dim: Count = 32
    outer_lr: PositiveRate = 1e-3
    test_tasks: TestTasks = 1000
    val_tasks: Count = 200
    val_every: Steps = 500
    log_every: Steps = 250
    steps_per_call: Steps = 250
    finetune_steps: Steps = 100
    finetune_lrs: Rates = (0.01, 0.1, 1.0)
    finetune_scale: PositiveRate = 10.0

    def __post_init__(self):
        validate_config(self)

    def validate(self):
        """Rules across fields (the fields' own are in their annotations)."""
        if self.n_informative > self.dim:
            raise ConfigError(f"n_informative: expected at most dim ({self.dim}); got "
                              f"{self.n_informative}.")


def mlp_embedding(config: FewShotConfig) -> tuple[EmbedFn, Callable[[jax.Array], Params]]:
    """The embedding ``embed_fn(params, x)`` and its jitted ``init_fn(key)`` for ``config``.

    The same function objects are returned for the same architecture, so compiled programs
    that take them (e.g. the Baseline++ evaluator) are reused across runs in one process.
    """
    return _mlp_embedding(tuple(config.hidden), config.embed_dim, config.dim)


@functools.lru_cache(maxsize=16)
def _mlp_embedding(hidden: tuple[int, ...], embed_dim: int, dim: int):
    model = MLP(features=(*hidden, embed_dim))

    def embed_fn(params: Params, x: jax.Array) -> jax.Array:
        return model.apply({"params": params}, x)

    @jax.jit
    def init_fn(key: jax.Array) -> Params:
        return model.init(key, jnp.zeros((1, dim)))["params"]

    return embed_fn, init_fn


def _raw_features(params: None, x: jax.Array) -> jax.Array:
    del params
    return x.reshape(x.shape[0], -1)  # images [n, H, W, C] -> [n, H * W * C]


@functools.lru_cache(maxsize=16)
def finetune_evaluator(embed_fn: EmbedFn, n_way: int, steps: int, scale: float,
                       head: str = "cosine"):
    """Jitted ``evaluate(params, tasks, lr, key)`` of Baseline++ (or ``head="linear"``:
    Baseline) with ``lr`` and ``key`` traced."""

    def evaluate(params, tasks, lr, key):
        task_fn = finetune_head(embed_fn, n_way=n_way, key=key, head=head, steps=steps,
                                lr=lr, scale=scale)
        return make_episode_evaluator(task_fn)(params, tasks)

    return jax.jit(evaluate)


@functools.lru_cache(maxsize=32)
def _episode_evaluator(task_loss: TaskLossFn):
    """Jitted ``evaluate(params, tasks)`` of a per-task loss (one per function object)."""
    return jax.jit(make_episode_evaluator(task_loss))


def _summaries(per_task: dict[str, np.ndarray]) -> dict[str, dict[str, dict]]:
    return {name: {"0": mean_ci95(v)._asdict()} for name, v in per_task.items()}


BASELINE_ROWS = ("baseline++_raw", "baseline++_meta")


class MetricComparison(NamedTuple):
    """What :func:`compare_metric_learner` produced.

    Attributes:
        summary: the JSON-ready summary (``results``: row -> ``{"0": mean/ci95/n}``).
        params: ``{name: meta-parameters, "scratch": meta-parameters at a fresh init}``, the
            parameters the method's head is evaluated with.
        finetune_lrs: the fine-tuning step size chosen on validation tasks for each
            Baseline++ row.
        head_key: the PRNG key of the Baseline++ heads' initialisation.
        train: the meta-training :class:`TrainResult`.

    ``params``, ``finetune_lrs`` and ``head_key`` are what :func:`evaluate_metric_methods`
    needs to evaluate the same rows on other episodes.
    """

    summary: dict
    params: dict[str, Params]
    finetune_lrs: dict[str, float]
    head_key: jax.Array
    train: TrainResult


def select_head_lr(embed_fn: EmbedFn, params: Params, tasks: TaskBatch, *, n_way: int,
                   steps: int, scale: float, lrs: Sequence[float], key: jax.Array,
                   head: str = "cosine", chunk_size: int | None = None
                   ) -> tuple[float, dict[float, float]]:
    """The step size of a head fitted per task on ``embed_fn`` that is best on ``tasks``.

    Each candidate in ``lrs`` fits the head (Baseline++ ``"cosine"`` or Baseline
    ``"linear"``, ``steps`` steps, initialised from ``key``) on every task's support
    embeddings; the one with the highest mean query accuracy wins (the first on ties).

    Returns:
        ``(best_lr, {lr: mean accuracy})``.
    """
    evaluate = finetune_evaluator(embed_fn, n_way, steps, scale, head)
    scores = {}
    for lr in lrs:
        out = map_task_chunks(lambda t, lr=lr: evaluate(params, t, jnp.float32(lr), key),
                              tasks, chunk_size=chunk_size)
        scores[float(lr)] = float(np.mean(out["accuracy"]))
    return max(scores, key=scores.get), scores


def evaluate_metric_methods(
    *,
    task_loss: TaskLossFn,
    embed_fn: EmbedFn,
    n_way: int,
    params: dict[str, Params],
    finetune_lrs: dict[str, float],
    tasks: TaskBatch,
    head_key: jax.Array,
    finetune_steps: int,
    finetune_scale: float,
    chunk_size: int | None = None,
) -> dict[str, dict[str, dict[str, dict]]]:
    """Query metrics of a metric learner's rows on ``tasks``, all on the same episodes.

    Rows: every entry of ``params`` with the method's head (``task_loss``), then
    ``baseline++_raw`` (a cosine head fine-tuned on the flattened raw inputs) and
    ``baseline++_meta`` (the same head on the embedding ``params[method]["embed"]`` of the
    first entry), each at its step size in ``finetune_lrs``.

    Args:
        task_loss: the method's per-task loss for ``n_way``-way tasks.
        embed_fn: the embedding.
        n_way: classes per task of ``tasks``.
        params: ``{row: meta-parameters}``; the first row is the meta-learned one.
        finetune_lrs: ``{"baseline++_raw": lr, "baseline++_meta": lr}``.
        tasks: the episodes.
        head_key: PRNG key of the Baseline++ heads' initialisation.
        finetune_steps: SGD steps of each Baseline++ head.
        finetune_scale: the cosine head's logit scale.
        chunk_size: episodes per compiled call (memory bound); ``None``: all at once.

    Returns:
        ``{row: {metric: {"0": {"mean", "ci95", "n"}}}}`` in row order.
    """
    evaluate = _episode_evaluator(task_loss)
    per_task = {row: map_task_chunks(lambda t, p=p: evaluate(p, t), tasks,
                                     chunk_size=chunk_size) for row, p in params.items()}
    learned = params[next(iter(params))]["embed"]
    for row, fn, p in (("baseline++_raw", _raw_features, None),
                       ("baseline++_meta", embed_fn, learned)):
        finetuned = finetune_evaluator(fn, n_way, finetune_steps, finetune_scale)
        lr = jnp.float32(finetune_lrs[row])
        per_task[row] = map_task_chunks(lambda t, f=finetuned, p=p, lr=lr: f(p, t, lr, head_key),
                                        tasks, chunk_size=chunk_size)
    order = list(per_task)  # device_get would sort the keys; keep the method first
    per_task = jax.device_get(per_task)
    return {row: _summaries(per_task[row]) for row in order}


def compare_metric_learner(
    *,
    learner: MetaLearner,
    name: str,
    task_loss: TaskLossFn,
    embed_fn: EmbedFn,
    init_fn: Callable[[jax.Array], Params],
    sample_train: Sampler,
    val_tasks: TaskBatch,
    test_tasks: TaskBatch,
    seed: int,
    num_steps: int,
    tasks_per_step: int,
    n_way: int,
    sample_args: tuple = (),
    steps_per_call: int = 250,
    unroll: int | bool = 1,
    log_every: int = 250,
    val_every: int | None = None,
    finetune_steps: int = 100,
    finetune_lrs: Sequence[float] = (0.01, 0.1, 1.0),
    finetune_scale: float = 10.0,
    chunk_size: int | None = None,
    writer: RunWriter | None = None,
    progress: bool = True,
) -> MetricComparison:
    """Meta-trains a metric learner and compares it with baselines on the same test tasks.

    Rows of ``summary["results"]`` (query accuracy, mean ± 95% CI over the test tasks):

    - ``name``: the meta-learned embedding (parameters with the best validation accuracy) with
      the method's head;
    - ``scratch``: the same head on the embedding at a fresh random initialisation;
    - ``baseline++_raw``: a cosine classifier fine-tuned per task on the raw inputs (no
      learning across tasks at all);
    - ``baseline++_meta``: the same fine-tuned cosine head on the meta-learned embedding
      (swapping the method's head for Baseline++'s).

    The fine-tuning step size of both Baseline++ rows is chosen from ``finetune_lrs`` on the
    meta-validation tasks. The key ``"0"`` in each row is the number of gradient steps on the
    embedding at test time (none for every row; Baseline++ trains only its new head, for
    ``finetune_steps`` steps).

    Args:
        learner: the metric learner (e.g. :func:`metajax.protonet`); it may train on other
            episodes (e.g. more classes) than ``task_loss`` evaluates.
        name: the method's row name.
        task_loss: the method's per-task loss on ``n_way``-way validation and test tasks.
        embed_fn: the embedding ``embed_fn(embed_params, x)``.
        init_fn: ``init_fn(key) -> embed_params``.
        sample_train: ``sample(key, *sample_args) -> TaskBatch`` of the training stream.
        val_tasks: meta-validation tasks (parameter and step-size selection).
        test_tasks: meta-test tasks.
        seed: seeds the initialisations and the training stream.
        num_steps: outer steps.
        tasks_per_step: tasks per outer step.
        n_way: classes per validation and test task.
        sample_args: arrays ``sample_train`` reads, passed to the compiled program as
            arguments.
        steps_per_call: outer steps per compiled call.
        unroll: unrolling of those steps (``True`` for conv nets on CPU).
        log_every: training-metric logging interval.
        val_every: validation interval (default ``num_steps // 10``).
        finetune_steps: SGD steps of the Baseline++ heads.
        finetune_lrs: candidate step sizes of the Baseline++ heads.
        finetune_scale: the cosine head's logit scale.
        chunk_size: evaluate this many episodes per compiled call (memory bound).
        writer: where ``metrics.jsonl`` goes (optional).
        progress: show a progress bar.

    Returns:
        A :class:`MetricComparison`.
    """
    t0 = time.perf_counter()
    n_way = check_n_way(n_way)
    root = jax.random.PRNGKey(seed)
    evaluate = _episode_evaluator(task_loss)

    def validate(params):
        out = jax.device_get(map_task_chunks(lambda t: evaluate(params, t), val_tasks,
                                             chunk_size=chunk_size))
        return {k: float(np.mean(v)) for k, v in out.items()}

    def on_record(record):
        if writer is not None:
            writer.log({"method": name, **record})

    train = meta_train(learner.step, learner.init(init_fn(jax.random.fold_in(root, 1))),
                       sample_train, key=jax.random.fold_in(split_key(seed, "train"), 0),
                       num_steps=num_steps, tasks_per_step=tasks_per_step,
                       sample_args=sample_args, steps_per_call=steps_per_call, unroll=unroll,
                       log_every=log_every, validate=validate,
                       val_every=val_every or max(num_steps // 10, 1), val_metric="accuracy",
                       higher_is_better=True, on_record=on_record, progress=progress, desc=name,
                       **task_split(tasks_per_step))
    t_meta = time.perf_counter() - t0

    scratch = learner.init(init_fn(jax.random.fold_in(root, 2))).params
    params = {name: train.best_params, "scratch": scratch}
    head_key = jax.random.fold_in(root, 3)
    lr_search, chosen = {}, {}
    for row, fn, p in (("baseline++_raw", _raw_features, None),
                       ("baseline++_meta", embed_fn, train.best_params["embed"])):
        chosen[row], scores = select_head_lr(
            fn, p, val_tasks, n_way=n_way, steps=finetune_steps, scale=finetune_scale,
            lrs=finetune_lrs, key=head_key, chunk_size=chunk_size)
        lr_search[row] = {"chosen_lr": chosen[row],
                          "val_accuracy": {str(k): v for k, v in scores.items()}}

    all_metrics = evaluate_metric_methods(
        task_loss=task_loss, embed_fn=embed_fn, n_way=n_way, params=params,
        finetune_lrs=chosen, tasks=test_tasks, head_key=head_key,
        finetune_steps=finetune_steps, finetune_scale=finetune_scale, chunk_size=chunk_size)
    summary = {
        "metric": "accuracy",
        "results": {m: v["accuracy"] for m, v in all_metrics.items()},
        "all_metrics": all_metrics,
        "chance": 1.0 / n_way,
        "finetune": {"head": "cosine", "steps": finetune_steps, "scale": finetune_scale,
                     "lr_search": lr_search},
        "best_val_step": train.best_step,
        "num_test_tasks": num_tasks(test_tasks),
        "meta_train_seconds": t_meta,
        "wall_seconds": time.perf_counter() - t0,
    }
    return MetricComparison(summary=summary, params=params, finetune_lrs=chosen,
                            head_key=head_key, train=train)


def run_fewshot(
    config: FewShotConfig,
    *,
    name: str,
    make_learner: Callable[[EmbedFn, optax.GradientTransformation], MetaLearner],
    make_task_loss: Callable[[EmbedFn], TaskLossFn],
    out_dir: str | Path | None = None,
    progress: bool = True,
    extra: dict | None = None,
) -> dict:
    """Meta-trains a metric learner on :func:`metajax.tasks.gaussian_classes` episodes and
    compares it with baselines on the same test tasks (see :func:`compare_metric_learner`
    for the rows).

    Args:
        config: the experiment config.
        name: the method's row name.
        make_learner: ``make_learner(embed_fn, outer_opt) -> MetaLearner``.
        make_task_loss: ``make_task_loss(embed_fn) -> task_loss`` (the same head, for
            validation and test).
        out_dir: where ``metrics.jsonl``, ``summary.json`` and ``learning_curve.png`` go.
        progress: show a progress bar.
        extra: more entries for the summary (e.g. method options).

    Returns:
        The summary dict (also written to ``summary.json``).
    """
    t0 = time.perf_counter()
    writer = RunWriter(out_dir) if out_dir is not None else None
    sample = functools.partial(gaussian_classes, n_way=config.n_way, k_shot=config.k_shot,
                               n_query=config.n_query, dim=config.dim,
                               n_informative=config.n_informative)
    embed_fn, init_fn = mlp_embedding(config)
    result = compare_metric_learner(
        learner=make_learner(embed_fn, optax.adam(config.outer_lr)), name=name,
        task_loss=make_task_loss(embed_fn), embed_fn=embed_fn, init_fn=init_fn,
        sample_train=functools.partial(sample, n_tasks=config.meta_batch),
        val_tasks=sample(split_key(config.seed, "val"), config.val_tasks),
        test_tasks=sample(split_key(config.seed, "test"), config.test_tasks),
        seed=config.seed, num_steps=config.num_steps, tasks_per_step=config.meta_batch,
        n_way=config.n_way, steps_per_call=config.steps_per_call, log_every=config.log_every,
        val_every=config.val_every, finetune_steps=config.finetune_steps,
        finetune_lrs=config.finetune_lrs, finetune_scale=config.finetune_scale, writer=writer,
        progress=progress)
    summary = dict(result.summary)
    summary["task"] = {"n_way": config.n_way, "k_shot": config.k_shot,
                       "n_query": config.n_query, "dim": config.dim,
                       "n_informative": config.n_informative}
    summary["wall_seconds"] = time.perf_counter() - t0
    summary.update(extra or {})
    if writer is not None:
        writer.write("summary.json", summary)
        plots.plot_learning_curve(read_records(writer.path("metrics.jsonl")),
                                  writer.path("learning_curve.png"), metric="accuracy",
                                  log_scale=False)
    return summary
