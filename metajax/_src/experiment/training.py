"""Meta-training driver: compiled chunks of outer steps, validation, best-parameter selection,
checkpoints and resumption.

:func:`meta_train` is the loop; each of its concerns is a part of its own below: where the
state and tasks live (:func:`_place`), resuming (:class:`_Progress`, :func:`_restore`), one
compiled chunk of steps and its checks (:class:`_Chunks`), the best parameters
(:meth:`_Progress.offer`), the logged records (:func:`_record`), and Ctrl-C
(:mod:`metajax._src.experiment.signals`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from metajax._src.core.loop import Sampler, make_multi_step
from metajax._src.core.types import MetaState, Metrics, Params, TaskBatch
from metajax._src.distributed.processes import (
    local_value,
    process_multi_step,
    process_step_body,
    share_sampler,
    to_global,
)
from metajax._src.distributed.sharding import replicate, shard_tasks
from metajax._src.experiment.checkpoint import Checkpointer, CheckpointError
from metajax._src.experiment.memory import check_fits
from metajax._src.experiment.signals import any_process, deferred_sigint


class TrainResult(NamedTuple):
    """Outcome of :func:`meta_train`.

    Attributes:
        state: the final state.
        best_params: parameters with the best validation score (the final ones without
            validation).
        best_step: the step at which ``best_params`` were taken.
        history: the logged records (dicts with ``step``, metrics, ``tasks_per_s`` and
            ``train_seconds``), in order.
    """

    state: MetaState
    best_params: Params
    best_step: int
    history: list[dict]

    @property
    def train_seconds(self) -> float:
        """Training wall time up to the last record (0 without records)."""
        return self.history[-1]["train_seconds"] if self.history else 0.0


class Interrupted(KeyboardInterrupt):
    """Raised by :func:`meta_train` after Ctrl-C, once the state has been checkpointed."""


def _boundaries(num_steps: int, *intervals: int | None) -> list[int]:
    points = {num_steps}
    for every in intervals:
        if every:
            points.update(range(every, num_steps, every))
    return sorted(points)


class _Progress:
    """What a run has to remember: best parameters and score, records, training time."""

    def __init__(self, state: MetaState, *, higher_is_better: bool):
        # A host copy: the device buffers of `state` are donated to the first chunk.
        self.best_params = jax.tree.map(np.array, jax.device_get(state.params))
        self.best_score: float | None = None
        self.best_step = int(state.step)
        self.history: list[dict] = []
        self.train_seconds = 0.0  # training wall time so far, validation and checkpoints excluded
        self.higher_is_better = higher_is_better

    def offer(self, score: float, step: int, params_on_host: Callable[[], Params]) -> None:
        """Keeps ``params_on_host()`` as the best parameters when ``score`` beats the best."""
        better = self.best_score is None or (score > self.best_score if self.higher_is_better
                                             else score < self.best_score)
        if better and math.isfinite(score):
            self.best_score, self.best_step = score, step
            self.best_params = jax.tree.map(np.array, params_on_host())

    def meta(self) -> dict:
        return {"best_score": self.best_score, "best_step": self.best_step,
                "history": self.history, "train_seconds": self.train_seconds}


def _restore(checkpointer: Checkpointer, state: MetaState, key: jax.Array,
             progress: _Progress) -> MetaState:
    """The newest checkpoint's state (``state`` if there is none), restoring ``progress``."""
    template = {"state": state, "best_params": state.params, "key": key}
    found = checkpointer.restore_latest(template)
    if found is None:
        return state
    _, tree, meta = found
    if not np.array_equal(np.asarray(tree["key"]), np.asarray(key)):
        raise CheckpointError("The checkpoint's task-stream key differs from this run's "
                              "(another seed?); refusing to mix two runs.")
    progress.best_params, progress.history = tree["best_params"], list(meta["history"])
    progress.best_score, progress.best_step = meta["best_score"], int(meta["best_step"])
    # Checkpoints written before train_seconds existed: the last record's, else 0.
    history = progress.history
    progress.train_seconds = float(meta.get("train_seconds", history[-1].get(
        "train_seconds", 0.0) if history else 0.0))
    return jax.tree.map(jax.numpy.asarray, tree["state"])


