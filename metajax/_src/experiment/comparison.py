"""Meta-learner versus honest baselines on the same held-out tasks."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax._src.core.adapt import LossFn
from metajax._src.core.chunking import check_chunk_size, map_task_chunks
from metajax._src.core.evaluate import make_evaluator, summarize
from metajax._src.core.loop import Sampler
from metajax._src.core.types import Adaptation, MetaLearner, Params, TaskBatch, adaptation_of
from metajax._src.distributed.processes import task_axis, task_split
from metajax._src.experiment.baselines import lr_evaluator, pretrain, select_lr
from metajax._src.experiment.checkpoint import Checkpointer
from metajax._src.experiment.run_io import RunWriter
from metajax._src.experiment.tables import format_cell
from metajax._src.experiment.training import TrainResult, meta_train


class ComparisonResult(NamedTuple):
    """What :func:`compare_with_baselines` produced.

    Attributes:
        summary: the JSON-ready summary (``results``: method -> steps -> mean/ci95/n).
        params: ``{method: parameters evaluated}`` (meta-learned, pretrained, scratch).
        train: the meta-training :class:`TrainResult`.
        lrs: ``{method: test-time SGD step size}`` (a scalar, or a per-parameter pytree for
            Meta-SGD and ANIL), as used on the test tasks; with ``params``, everything
            :func:`evaluate_methods` needs to evaluate the same methods on other tasks.
        inner_opts: ``{method: optimizer}`` of the methods that adapt with their own
            optimizer (the ``inner_opts`` of :func:`evaluate_methods`).
    """

    summary: dict
    params: dict[str, Params]
    train: TrainResult
    lrs: dict[str, Any] | None = None
    inner_opts: dict[str, optax.GradientTransformation] | None = None


class Pretraining(NamedTuple):
    """A pre-training phase for the ``pretrained`` row of :func:`compare_with_baselines`.

    Replaces the default joint training on the episode stream (:func:`pretrain`) with any
    training that :func:`metajax.experiment.meta_train` can run, e.g. global-label
    classification (:func:`metajax.experiment.classifier_learner` with
    :func:`metajax.experiment.minibatch_sampler`), whose head has one unit per training
    class and so must be replaced before few-shot fine-tuning (``to_init``).

    Attributes:
        learner: ``init``/``step(state, batch)`` of the pre-training.
        params: its initial parameters.
        sample: ``sample(key, *sample_args) -> batch`` for ``learner.step``.
        sample_args: arrays ``sample`` reads (program arguments, not constants).
        batch_size: examples per step (for the throughput figure in the records).
        to_init: ``to_init(pretrained_params) -> params`` where fine-tuning starts (e.g. the
            pre-trained body with a fresh ``n_way`` head).
        checkpointer: where this pre-training is saved and resumed from, instead of the
            run's own ``pretrained`` checkpoints: e.g. a cache shared by every run with the
            same pre-training, which then trains it once (optional).
    """

    learner: MetaLearner
    params: Params
    sample: Callable
    sample_args: tuple
    batch_size: int
    to_init: Callable[[Params], Params]
    checkpointer: Checkpointer | None = None


def pretraining_key(seed: int) -> jax.Array:
    """The batch-stream key of the ``pretrained`` phase of :func:`compare_with_baselines`
    for ``seed`` (use it to pre-train the same network elsewhere)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), 3)


