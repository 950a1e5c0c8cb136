"""Omniglot few-shot experiments: data, episode samplers, the Conv4 and the shared runs.

Every ``experiments/omniglot_*`` module is a config plus a call into this module:
:func:`run_omniglot` for gradient-based meta-learners (compared with scratch and
pre-train + fine-tune by :func:`metajax.experiment.compare_with_baselines`) and
:func:`run_omniglot_metric` for metric learners (compared with scratch and Baseline++ by
:func:`metajax.experiment.compare_metric_learner`). Both optionally evaluate the selected
parameters and the same baselines on digits episodes (:func:`metajax.data.digits`) and record
how much of the in-domain advantage survives the change of domain.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax import losses
from metajax._src.core.checks import check_int
from metajax._src.core.chunking import map_task_chunks
from metajax._src.core.evaluate import mean_ci95
from metajax._src.core.types import MetaLearner, Params, TaskBatch
from metajax._src.data.dataset import FewShotSplits
from metajax._src.data.digits import N_CLASSES as DIGIT_CLASSES
from metajax._src.data.digits import digits
from metajax._src.data.episodes import episodes, rot90
from metajax._src.data.omniglot import omniglot
from metajax._src.experiment import plots
from metajax._src.experiment.checkpoint import Checkpointer, fingerprint
from metajax._src.experiment.classifier_pretrain import classifier_learner, minibatch_sampler
from metajax._src.experiment.comparison import (
    Pretraining,
    compare_with_baselines,
    evaluate_methods,
    pretraining_key,
    run_pretraining,
)
from metajax._src.experiment.config import (
    ConfigError,
    Count,
    MetaBatch,
    NonNegative,
    PositiveRate,
    Rate,
    Rates,
    Rule,
    StepCounts,
    Steps,
    TestTasks,
    Way,
    one_of,
    validate_config,
)
from metajax._src.experiment.cross_domain import cross_domain_report
from metajax._src.experiment.fewshot import (
    compare_metric_learner,
    evaluate_metric_methods,
    finetune_evaluator,
    select_head_lr,
)
from metajax._src.experiment.run_io import RunWriter, read_records
from metajax._src.metric.learner import EmbedFn, TaskLossFn
from metajax._src.tasks.streams import split_key
from metajax.models import Conv4, linen_apply

IMAGE_SIZE = 28
SPLITS = ("vinyals", "maml")


IMAGES_PER_CLASS = 20  # drawings of each Omniglot character
TEST_CHARACTERS = 423  # the test characters of both the Vinyals and the MAML split


@dataclasses.dataclass(frozen=True)
class OmniglotConfig:
    """Fields shared by the Omniglot experiments (data, episodes, training loop, evaluation).

    Training episodes have ``k_shot`` support and ``n_query`` query examples per class;
    validation, test and cross-domain episodes ``k_shot`` and ``eval_n_query``. The defaults
    of ``steps_per_call``, ``unroll`` and ``eval_chunk`` suit a CPU: XLA:CPU runs convolutions
    inside a loop about 10x slower, and the CPU task batching (one convolution per task)
    compiles programs whose size grows with the number of tasks in them, while its speed per
    task does not depend on it. On a GPU use e.g. ``steps_per_call=100 unroll=false
    eval_chunk=100``.

    Every run also reports Chen et al.'s (2019) Baseline: one Conv4 trained by ordinary
    classification over all training classes (global labels; ``pretrain_steps`` Adam steps of
    ``pretrain_lr`` on minibatches of ``pretrain_batch`` images), whose frozen embedding gets
    a new linear head per episode (``baseline_head_steps`` SGD steps, momentum 0.9, step size
    from ``baseline_head_lrs`` best on the validation episodes). With ``pretrain_cache`` set,
    that network is checkpointed in a subfolder of it named by a fingerprint of everything
    it depends on (seed, split, class count, architecture, pre-training options), so runs that
    share it (e.g. every 5-way 1-shot method, or every ProtoNet setting) train it once; a run
    finding it there restores it bit-exactly, including its training history.
    """

    seed: int = 0
    data_root: str = ""  # directory holding omniglot/; "" = $METAJAX_DATA
    cache_dir: str = ""  # decoded-image cache; "" = $METAJAX_CACHE or ~/.cache/metajax
    # "vinyals" (rotations as classes) or "maml" (random task rotations)
    split: one_of("vinyals", "maml") = "vinyals"
    n_way: Way = 5
    k_shot: Count = 1
    n_query: Count = 15  # query examples per class in training episodes
    eval_n_query: Count = 15  # ... in validation, test and cross-domain episodes
    num_steps: Steps = 600
    meta_batch: MetaBatch = 4
    outer_lr: PositiveRate = 1e-3
    features: Count = 32
    strided: bool = True
    test_tasks: TestTasks = 600
    val_tasks: Count = 100
    val_every: Steps = 200
    log_every: Steps = 50
    steps_per_call: Steps = 1
    unroll: bool = True
    eval_chunk: Count = 2  # episodes per compiled evaluation call
    cross_domain: bool = True  # also evaluate on digits episodes (needs scikit-learn)
    cross_domain_way: Annotated[int, Rule(low=2, high=10)] = 5
    cross_domain_tasks: TestTasks = 600
    # Chen et al.'s Baseline (every Omniglot run): a Conv4 pre-trained on global labels.
    pretrain_steps: NonNegative = 6_000  # ~4.7 epochs of the 82k Vinyals images at batch 64
    pretrain_batch: Count = 64
    pretrain_lr: PositiveRate = 1e-3
    baseline_head_steps: Steps = 100
    baseline_head_lrs: Rates = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
    pretrain_cache: str = ""  # keep the pre-trained Conv4 here for reuse; "" = train every run

    def __post_init__(self):
        validate_config(self)

    def validate(self):
        """Rules across fields (the fields' own are in their annotations)."""
        for name in ("n_query", "eval_n_query"):
            if self.k_shot + getattr(self, name) > IMAGES_PER_CLASS:
                raise ConfigError(
                    f"{name}: expected k_shot + {name} <= {IMAGES_PER_CLASS} (the images of an "
                    f"Omniglot character); got {self.k_shot} + {getattr(self, name)}.")
        test_classes = TEST_CHARACTERS * (4 if self.split == "vinyals" else 1)
        if self.n_way > test_classes:
            raise ConfigError(f"n_way: expected at most {test_classes} (the test classes of the "
                              f"{self.split!r} split); got {self.n_way}.")


@dataclasses.dataclass(frozen=True)
class OmniglotGradientConfig(OmniglotConfig):
    """:class:`OmniglotConfig` plus the fields of gradient-based meta-learners and baselines.

    The meta-learner adapts with ``inner_steps`` SGD steps of ``inner_lr`` in training and is
    tested after ``0`` and each of ``eval_steps`` steps. Besides ``baseline`` (see
    :class:`OmniglotConfig`), ``pretrained`` fine-tunes the globally pre-trained Conv4 whole
    from a zero ``n_way`` head, and ``scratch`` a fresh Conv4, each with the step size from
    ``baseline_lrs`` best on the validation episodes.
    """

    inner_steps: Steps = 1
    inner_lr: Rate = 0.4
    eval_steps: StepCounts = (1, 3)
    baseline_lrs: Rates = (0.001, 0.003, 0.01, 0.03, 0.1, 0.4, 1.0)

    def validate(self):
        """:meth:`OmniglotConfig.validate`, and digits episodes no wider than the head."""
        super().validate()
        if self.cross_domain and self.cross_domain_way > self.n_way:
            raise ConfigError(
                f"cross_domain_way: expected at most n_way = {self.n_way} (the classifier head "
                f"scores {self.n_way} classes; or set cross_domain=false); got "
                f"{self.cross_domain_way}.")


@dataclasses.dataclass(frozen=True)
class OmniglotMetricConfig(OmniglotConfig):
    """:class:`OmniglotConfig` plus the fields of metric learners (ProtoNets and relatives).

    Training episodes are ``train_way``-way (more classes than the ``n_way``-way test
    episodes, as in Prototypical Networks); the Baseline++ rows fine-tune a cosine head for
    ``finetune_steps`` steps at the step size from ``finetune_lrs`` best on validation.
    """

    train_way: Way = 60
    finetune_steps: Steps = 100
    finetune_lrs: Rates = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
    finetune_scale: PositiveRate = 10.0


def omniglot_splits(config: OmniglotConfig) -> FewShotSplits:
    """The train/val/test class sets of ``config.split`` (``"maml"``: 100 validation chars)."""
    if config.split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}; got {config.split!r}.")
    root = config.data_root or None
    cache = config.cache_dir or None
    if config.split == "maml":
        return omniglot(root, split="maml", cache_dir=cache, num_val=100)
    return omniglot(root, split=config.split, cache_dir=cache)