def _place(state, key, step, sample, sample_args, *, mesh, shard_map):
    """State, key, step and sampler placed on ``mesh`` (unchanged without one)."""
    if shard_map and mesh is None:
        raise ValueError("`shard_map=True` needs a `mesh` (e.g. from "
                         "metajax.distributed.init_process).")
    if shard_map:  # e.g. one CPU process per core (init_process): not GSPMD
        state, sample_args = to_global(state, mesh), to_global(sample_args, mesh)
        return (to_global(key, mesh), process_step_body(step), share_sampler(sample), state,
                sample_args)
    if mesh is not None:
        return key, step, shard_tasks(sample, mesh), replicate(state, mesh), replicate(
            sample_args, mesh)
    return key, step, sample, state, sample_args


class NonFiniteLoss(FloatingPointError):
    """The meta-training loss became non-finite at ``step``; ``kept`` says what checkpoint
    remains to resume from."""

    def __init__(self, step: int, value: float, kept: str = ""):
        self.step, self.value, self.kept = step, value, kept
        super().__init__(
            f"Non-finite meta-training loss at step {step} (query loss after adaptation = "
            f"{value}). {kept + ' ' if kept else ''}Try a smaller inner learning rate or outer "
            "learning rate, or clip the meta-gradient (optax.clip_by_global_norm).")


def _kept(checkpointer: Checkpointer | None) -> str:
    """What a stopped run leaves to resume from."""
    steps = checkpointer.steps() if checkpointer is not None else []
    if steps:
        return (f"The checkpoint of step {steps[-1]} (the last good state) is kept in "
                f"{checkpointer.directory}.")
    if checkpointer is not None:
        return "No checkpoint had been written yet: a resumed run starts from the beginning."
    return "No checkpoints were being written."


class _Chunks:
    """Compiled chunks of ``n`` outer steps (one program per ``n``) and their checks."""

    def __init__(self, step, sample, *, unroll, mesh, shard_map, n_sample_args, tasks_per_step):
        self.step, self.sample, self.unroll = step, sample, unroll
        self.mesh, self.shard_map, self.n_sample_args = mesh, shard_map, n_sample_args
        self.tasks_per_step = tasks_per_step
        self.compiled: dict[int, Callable] = {}

    def run(self, n: int, state, key, sample_args):
        if n not in self.compiled:
            multi = make_multi_step(self.step, self.sample, steps_per_call=n, unroll=self.unroll)
            if self.shard_map:
                multi = process_multi_step(multi, self.mesh, self.n_sample_args)
            jitted = jax.jit(multi, donate_argnums=0)
            # compiled ahead once, to refuse a step the memory cannot hold before it runs;
            # the call below reuses this compilation
            check_fits(jitted.lower(state, key, *sample_args).compile(),
                       tasks_per_step=self.tasks_per_step)
            self.compiled[n] = jitted
        return self.compiled[n](state, key, *sample_args)

    def check(self, metrics: dict, current: int) -> None:
        """Stops on parameters that differ between processes or on a non-finite loss."""
        if self.shard_map and np.any(metrics.pop("replica_drift") != 0):
            raise RuntimeError(
                "The processes' parameters differ after a step: the learner does not average "
                "its meta-gradient over the processes. Build metajax's learners with "
                "axis_name=metajax.distributed.task_axis(); for a learner of your own, chain "
                "metajax.distributed.mean_across() before its outer optimizer, e.g. "
                "optax.chain(metajax.distributed.mean_across(), optax.adam(1e-3)).")
        loss = np.asarray(metrics["loss"])
        if not np.all(np.isfinite(loss)):
            bad = current + 1 + int(np.argmin(np.isfinite(loss)))
            raise NonFiniteLoss(bad, float(loss[~np.isfinite(loss)][0]))


def _record(current: int, chunk_metrics: list[dict], steps: int, elapsed: float,
            tasks_per_step: int, train_seconds: float) -> dict[str, Any]:
    """The logged record of the ``steps`` steps up to ``current``: mean metrics and speed."""
    record: dict[str, Any] = {"step": current}
    for name in chunk_metrics[0]:
        record[name] = float(sum(c[name] for c in chunk_metrics) / steps)
    record["tasks_per_s"] = steps * tasks_per_step / max(elapsed, 1e-9)
    record["train_seconds"] = train_seconds
    return record