def run_pretraining(pretraining: Pretraining, *, key: jax.Array, num_steps: int,
                    **options) -> tuple[Params, TrainResult]:
    """Runs ``pretraining`` for ``num_steps`` steps from ``key``.

    Args:
        pretraining: the pre-training phase.
        key: PRNG key of its batch stream.
        num_steps: its steps.
        **options: further :func:`metajax.experiment.meta_train` options (``steps_per_call``,
            ``unroll``, ``log_every``, ``progress``, ``on_record``, ``checkpointer``, ``mesh``
            ...); ``sample_args`` is always ``pretraining.sample_args``, and
            ``pretraining.checkpointer``, if set, replaces ``checkpointer``.

    Returns:
        ``(pretraining.to_init(trained_params), train_result)``.
    """
    options = {**options, "sample_args": tuple(pretraining.sample_args)}
    if pretraining.checkpointer is not None:
        options["checkpointer"] = pretraining.checkpointer
    if options.get("shard_map") or pretraining.batch_size % jax.device_count():
        # Not split: the batch axis does not divide evenly over the devices, or the devices
        # are CPU processes, whose shards would each normalise their own part of the batch
        # (batch norm); run on every process instead, with the one-process result.
        options["mesh"], options["shard_map"] = None, False
    options.setdefault("desc", "pretrained")
    result = meta_train(pretraining.learner.step, pretraining.learner.init(pretraining.params),
                        pretraining.sample, key=key, num_steps=num_steps,
                        tasks_per_step=pretraining.batch_size, **options)
    return pretraining.to_init(result.state.params), result


def evaluate_methods(
    loss_fn: LossFn,
    params: dict[str, Params],
    lrs: dict[str, Any],
    tasks: TaskBatch,
    *,
    steps: Sequence[int],
    has_aux: bool = False,
    chunk_size: int | None = None,
    inner_opts: dict[str, optax.GradientTransformation] | None = None,
) -> dict[str, dict[str, dict[str, dict]]]:
    """Adapts every method on the same tasks and summarises its query metrics per step count.

    Args:
        loss_fn: the task loss.
        params: ``{method: parameters}`` where each method's adaptation starts.
        lrs: ``{method: SGD step size}`` (scalar or per-parameter pytree) for each method.
        tasks: the tasks (the same for every method).
        steps: adaptation step counts reported (``0`` = before adaptation).
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
        chunk_size: evaluate this many tasks per compiled call (memory bound; see
            :func:`map_task_chunks`); ``None``: all at once.
        inner_opts: ``{method: Optax optimizer}`` for methods that adapt with an optimizer of
            their own instead of SGD (e.g. Reptile's Adam); their ``lrs`` entry is ignored.

    Returns:
        ``{method: {metric: {str(steps): {"mean", "ci95", "n"}}}}`` (means ± 95% CI over
        tasks), methods in the order of ``params``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from metajax import TaskBatch
        >>> loss = lambda w, b: jnp.mean((b[0] * w - b[1]) ** 2)
        >>> x = jnp.ones((4, 3)); tasks = TaskBatch((x, 2 * x), (x, 2 * x))
        >>> out = evaluate_methods(loss, {"a": jnp.array(0.0), "b": jnp.array(2.0)},
        ...                        {"a": 0.25, "b": 0.25}, tasks, steps=(0, 1))
        >>> [out[m]["loss"][s]["mean"] for m, s in (("a", "0"), ("a", "1"), ("b", "1"))]
        [4.0, 1.0, 0.0]
    """
    steps = tuple(steps)
    chunk_size = check_chunk_size(chunk_size)
    inner_opts = dict(inner_opts or {})
    missing = [m for m in params if m not in lrs and m not in inner_opts]
    if missing:
        raise ValueError(f"`lrs` has no step size for method(s) {missing}; it has {list(lrs)}.")
    evaluate = jax.jit(lambda p, t, lr: make_evaluator(  # lr traced: compiled once per lr kind
        loss_fn, steps=steps, lr=lr, has_aux=has_aux)(p, t))
    table = {}
    for method, p in params.items():
        if method in inner_opts:
            run = jax.jit(make_evaluator(loss_fn, steps=steps, inner_opt=inner_opts[method],
                                         has_aux=has_aux))
            chunk = lambda t, p=p, run=run: run(p, t)  # noqa: E731
        else:
            lr = jax.tree.map(jnp.asarray, lrs[method])
            chunk = lambda t, p=p, lr=lr: evaluate(p, t, lr)  # noqa: E731
        out = jax.device_get(map_task_chunks(chunk, tasks, chunk_size=chunk_size, out_axis=1))
        table[method] = summarize({s: {k: np.asarray(v[i]) for k, v in out.items()}
                                   for i, s in enumerate(steps)})
    return table


