"""MAML few-shot classification on Omniglot (N-way K-shot, Conv4) vs scratch and pretrained.

The defaults are sized for a 2-core CPU (roughly 10-15 minutes when the cores are free): a
strided Conv4 with 32 filters, 4 tasks per meta-batch, 600 outer steps, 600 test episodes.
Conv nets under ``vmap`` are slow on CPU (see the README), so this is a smoke-scale run, not a
reproduction: 300 steps of this setup gave 75.8 ± 1.3% 5-way 1-shot accuracy after one step
on 200 test episodes (chance 20%). The MAML paper's 5-way 1-shot setup (98.7%) is
``features=64 meta_batch=32 num_steps=60000 inner_lr=0.4 n_query=1``; run that on a GPU.
20-way (the MAML code's settings): ``--set n_way=20 --set inner_lr=0.1 --set inner_steps=5
--set meta_batch=16``.

Data: ``data_root`` (or ``$METAJAX_DATA``) must hold ``omniglot/images_background.zip``,
``omniglot/images_evaluation.zip`` and ``omniglot/splits/`` (Vinyals split). Training uses
the Vinyals train classes, parameter selection the val classes (accuracy, higher is better),
and the final table the test classes: mean ± 95% CI over ``test_tasks`` episodes.
``split=maml`` trains on the MAML split (1100 + 100 validation characters, random rotations
per task) instead. The "pretrained" baseline trains jointly on episodes whose labels are
re-permuted every episode, so it learns little beyond its features: expect near-scratch
numbers."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import metajax
from metajax import data, losses, models, tasks
from metajax.experiment import RunWriter, compare_with_baselines, plots, read_records


@dataclasses.dataclass(frozen=True)
class Config:
    """5-way 1-shot by default; CPU-sized (see the module docstring for the paper's setup)."""

    seed: int = 0
    data_root: str = ""  # directory holding omniglot/; "" = $METAJAX_DATA
    cache_dir: str = ""  # decoded-image cache; "" = next to the data, else ~/.cache/metajax
    split: str = "vinyals"  # "vinyals" (rotations as classes) or "maml" (random task rotations)
    n_way: int = 5
    k_shot: int = 1
    n_query: int = 15
    num_steps: int = 600
    meta_batch: int = 4
    inner_steps: int = 1
    inner_lr: float = 0.4
    outer_lr: float = 1e-3
    first_order: bool = False
    features: int = 32
    strided: bool = True
    eval_steps: tuple[int, ...] = (1, 3)
    test_tasks: int = 600
    val_tasks: int = 100
    val_every: int = 200
    log_every: int = 50
    steps_per_call: int = 50
    pretrain_steps: int = 600
    baseline_lrs: tuple[float, ...] = (0.01, 0.1, 0.4)
    eval_chunk: int = 50


def load_splits(config: Config) -> data.FewShotSplits:
    """The train/val/test class sets of ``config.split``."""
    root = config.data_root or None
    cache = config.cache_dir or None
    if config.split == "maml":
        return data.omniglot(root, split="maml", cache_dir=cache, num_val=100)
    return data.omniglot(root, split=config.split, cache_dir=cache)


def main(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Runs the experiment; writes metrics, summary and the learning curve into ``out_dir``."""
    splits = load_splits(config)
    rotate = config.split == "maml"
    sampler = functools.partial(data.episodes, n_way=config.n_way, k_shot=config.k_shot,
                                n_query=config.n_query, rotate=rotate, invert=True)

    sample_fixed = jax.jit(sampler, static_argnames="n_tasks")

    def fixed_tasks(split: str, n: int) -> metajax.TaskBatch:
        images = jnp.asarray(getattr(splits, split).images)
        return sample_fixed(tasks.split_key(config.seed, split), images, n_tasks=n)

    model = models.Conv4(n_way=config.n_way, features=config.features, strided=config.strided)
    example = jnp.zeros((config.n_way * config.k_shot, *splits.train.image_shape))
    init = jax.jit(model.init)
    variables = init(jax.random.PRNGKey(config.seed), example)
    loss_fn = losses.cross_entropy(models.linen_apply(model, variables))
    init_fn = lambda key: init(key, example)["params"]  # noqa: E731
    learner = metajax.maml(loss_fn, optax.adam(config.outer_lr), inner_steps=config.inner_steps,
                           inner_lr=config.inner_lr, first_order=config.first_order,
                           has_aux=True)
    writer = RunWriter(out_dir) if out_dir is not None else None
    train_images = jnp.asarray(splits.train.images)
    result = compare_with_baselines(
        learner=learner, name="maml", loss_fn=loss_fn, init_fn=init_fn,
        sample_train=functools.partial(sampler, dataset_images=train_images,
                                       n_tasks=config.meta_batch),
        val_tasks=fixed_tasks("val", config.val_tasks),
        test_tasks=fixed_tasks("test", config.test_tasks), seed=config.seed,
        num_steps=config.num_steps, tasks_per_step=config.meta_batch,
        inner_lr=config.inner_lr, eval_steps=config.eval_steps,
        val_adapt_steps=config.inner_steps, pretrain_steps=config.pretrain_steps,
        baseline_lrs=config.baseline_lrs, has_aux=True, metric="accuracy",
        higher_is_better=True, steps_per_call=config.steps_per_call,
        log_every=config.log_every, val_every=config.val_every,
        chunk_size=config.eval_chunk, writer=writer, progress=progress)
    summary = dict(result.summary)
    summary["dataset"] = {s: {"name": d.name, "classes": d.n_classes}
                          for s, d in splits._asdict().items() if d is not None}
    summary["episode"] = {"n_way": config.n_way, "k_shot": config.k_shot,
                          "n_query": config.n_query}
    if writer is not None:
        writer.write("summary.json", summary)
        plots.plot_learning_curve(read_records(writer.path("metrics.jsonl")),
                                  writer.path("learning_curve.png"), metric="accuracy",
                                  log_scale=False)
    return summary