def omniglot_sampler(config: OmniglotConfig, *, n_way: int, n_query: int) -> Callable:
    """``sample(key, images, n_tasks)`` of ``n_way``-way ``config.k_shot``-shot episodes.

    Strokes are 1 on a 0 background (``invert=True``); ``split="maml"`` rotates the classes
    of each episode by random multiples of 90 degrees. The images are an argument, so under
    ``jit`` they are an input of the program, not a constant.
    """
    return functools.partial(episodes, n_way=n_way, k_shot=config.k_shot, n_query=n_query,
                             rotate=config.split == "maml", invert=True)


def omniglot_conv4(config: OmniglotConfig, *, head: bool = True
                   ) -> tuple[Callable[[Params, jax.Array], jax.Array],
                              Callable[[jax.Array], Params]]:
    """The Conv4 of ``config`` as ``(apply, init_fn)`` for 28x28 grayscale images.

    ``apply(params, x)`` normalises with the batch's own statistics (transductive batch norm,
    as MAML); ``head=True`` ends in ``config.n_way`` logits (the Dense layer ``"head"``),
    ``head=False`` returns the embedding. The same function objects are returned for the same
    architecture, so programs compiled for them are reused.

    Examples:
        >>> apply, init_fn = omniglot_conv4(OmniglotConfig(features=4))
        >>> params = init_fn(jax.random.PRNGKey(0))
        >>> apply(params, jnp.zeros((3, 28, 28, 1))).shape
        (3, 5)
    """
    return _conv4(config.n_way if head else 1, config.features, config.strided, head)


