"""Few-shot classification experiments: a metric learner vs. honest baselines, same test tasks."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax._src import plots
from metajax._src.evaluate import mean_ci95
from metajax._src.finetune import finetune_head
from metajax._src.metric import EmbedFn, TaskLossFn, make_episode_evaluator
from metajax._src.run_io import RunWriter, read_records
from metajax._src.tasks.gaussian import gaussian_classes
from metajax._src.tasks.streams import split_key
from metajax._src.training import meta_train
from metajax._src.types import MetaLearner, Params
from metajax.models import MLP


@dataclasses.dataclass(frozen=True)
class FewShotConfig:
    """Shared fields of the few-shot experiments on :func:`metajax.tasks.gaussian_classes`.

    The embedding is an MLP ``dim -> hidden... -> embed_dim``; meta-training uses Adam.
    """

    seed: int = 0
    num_steps: int = 2_000
    meta_batch: int = 16
    n_way: int = 5
    k_shot: int = 1
    n_query: int = 15
    dim: int = 32
    n_informative: int = 8
    hidden: tuple[int, ...] = (64,)
    embed_dim: int = 32
    outer_lr: float = 1e-3
    test_tasks: int = 1000
    val_tasks: int = 200
    val_every: int = 500
    log_every: int = 250
    steps_per_call: int = 250
    finetune_steps: int = 100
    finetune_lrs: tuple[float, ...] = (0.01, 0.1, 1.0)
    finetune_scale: float = 10.0


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
    return x


@functools.lru_cache(maxsize=16)
def _finetune_evaluator(embed_fn: EmbedFn, n_way: int, steps: int, scale: float):
    """Jitted ``evaluate(params, tasks, lr, key)`` of Baseline++ (lr and key traced)."""

    def evaluate(params, tasks, lr, key):
        task_fn = finetune_head(embed_fn, n_way=n_way, key=key, head="cosine", steps=steps,
                                lr=lr, scale=scale)
        return make_episode_evaluator(task_fn)(params, tasks)

    return jax.jit(evaluate)


def _summaries(per_task: dict[str, np.ndarray]) -> dict[str, dict[str, dict]]:
    return {name: {"0": mean_ci95(v)._asdict()} for name, v in per_task.items()}


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
    """Meta-trains a metric learner and compares it with baselines on the same test tasks.

    Rows of ``summary["results"]`` (query accuracy, mean ± 95% CI over ``test_tasks`` tasks):

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
    val_tasks = sample(split_key(config.seed, "val"), config.val_tasks)
    test_tasks = sample(split_key(config.seed, "test"), config.test_tasks)
    embed_fn, init_fn = mlp_embedding(config)
    root = jax.random.PRNGKey(config.seed)
    learner = make_learner(embed_fn, optax.adam(config.outer_lr))
    evaluate = jax.jit(make_episode_evaluator(make_task_loss(embed_fn)))

    def validate(params):
        out = jax.device_get(evaluate(params, val_tasks))
        return {k: float(np.mean(v)) for k, v in out.items()}

    def on_record(record):
        if writer is not None:
            writer.log({"method": name, **record})

    train = meta_train(learner.step, learner.init(init_fn(jax.random.fold_in(root, 1))),
                       functools.partial(sample, n_tasks=config.meta_batch),
                       key=jax.random.fold_in(split_key(config.seed, "train"), 0),
                       num_steps=config.num_steps, tasks_per_step=config.meta_batch,
                       steps_per_call=config.steps_per_call, log_every=config.log_every,
                       validate=validate, val_every=config.val_every, val_metric="accuracy",
                       higher_is_better=True, on_record=on_record, progress=progress, desc=name)
    t_meta = time.perf_counter() - t0

    per_task = {name: evaluate(train.best_params, test_tasks)}
    scratch = learner.init(init_fn(jax.random.fold_in(root, 2))).params
    per_task["scratch"] = evaluate(scratch, test_tasks)

    head_key = jax.random.fold_in(root, 3)
    lr_search = {}
    for row, fn, params in (("baseline++_raw", _raw_features, None),
                            ("baseline++_meta", embed_fn, train.best_params["embed"])):
        finetuned = _finetune_evaluator(fn, config.n_way, config.finetune_steps,
                                        config.finetune_scale)
        scores = {lr: float(np.mean(finetuned(params, val_tasks, jnp.float32(lr),
                                              head_key)["accuracy"]))
                  for lr in config.finetune_lrs}
        best = max(scores, key=scores.get)
        lr_search[row] = {"chosen_lr": best, "val_accuracy": {str(k): v for k, v in
                                                              scores.items()}}
        per_task[row] = finetuned(params, test_tasks, jnp.float32(best), head_key)

    order = list(per_task)  # device_get would sort the keys; keep the method first
    per_task = jax.device_get(per_task)
    all_metrics = {m: _summaries(per_task[m]) for m in order}
    summary = {
        "metric": "accuracy",
        "results": {m: v["accuracy"] for m, v in all_metrics.items()},
        "all_metrics": all_metrics,
        "chance": 1.0 / config.n_way,
        "task": {"n_way": config.n_way, "k_shot": config.k_shot, "n_query": config.n_query,
                 "dim": config.dim, "n_informative": config.n_informative},
        "finetune": {"head": "cosine", "steps": config.finetune_steps,
                     "scale": config.finetune_scale, "lr_search": lr_search},
        "best_val_step": train.best_step,
        "num_test_tasks": config.test_tasks,
        "meta_train_seconds": t_meta,
        "wall_seconds": time.perf_counter() - t0,
        **(extra or {}),
    }
    if writer is not None:
        writer.write("summary.json", summary)
        plots.plot_learning_curve(read_records(writer.path("metrics.jsonl")),
                                  writer.path("learning_curve.png"), metric="accuracy",
                                  log_scale=False)
    return summary