def compare_with_baselines(
    *,
    learner: MetaLearner,
    name: str,
    loss_fn: LossFn,
    init_fn: Callable[[jax.Array], Params],
    sample_train: Sampler,
    val_tasks: TaskBatch,
    test_tasks: TaskBatch,
    seed: int,
    num_steps: int,
    tasks_per_step: int,
    inner_lr: Any,
    inner_opt: optax.GradientTransformation | None = None,
    sample_args: tuple = (),
    eval_steps: Sequence[int] = (1, 5, 10),
    val_adapt_steps: int = 1,
    pretrain_steps: int | None = None,
    pretrain_lr: float = 1e-3,
    pretraining: Pretraining | None = None,
    baseline_lrs: Sequence[float] = (0.001, 0.003, 0.01, 0.03, 0.1),
    has_aux: bool = False,
    metric: str = "loss",
    higher_is_better: bool = False,
    steps_per_call: int = 100,
    unroll: int | bool = 1,
    log_every: int = 100,
    val_every: int | None = None,
    chunk_size: int | None = None,
    writer: RunWriter | None = None,
    checkpoint_every: int | None = None,
    progress: bool = True,
) -> ComparisonResult:
    """Meta-trains ``learner`` and evaluates it against scratch and pre-train + fine-tune.

    All three methods are evaluated on the same ``test_tasks`` after ``0`` and each of
    ``eval_steps`` SGD steps. The meta-learner adapts with its own ``inner_lr``; each baseline
    adapts with the step size from ``baseline_lrs`` that is best on ``val_tasks`` (after
    ``max(eval_steps)`` steps), so no method is handicapped by an untuned step size.
    The meta-learned parameters evaluated are those with the best validation ``metric``.

    Args:
        learner: the meta-learner (e.g. :func:`metajax.maml`).
        name: its name in the results table.
        loss_fn: the task loss.
        init_fn: ``init_fn(key) -> params`` of the learner.
        sample_train: ``sample(key, *sample_args) -> TaskBatch`` of the meta-training stream.
        val_tasks: meta-validation tasks (selection of parameters and of baseline step sizes).
        test_tasks: meta-test tasks.
        seed: seeds the initialisation, the scratch baseline and the training stream.
        num_steps: outer steps of meta-training.
        tasks_per_step: tasks in one meta-batch.
        inner_lr: the meta-learner's inner step size (scalar or pytree); ignored when
            ``learner.adaptation`` is defined.
        inner_opt: adapt the meta-learner with this Optax optimizer in validation and test
            instead of SGD at ``inner_lr`` (e.g. Reptile's Adam with beta1 = 0, as in
            Nichol et al., 2018). The baselines still fine-tune with tuned SGD.
        sample_args: arrays ``sample_train`` reads (e.g. the training images), passed to the
            compiled training programs as arguments rather than embedded as constants.
        eval_steps: numbers of adaptation steps reported.
        val_adapt_steps: adaptation steps used for the validation metric during training.
        pretrain_steps: steps of joint pre-training (default: ``num_steps``).
        pretrain_lr: Adam step size of joint pre-training.
        pretraining: pre-train the ``pretrained`` row this way instead of jointly on the
            episode stream (``pretrain_steps`` steps, its own PRNG stream); see
            :class:`Pretraining`.
        baseline_lrs: candidate fine-tuning step sizes for the baselines.
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
        metric: the metric that selects parameters and step sizes (``loss`` or e.g. ``accuracy``).
        higher_is_better: whether a larger ``metric`` is better.
        steps_per_call: outer steps per compiled call.
        unroll: unrolling of the steps of one call (see :func:`metajax.make_multi_step`;
            ``True`` for conv nets on CPU).
        log_every: training-metric logging interval (steps).
        val_every: validation interval (steps); default ``num_steps // 10``.
        chunk_size: evaluate tasks in chunks of this size, one compiled call per chunk
            (memory bound).
        writer: where ``metrics.jsonl``, ``summary.json`` and checkpoints go (optional). With
            a writer, each training phase checkpoints into ``checkpoints/<method>/`` and
            resumes from there when the run is restarted (``metajax run --resume``).
        checkpoint_every: checkpoint interval in steps (default: ``val_every``).
        progress: show progress bars.

    With several devices (GPUs, TPU cores, hosts after ``jax.distributed.initialize()``, or
    ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` on CPU) and a meta-batch that is a
    multiple of their number, meta-training shards the task axis over all of them. In a
    program of several CPU processes (:func:`metajax.distributed.init_process`, ``metajax run
    --processes N``) meta-training and joint pre-training split each meta-batch between the
    processes under ``shard_map`` (:func:`metajax.distributed.task_split`), a ``pretraining``
    phase runs on every process (its batch norm spans the whole minibatch), and validation and test
    episodes are shared out between the processes (:func:`map_task_chunks`); every process
    ends with the same summary, equal to one process's up to float rounding.
    """
    t0 = time.perf_counter()
    chunk_size = check_chunk_size(chunk_size)
    split = task_split(tasks_per_step)  # several devices or CPU processes share the tasks
    root = jax.random.PRNGKey(seed)
    train_key = jax.random.fold_in(root, 0)
    init_params = init_fn(jax.random.fold_in(root, 1))
    scratch_params = init_fn(jax.random.fold_in(root, 2))
    val_every = val_every or max(num_steps // 10, 1)
    eval_steps = tuple(sorted(set(eval_steps)))
    report_steps = (0, *[s for s in eval_steps if s > 0])

    # The evaluator select_lr uses too (one compile when val_adapt_steps == max(eval_steps)).
    val_eval = lr_evaluator(loss_fn, val_adapt_steps, has_aux)

    def test_adaptation(meta_params) -> Adaptation:
        found = adaptation_of(learner, meta_params, lr=inner_lr, inner_opt=inner_opt)
        if inner_opt is not None and found.inner_opt is None:  # the caller's optimizer wins
            return Adaptation(found.params, None, inner_opt)
        return found

    own_opt = test_adaptation(learner.init(init_params).params).inner_opt
    if own_opt is not None:  # the learner adapts with its own optimizer (e.g. Reptile's Adam)
        own = jax.jit(make_evaluator(loss_fn, steps=(val_adapt_steps,), inner_opt=own_opt,
                                     has_aux=has_aux))
        val_eval = lambda p, t, lr: own(p, t)  # noqa: E731

    def validate(meta_params):
        params, lr, _ = test_adaptation(meta_params)
        lr = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), lr)  # as select_lr's
        out = jax.device_get(map_task_chunks(lambda t: val_eval(params, t, lr), val_tasks,
                                             chunk_size=chunk_size, out_axis=1))
        return {k: float(np.mean(v)) for k, v in out.items()}

    def log(method):
        def on_record(record):
            if writer is not None:
                writer.log({"method": method, **record})
        return on_record

    def phase(method):
        """Checkpointing options of one training phase; drops records past its checkpoint."""
        if writer is None:
            return {"on_record": log(method), **split}
        checkpointer = writer.checkpointer(method)
        steps = checkpointer.steps()
        writer.drop_records_after(method, steps[-1] if steps else 0)
        return {"on_record": log(method), "checkpointer": checkpointer,
                "checkpoint_every": checkpoint_every, **split}

    loop = {"sample_args": sample_args, "steps_per_call": steps_per_call, "unroll": unroll,
            "log_every": log_every, "progress": progress}
    train = meta_train(learner.step, learner.init(init_params), sample_train, key=train_key,
                       num_steps=num_steps, tasks_per_step=tasks_per_step, validate=validate,
                       val_every=val_every, val_metric=metric, higher_is_better=higher_is_better,
                       desc=name, **loop, **phase(name))
    t_meta = time.perf_counter() - t0

    if pretraining is None:
        joint = pretrain(loss_fn, optax.adam(pretrain_lr), has_aux=has_aux,
                         axis_name=task_axis())
        pre = meta_train(joint.step, joint.init(init_params), sample_train, key=train_key,
                         num_steps=pretrain_steps or num_steps, tasks_per_step=tasks_per_step,
                         desc="pretrained", **loop, **phase("pretrained"))
        pretrained_params = pre.state.params
    else:
        pretrained_params, pre = run_pretraining(
            pretraining, key=pretraining_key(seed), num_steps=pretrain_steps or num_steps,
            **loop, **phase("pretrained"))

    learned, learned_lr, _ = test_adaptation(train.best_params)
    params = {name: learned, "pretrained": pretrained_params, "scratch": scratch_params}
    lrs = {name: learned_lr}
    lr_scores = {}
    for method in ("pretrained", "scratch"):
        lrs[method], lr_scores[method] = select_lr(
            loss_fn, params[method], val_tasks, lrs=baseline_lrs, steps=max(eval_steps),
            has_aux=has_aux, metric=metric, higher_is_better=higher_is_better,
            chunk_size=chunk_size)

    inner_opts = {name: own_opt} if own_opt is not None else {}
    all_metrics = evaluate_methods(loss_fn, params, lrs, test_tasks, steps=report_steps,
                                   has_aux=has_aux, chunk_size=chunk_size,
                                   inner_opts=inner_opts)
    results = {method: table[metric] for method, table in all_metrics.items()}

    summary = {
        "metric": metric,
        "results": results,
        "all_metrics": all_metrics,
        # A pytree of rates (Meta-SGD, ANIL) is not a scalar even though np.ndim(dict) == 0.
        "adapt_lr": {m: (v if jax.tree_util.treedef_is_leaf(jax.tree.structure(v))
                         and np.ndim(v) == 0 else "per-parameter") for m, v in lrs.items()},
        "baseline_lr_search": {m: {str(k): v for k, v in s.items()}
                               for m, s in lr_scores.items()},
        # Methods adapting with their own optimizer rather than SGD at adapt_lr.
        **({"adapt_optimizer": {m: "own inner optimizer" for m in inner_opts}}
           if inner_opts else {}),
        "best_val_step": train.best_step,
        "num_test_tasks": int(jax.tree.leaves(test_tasks)[0].shape[0]),
        "meta_train_seconds": t_meta,
        # Training wall time of each phase, validation excluded (see meta_train).
        "train_seconds": {m: r.train_seconds
                          for m, r in ((name, train), ("pretrained", pre))},
        "wall_seconds": time.perf_counter() - t0,
    }
    if writer is not None:
        writer.write("summary.json", summary)
    return ComparisonResult(summary=summary, params=params, train=train, lrs=lrs,
                            inner_opts=inner_opts)