@functools.lru_cache(maxsize=16)
def _conv4(n_way: int, features: int, strided: bool, head: bool):
    model = Conv4(n_way=n_way, features=features, strided=strided, head=head)
    example = jnp.zeros((2, IMAGE_SIZE, IMAGE_SIZE, 1))
    # Eager, not jitted: its primitives compile once per process (~4 s) and are then shared
    # by every Conv4 shape, whereas each jitted init is an XLA compile of its own (2-5 s on
    # CPU; a run builds three: the n_way, embedding and all-class heads).
    init = model.init
    apply = linen_apply(model, init(jax.random.PRNGKey(0), example))

    def init_fn(key: jax.Array) -> Params:
        return init(key, example)["params"]

    return apply, init_fn


def omniglot_loss(config: OmniglotConfig, *, n_way: int | None = None):
    """``(loss_fn, init_fn)``: the Conv4 classifier's cross-entropy (``has_aux``: accuracy).

    ``n_way`` below ``config.n_way`` scores only the first ``n_way`` logits (used for 5-way
    digits episodes after 20-way training; labels are permuted per episode, so any subset of
    the head's units is as good as any other).
    """
    apply, init_fn = omniglot_conv4(config)
    if n_way is None or n_way == config.n_way:
        return losses.cross_entropy(apply), init_fn
    return losses.cross_entropy(lambda p, x: apply(p, x)[..., :n_way]), init_fn