def meta_train(
    step: Callable[[MetaState, TaskBatch], tuple[MetaState, Metrics]],
    state: MetaState,
    sample: Sampler,
    *,
    key: jax.Array,
    num_steps: int,
    tasks_per_step: int,
    sample_args: tuple = (),
    steps_per_call: int = 100,
    unroll: int | bool = 1,
    log_every: int = 100,
    validate: Callable[[Params], dict[str, float]] | None = None,
    val_every: int | None = None,
    val_metric: str = "loss",
    higher_is_better: bool = False,
    on_record: Callable[[dict], None] | None = None,
    checkpointer: Checkpointer | None = None,
    checkpoint_every: int | None = None,
    mesh: Mesh | None = None,
    shard_map: bool = False,
    progress: bool = True,
    desc: str = "meta-train",
) -> TrainResult:
    """Runs outer steps up to ``num_steps``, validating and keeping the best parameters.

    Outer steps run in compiled chunks of up to ``steps_per_call`` (see
    :func:`metajax.make_multi_step`), cut at logging, validation and checkpoint points, which
    are multiples of their intervals counted from step 0. Tasks for step ``t`` are
    ``sample(fold_in(key, t), *sample_args)``, so the run is a pure function of its inputs: a
    run resumed from a checkpoint ends bit-identical to an uninterrupted one.

    With a ``checkpointer``, the full state (meta-parameters, optimizer state, step, PRNG key,
    best parameters, history) is saved every ``checkpoint_every`` steps, at the end and on
    Ctrl-C, and training resumes from the newest checkpoint if there is one. The task sampler
    is stateless (keyed by step), so it needs no checkpointed state.

    Args:
        step: a meta-learner's ``step(state, tasks)``.
        state: the initial state (``learner.init(params)``); also the restore template.
        sample: ``sample(key, *sample_args) -> TaskBatch`` (jittable).
        key: PRNG key of the meta-training task stream.
        num_steps: the outer step to train up to.
        tasks_per_step: tasks in one batch (for the tasks/s figure).
        sample_args: arrays the sampler reads (e.g. a dataset's images), passed to every
            compiled call as arguments, so they are not embedded in the program as constants.
        steps_per_call: outer steps fused into one compiled call.
        unroll: unrolling of the loop over those steps (see :func:`metajax.make_multi_step`;
            ``True`` for conv nets on CPU).
        log_every: record the mean training metrics every this many steps.
        validate: ``validate(params) -> {metric: value}`` on meta-validation tasks.
        val_every: run ``validate`` every this many steps (and at the end).
        val_metric: the validation metric that selects ``best_params``.
        higher_is_better: whether a larger ``val_metric`` is better (accuracy).
        on_record: called with every record (e.g. to append it to ``metrics.jsonl``). Every
            record has ``train_seconds``: the wall time spent training up to its step
            (compilation included; validation, checkpointing and ``on_record`` excluded),
            counted across resumptions, for accuracy-versus-time curves.
        checkpointer: where to save and resume from (optional).
        checkpoint_every: checkpoint interval in steps (default ``val_every`` or ``log_every``).
        mesh: shard the task axis of every meta-batch over this device mesh (see
            :func:`metajax.distributed.shard_tasks`); the state is replicated on it. ``None``:
            one device.
        shard_map: run every chunk under ``shard_map`` over ``mesh`` instead of sharding through
            GSPMD: each device samples the whole meta-batch and meta-trains on its share. The fast
            way across the processes of :func:`metajax.distributed.init_process` (one per CPU core;
            GSPMD does not keep their per-task convolutions local). ``step`` must average its
            meta-gradient over the devices, as metajax's learners built with
            ``axis_name="tasks"`` do (for your own, :func:`metajax.distributed.mean_across`);
            checked: a ``RuntimeError`` if the devices' parameters differ after a chunk.
            Validation runs on every process with its own copy of the parameters, and the
            returned state holds this process's copies.
        progress: show a progress bar (step, loss, tasks/s, ETA).
        desc: progress-bar label.

    Raises:
        FloatingPointError: when the training loss becomes non-finite (non-finite gradients
            show up as a non-finite loss one step later); names the step. The last checkpoint
            written is the last good one.
        Interrupted: after Ctrl-C, once a checkpoint of the current step has been written.
        MemoryEstimateError: before a chunk first runs, when XLA's memory estimate of its
            compiled program exceeds the device's free memory (lower ``tasks_per_step``).
    """
    # Chunks donate their input state; copy it so the caller's arrays stay valid.
    state = jax.tree.map(jax.numpy.copy, state)
    progress_ = _Progress(state, higher_is_better=higher_is_better)
    if checkpointer is not None:
        state = _restore(checkpointer, state, key, progress_)
    key, step, sample, state, sample_args = _place(state, key, step, sample, tuple(sample_args),
                                                   mesh=mesh, shard_map=shard_map)
    host = local_value if shard_map else jax.device_get
    start = int(state.step)
    if num_steps < start:
        raise ValueError(f"`num_steps` ({num_steps}) is smaller than the state's step ({start}).")
    checkpoint_every = checkpoint_every or val_every or log_every
    val_points = set(_boundaries(num_steps, val_every)) if validate is not None else set()
    ckpt_points = set(_boundaries(num_steps, checkpoint_every)) if checkpointer else set()
    points = [p for p in _boundaries(num_steps, log_every, val_every, checkpoint_every)
              if p > start]
    log_points = set(_boundaries(num_steps, log_every)) | val_points

    def save(current):
        checkpointer.save(current, host({"state": state, "best_params": progress_.best_params,
                                         "key": key}), progress_.meta())

    chunks = _Chunks(step, sample, unroll=unroll, mesh=mesh, shard_map=shard_map,
                     n_sample_args=len(sample_args), tasks_per_step=tasks_per_step)
    bar = tqdm(total=num_steps, initial=start, desc=desc, unit="step",
               disable=not progress or jax.process_index() != 0, dynamic_ncols=True)
    chunk_metrics: list[dict] = []
    t_log, steps_since_log, current = time.perf_counter(), 0, start
    # Across processes (shard_map), Ctrl-C stops every process after the same chunk: they
    # decide together (a process that stopped alone would leave the others waiting for it in
    # the next chunk's collectives), and the decision holds until the next chunk.
    agreed = any_process if shard_map else bool
    stopping = False
    with deferred_sigint() as interrupt, contextlib.closing(bar):
        for target in points:
            while current < target:
                t_chunk = time.perf_counter()
                n = min(steps_per_call, target - current)
                new_state, metrics = chunks.run(n, state, key, sample_args)
                metrics = host(metrics)
                try:
                    chunks.check(metrics, current)
                except NonFiniteLoss as err:
                    raise NonFiniteLoss(err.step, err.value, _kept(checkpointer)) from None
                state = new_state
                progress_.train_seconds += time.perf_counter() - t_chunk
                chunk_metrics.append({k: np.asarray(v).mean() * n for k, v in metrics.items()})
                current += n
                steps_since_log += n
                bar.update(n)
                stopping = agreed(interrupt["set"])
                if stopping:
                    break
            if current in log_points and steps_since_log:
                record = _record(current, chunk_metrics, steps_since_log,
                                 time.perf_counter() - t_log, tasks_per_step,
                                 progress_.train_seconds)
                if current in val_points:
                    val = validate(host(state.params) if shard_map else state.params)
                    record.update({f"val_{k}": float(v) for k, v in val.items()})
                    progress_.offer(float(val[val_metric]), current,
                                    lambda: host(state.params))
                progress_.history.append(record)
                if on_record is not None:
                    on_record(record)
                bar.set_postfix(loss=f"{record['loss']:.4g}",
                                tasks_s=f"{record['tasks_per_s']:.3g}", refresh=False)
                chunk_metrics, steps_since_log, t_log = [], 0, time.perf_counter()
            if not shard_map:  # one process: a Ctrl-C during logging or validation counts
                stopping = interrupt["set"]
            if checkpointer is not None and (current in ckpt_points or stopping):
                save(current)
            if stopping:
                where = f"; checkpoint saved at step {current}" if checkpointer else ""
                raise Interrupted(f"Interrupted at step {current}{where}.")
    if shard_map:  # every process holds the same values: return this process's copies
        state = jax.tree.map(jax.numpy.asarray, local_value(state))
    if validate is None:
        return TrainResult(state=state, best_params=state.params, best_step=current,
                           history=progress_.history)
    return TrainResult(state=state, best_params=progress_.best_params,
                       best_step=progress_.best_step, history=progress_.history)