def format_table(summary: dict) -> str:
    """Renders ``summary["results"]`` as a markdown table (mean ± ci95 per step count).

    Columns are every step count of any row, in order of first appearance; a row without a
    cell in a column shows ``–`` there.

    Examples:
        >>> print(format_table({"results": {"a": {"0": {"mean": 0.5, "ci95": 0.1},
        ...                                       "1": {"mean": 0.75, "ci95": 0.1}},
        ...                                 "b": {"1": {"mean": 0.625, "ci95": 0.05}}}}))
        | method | 0 steps | 1 steps |
        |---|---|---|
        | a | 0.500 ± 0.100 | 0.750 ± 0.100 |
        | b | – | 0.625 ± 0.050 |

    Rows without step counts (``results[row] = {mean, ci95, n}``, the amortised family) give one
    column for ``summary["metric"]`` and one for each further table of the same rows (``mse``).
    """
    results = summary["results"]
    if results and all("mean" in row for row in results.values()):
        return _flat_table(summary)
    steps = list(dict.fromkeys(s for row in results.values() for s in row))
    suffix = summary.get("column_suffix", " steps")
    lines = ["| method | " + " | ".join(f"{s}{suffix}" for s in steps) + " |",
             "|---" * (len(steps) + 1) + "|"]
    for method, row in results.items():
        cells = [format_cell(row[s]) if s in row else "–" for s in steps]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _flat_table(summary: dict) -> str:
    results = summary["results"]
    tables = {summary.get("metric", "metric"): results}
    tables.update({k: v for k, v in summary.items() if k != "results" and isinstance(v, dict)
                   and set(v) == set(results)})
    lines = ["| method | " + " | ".join(tables) + " |", "|---" * (len(tables) + 1) + "|"]
    for method in results:
        cells = [format_cell(t[method]) for t in tables.values()]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