class _Episodes(NamedTuple):
    splits: FewShotSplits
    train_images: jax.Array
    val: TaskBatch
    test: TaskBatch
    cross: TaskBatch | None
    cross_info: dict | None


def _check_cross_domain(config: OmniglotConfig, *, max_way: int) -> None:
    way = config.cross_domain_way
    if isinstance(way, bool) or not isinstance(way, int) or not 2 <= way <= max_way:
        raise ValueError(f"`cross_domain_way` must be an int in [2, {max_way}] (digits has "
                         f"{DIGIT_CLASSES} classes; a classifier head cannot score more classes "
                         f"than its n_way); got {way!r}. Set cross_domain=false to skip the "
                         "digits evaluation.")


def _episodes(config: OmniglotConfig) -> _Episodes:
    """Loads the data (digits first, so a missing scikit-learn fails before training)."""
    digit_images = digits(image_size=IMAGE_SIZE).test.images if config.cross_domain else None
    splits = omniglot_splits(config)
    sample = jax.jit(omniglot_sampler(config, n_way=config.n_way, n_query=config.eval_n_query),
                     static_argnames="n_tasks")

    def fixed(split: str, n: int) -> TaskBatch:
        images = jnp.asarray(getattr(splits, split).images)
        return sample(split_key(config.seed, split), images, n_tasks=n)

    cross = cross_info = None
    if digit_images is not None:
        way = config.cross_domain_way
        sample_digits = jax.jit(omniglot_sampler(config, n_way=way, n_query=config.eval_n_query),
                                static_argnames="n_tasks")
        # A stream of its own, disjoint from the Omniglot test episodes.
        key = jax.random.fold_in(split_key(config.seed, "test"), 1)
        cross = sample_digits(key, jnp.asarray(digit_images), n_tasks=config.cross_domain_tasks)
        cross_info = {"dataset": {"name": "digits", "classes": int(digit_images.shape[0]),
                                  "examples_per_class": int(digit_images.shape[1])},
                      "episode": {"n_way": way, "k_shot": config.k_shot,
                                  "n_query": config.eval_n_query},
                      "num_test_tasks": config.cross_domain_tasks}
    return _Episodes(splits=splits, train_images=jnp.asarray(splits.train.images),
                     val=fixed("val", config.val_tasks), test=fixed("test", config.test_tasks),
                     cross=cross, cross_info=cross_info)


def _describe(config: OmniglotConfig, splits: FewShotSplits, *, train_way: int) -> dict:
    return {
        "dataset": {s: {"name": d.name, "classes": d.n_classes}
                    for s, d in splits._asdict().items() if d is not None},
        "episode": {"n_way": config.n_way, "k_shot": config.k_shot, "n_query": config.n_query,
                    "eval_n_query": config.eval_n_query, "train_way": train_way},
    }


def _finish(summary: dict, writer: RunWriter | None, *, methods: tuple[str, ...]) -> dict:
    """Writes ``summary.json``, ``learning_curve.png`` and ``accuracy_vs_time.png`` (the
    validation accuracy of ``methods`` against their training wall time)."""
    if writer is not None:
        writer.write("summary.json", summary)
        records = read_records(writer.path("metrics.jsonl"))
        plots.plot_learning_curve(records, writer.path("learning_curve.png"),
                                  metric="accuracy", log_scale=False)
        plots.plot_metric_vs_time(
            {m: [r for r in records if r.get("method") == m] for m in methods},
            writer.path("accuracy_vs_time.png"), metric="val_accuracy",
            title=f"{summary['episode']['n_way']}-way {summary['episode']['k_shot']}-shot "
                  "Omniglot, validation episodes")
    return summary


def omniglot_classifier_pretraining(config: OmniglotConfig, train_images
                                    ) -> Pretraining:
    """Global-label classification of the training classes, for the pre-trained baselines.

    A Conv4 with one head unit per training class (4112 for the Vinyals split, whose classes
    include the rotations; 1100 characters for ``split="maml"``, each minibatch image then
    rotated by a random multiple of 90 degrees as augmentation, its label unchanged) is
    trained with Adam (``pretrain_lr``) on minibatches of ``pretrain_batch`` images, drawn
    uniformly from all training images and preprocessed like the episodes (strokes 1 on 0).
    ``to_init`` keeps the body and puts a zero ``n_way`` head on it: the start of
    whole-network fine-tuning (a zero head treats every class alike, as labels are arbitrary
    per episode).

    Args:
        config: the experiment config.
        train_images: ``[n_classes, n_examples, 28, 28, 1]`` ``uint8`` training images.

    Returns:
        The :class:`metajax.experiment.Pretraining` for
        :func:`metajax.experiment.compare_with_baselines`.
    """
    for name in ("pretrain_batch", "pretrain_steps", "baseline_head_steps"):
        check_int(name, getattr(config, name), 1)
    if not config.baseline_head_lrs:
        raise ValueError("`baseline_head_lrs` must list at least one candidate step size.")
    n_classes, n_examples = train_images.shape[:2]
    apply, init_fn = _conv4(n_classes, config.features, config.strided, True)
    rotate = config.split == "maml"

    def transform(key, x):
        x = 1.0 - x.astype(jnp.float32) / 255.0
        if rotate:
            x = jax.vmap(rot90)(x, jax.random.randint(key, (x.shape[0],), 0, 4))
        return x

    def to_init(params):
        features = params["head"]["kernel"].shape[0]
        return {**params, "head": {"kernel": jnp.zeros((features, config.n_way)),
                                   "bias": jnp.zeros((config.n_way,))}}

    checkpointer = None
    if config.pretrain_cache:
        spec = {"what": "omniglot global-label Conv4", "seed": config.seed,
                "split": config.split, "classes": int(n_classes), "examples": int(n_examples),
                "features": config.features, "strided": config.strided,
                "steps": config.pretrain_steps, "batch": config.pretrain_batch,
                "lr": config.pretrain_lr}
        key = fingerprint(json.dumps(spec, sort_keys=True))
        checkpointer = Checkpointer(Path(config.pretrain_cache) / f"conv4-{key}",
                                    config_fingerprint=key, keep=1)
    inputs = jnp.reshape(train_images, (n_classes * n_examples, *train_images.shape[2:]))
    labels = jnp.repeat(jnp.arange(n_classes, dtype=jnp.int32), n_examples)
    init = init_fn(jax.random.fold_in(jax.random.PRNGKey(config.seed), 1))
    learner = classifier_learner(losses.cross_entropy(apply), optax.adam(config.pretrain_lr),
                                 has_aux=True)
    return Pretraining(learner=learner, params=init,
                       sample=minibatch_sampler(config.pretrain_batch, transform=transform),
                       sample_args=(inputs, labels), batch_size=config.pretrain_batch,
                       to_init=to_init, checkpointer=checkpointer)


def _body(params: Params) -> Params:
    return {k: v for k, v in params.items() if k != "head"}


def _baseline_row(config: OmniglotConfig, body: Params, tasks: TaskBatch, *,
                  n_way: int, lr: float, key: jax.Array) -> dict[str, dict]:
    """Chen et al.'s Baseline on ``tasks``: ``{metric: per-task array}``."""
    embed_fn, _ = omniglot_conv4(config, head=False)
    evaluate = finetune_evaluator(embed_fn, n_way, config.baseline_head_steps, 1.0, "linear")
    out = map_task_chunks(lambda t: evaluate(body, t, jnp.float32(lr), key), tasks,
                          chunk_size=config.eval_chunk)
    return {k: np.asarray(v) for k, v in jax.device_get(out).items()}


class _Baseline(NamedTuple):
    test: dict  # {metric: per-task array} on the test episodes
    cross: dict | None  # ... on the digits episodes
    info: dict  # summary["baseline"]


def _chen_baseline(config: OmniglotConfig, data: _Episodes, pretrained: Params, *,
                   column: str) -> _Baseline:
    """Chen et al.'s Baseline: a new linear head per episode on the frozen pre-trained body
    (its step size chosen on the validation episodes), on the test and digits episodes."""
    body = _body(pretrained)
    head_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 4)
    embed_fn, _ = omniglot_conv4(config, head=False)
    head_lr, scores = select_head_lr(
        embed_fn, body, data.val, n_way=config.n_way, steps=config.baseline_head_steps,
        scale=1.0, lrs=config.baseline_head_lrs, key=head_key, head="linear",
        chunk_size=config.eval_chunk)
    row = functools.partial(_baseline_row, config, body, lr=head_lr, key=head_key)
    test = row(data.test, n_way=config.n_way)
    cross = row(data.cross, n_way=config.cross_domain_way) if data.cross is not None else None
    info = {
        "pretraining": {"labels": "global", "classes": int(data.train_images.shape[0]),
                        "steps": config.pretrain_steps, "batch": config.pretrain_batch,
                        "lr": config.pretrain_lr,
                        "augment": "random 90-degree rotations" if config.split == "maml"
                        else None},
        "head": "linear", "head_steps": config.baseline_head_steps, "head_lr": head_lr,
        "head_lr_search": {str(k): v for k, v in scores.items()}, "column": column}
    return _Baseline(test=test, cross=cross, info=info)


def _with_baseline(table: dict, per_task: dict, column: str, *, after: str) -> dict:
    """``{row: {metric: {steps: cell}}}`` with the ``baseline`` row after the row ``after``,
    its cells in ``column`` only (the most-adapted one)."""
    cells = {name: {column: mean_ci95(v)._asdict()} for name, v in per_task.items()}
    return _insert_after(table, after, "baseline", cells)


def _insert_after(table: dict, after: str, key: str, value) -> dict:
    out = {}
    for k, v in table.items():
        out[k] = v
        if k == after:
            out[key] = value
    if key not in out:
        out[key] = value
    return out


def run_omniglot(
    config: OmniglotGradientConfig,
    learner: MetaLearner,
    *,
    name: str,
    inner_opt: optax.GradientTransformation | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    extra: dict | None = None,
) -> dict:
    """Meta-trains a gradient-based learner on Omniglot and compares it with the baselines.

    The learner must be built on ``omniglot_loss(config)[0]``. Training episodes come from
    the train classes; the parameters with the best validation accuracy (after
    ``inner_steps`` steps, on ``val_tasks`` episodes of the val classes) are tested with
    ``scratch`` and ``pretrained`` (see :func:`metajax.experiment.compare_with_baselines`) on
    ``test_tasks`` episodes of the test classes: accuracy after 0 and ``eval_steps`` SGD
    steps, mean ± 95% CI. With ``cross_domain``, the same parameters and step sizes are then
    evaluated on ``cross_domain_tasks`` ``cross_domain_way``-way episodes of
    :func:`metajax.data.digits`, and ``summary["cross_domain"]`` records both tables and how
    much of the in-domain advantage over the best baseline survives
    (:func:`metajax.experiment.advantage_retained`).

    Args:
        config: the experiment config.
        learner: the meta-learner.
        name: its row in the results.
        inner_opt: adapt the learner with this optimizer in validation and test (and on
            digits) instead of SGD at ``inner_lr`` (Reptile's Adam); baselines keep SGD.
        out_dir: where ``metrics.jsonl``, ``summary.json``, ``learning_curve.png`` and
            checkpoints go (optional).
        progress: show progress bars.
        extra: more entries for the summary (e.g. method options).

    Returns:
        The summary (also written to ``summary.json``).

    Raises:
        ValueError: ``cross_domain_way`` outside ``[2, min(n_way, 10)]``, or a bad ``split``.
        ImportError: ``cross_domain`` without scikit-learn.
    """
    t0 = time.perf_counter()
    if config.cross_domain:
        _check_cross_domain(config, max_way=min(config.n_way, DIGIT_CLASSES))
    data = _episodes(config)
    loss_fn, init_fn = omniglot_loss(config)
    writer = RunWriter(out_dir) if out_dir is not None else None
    sampler = omniglot_sampler(config, n_way=config.n_way, n_query=config.n_query)
    result = compare_with_baselines(
        learner=learner, name=name, loss_fn=loss_fn, init_fn=init_fn,
        sample_train=functools.partial(sampler, n_tasks=config.meta_batch),
        sample_args=(data.train_images,), val_tasks=data.val, test_tasks=data.test,
        seed=config.seed, num_steps=config.num_steps, tasks_per_step=config.meta_batch,
        inner_lr=config.inner_lr, inner_opt=inner_opt, eval_steps=config.eval_steps,
        val_adapt_steps=config.inner_steps, pretrain_steps=config.pretrain_steps,
        pretraining=omniglot_classifier_pretraining(config, data.train_images),
        baseline_lrs=config.baseline_lrs, has_aux=True, metric="accuracy",
        higher_is_better=True, steps_per_call=config.steps_per_call, unroll=config.unroll,
        log_every=config.log_every, val_every=config.val_every, chunk_size=config.eval_chunk,
        writer=writer, progress=progress)
    summary = dict(result.summary)
    steps = [int(s) for s in next(iter(summary["results"].values()))]
    column = str(steps[-1])

    baseline = _chen_baseline(config, data, result.params["pretrained"], column=column)
    summary["all_metrics"] = _with_baseline(summary["all_metrics"], baseline.test, column,
                                            after="pretrained")
    summary["results"] = {m: t["accuracy"] for m, t in summary["all_metrics"].items()}
    summary["baseline"] = baseline.info
    summary.update(_describe(config, data.splits, train_way=config.n_way))
    if data.cross is not None:
        way = config.cross_domain_way
        cross_loss, _ = omniglot_loss(config, n_way=way)
        table = evaluate_methods(cross_loss, result.params, result.lrs, data.cross, steps=steps,
                                 has_aux=True, chunk_size=config.eval_chunk,
                                 inner_opts=result.inner_opts)
        summary["cross_domain"] = cross_domain_report(
            summary["results"], _with_baseline(table, baseline.cross, column,
                                               after="pretrained"), metric="accuracy",
            method=name, baselines=("pretrained", "baseline", "scratch"), **data.cross_info)
    summary.update(extra or {})
    summary["wall_seconds"] = time.perf_counter() - t0
    return _finish(summary, writer, methods=(name,))


def run_omniglot_metric(
    config: OmniglotMetricConfig,
    *,
    name: str,
    make_learner: Callable[[EmbedFn, optax.GradientTransformation, int], MetaLearner],
    make_task_loss: Callable[[EmbedFn, int], TaskLossFn],
    out_dir: str | Path | None = None,
    progress: bool = True,
    extra: dict | None = None,
) -> dict:
    """Meta-trains a metric learner on Omniglot and compares it with scratch, Baseline++ and
    Chen et al.'s Baseline.

    The embedding is ``omniglot_conv4(config, head=False)``. Training episodes are
    ``train_way``-way with ``n_query`` queries per class; validation (parameter selection by
    accuracy) and test episodes are ``n_way``-way with ``eval_n_query``. The rows are those of
    :func:`metajax.experiment.compare_metric_learner` (the method, ``scratch``: its head on a
    random embedding, ``baseline++_raw`` and ``baseline++_meta``) and ``baseline``: the
    Conv4 of the same architecture pre-trained on global labels, frozen, with a linear head
    fitted per episode (as in :func:`run_omniglot`, see :class:`OmniglotConfig`). With
    ``cross_domain``, every row is evaluated again on digits episodes (same step sizes) and
    ``summary["cross_domain"]`` records how much of the advantage over the best of
    ``scratch``, ``baseline++_raw`` and ``baseline`` (the rows that meta-learn nothing)
    survives.

    Args:
        config: the experiment config.
        name: the method's row name.
        make_learner: ``make_learner(embed_fn, outer_opt, n_way) -> MetaLearner`` (called
            with ``train_way``).
        make_task_loss: ``make_task_loss(embed_fn, n_way) -> task_loss`` (called with
            ``n_way``, and ``cross_domain_way`` for digits).
        out_dir: where run files go (optional).
        progress: show a progress bar.
        extra: more entries for the summary.

    Returns:
        The summary (also written to ``summary.json``).
    """
    t0 = time.perf_counter()
    if config.cross_domain:
        _check_cross_domain(config, max_way=DIGIT_CLASSES)
    data = _episodes(config)
    embed_fn, init_fn = omniglot_conv4(config, head=False)
    writer = RunWriter(out_dir) if out_dir is not None else None
    sampler = omniglot_sampler(config, n_way=config.train_way, n_query=config.n_query)
    finetune: dict[str, Any] = {"finetune_steps": config.finetune_steps,
                                "finetune_scale": config.finetune_scale}
    result = compare_metric_learner(
        learner=make_learner(embed_fn, optax.adam(config.outer_lr), config.train_way),
        name=name, task_loss=make_task_loss(embed_fn, config.n_way), embed_fn=embed_fn,
        init_fn=init_fn, sample_train=functools.partial(sampler, n_tasks=config.meta_batch),
        sample_args=(data.train_images,), val_tasks=data.val, test_tasks=data.test,
        seed=config.seed, num_steps=config.num_steps, tasks_per_step=config.meta_batch,
        n_way=config.n_way, steps_per_call=config.steps_per_call, unroll=config.unroll,
        log_every=config.log_every, val_every=config.val_every,
        finetune_lrs=config.finetune_lrs, chunk_size=config.eval_chunk, writer=writer,
        progress=progress, **finetune)
    summary = dict(result.summary)
    # The globally pre-trained Conv4 of the gradient runs (same seed, same key: the same
    # network for the same architecture), for Chen et al.'s Baseline.
    t_pre = time.perf_counter()
    pretrained, pre = run_pretraining(
        omniglot_classifier_pretraining(config, data.train_images),
        key=pretraining_key(config.seed),
        num_steps=config.pretrain_steps, steps_per_call=config.steps_per_call,
        unroll=config.unroll, log_every=config.log_every, progress=progress,
        on_record=(lambda r: writer.log({"method": "pretrained", **r})) if writer else None)
    column = next(iter(summary["results"][name]))
    baseline = _chen_baseline(config, data, pretrained, column=column)
    summary["all_metrics"] = _with_baseline(summary["all_metrics"], baseline.test, column,
                                            after="baseline++_raw")
    summary["results"] = {m: t["accuracy"] for m, t in summary["all_metrics"].items()}
    summary["baseline"] = baseline.info
    summary["train_seconds"] = {name: result.train.train_seconds,
                                "pretrained": pre.train_seconds}
    summary["baseline_seconds"] = time.perf_counter() - t_pre
    summary.update(_describe(config, data.splits, train_way=config.train_way))
    if data.cross is not None:
        way = config.cross_domain_way
        table = evaluate_metric_methods(
            task_loss=make_task_loss(embed_fn, way), embed_fn=embed_fn, n_way=way,
            params=result.params, finetune_lrs=result.finetune_lrs, tasks=data.cross,
            head_key=result.head_key, chunk_size=config.eval_chunk, **finetune)
        summary["cross_domain"] = cross_domain_report(
            summary["results"], _with_baseline(table, baseline.cross, column,
                                               after="baseline++_raw"),
            metric="accuracy", method=name, baselines=("scratch", "baseline++_raw", "baseline"),
            **data.cross_info)
    summary.update(extra or {})
    summary["wall_seconds"] = time.perf_counter() - t0
    return _finish(summary, writer, methods=(name,))
