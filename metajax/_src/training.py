"""Meta-training driver: compiled chunks of outer steps, validation, best-parameter selection,
checkpoints and resumption."""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from metajax._src.checkpoint import Checkpointer, CheckpointError
from metajax._src.loop import Sampler, make_multi_step
from metajax._src.processes import (
    local_value,
    process_multi_step,
    process_step_body,
    share_sampler,
    to_global,
)
from metajax._src.sharding import replicate, shard_tasks
from metajax._src.types import MetaState, Metrics, Params, TaskBatch


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


@contextlib.contextmanager
def _deferred_sigint():
    """Turns Ctrl-C into a flag checked between compiled chunks (main thread only)."""
    flag = {"set": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["set"]:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        flag["set"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _any_process(flag: bool) -> bool:
    """Whether ``flag`` is set on any of the program's processes (a collective)."""
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


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
            :func:`metajax.shard_tasks`); the state is replicated on it. ``None``: one device.
        shard_map: run every chunk under ``shard_map`` over ``mesh`` instead of sharding
            through GSPMD: each device samples the whole meta-batch and meta-trains on its
            share. The fast way across the processes of :func:`metajax.init_process` (one per
            CPU core; GSPMD does not keep their per-task convolutions local). ``step`` must
            average its meta-gradient over the devices, as metajax's learners do (for your
            own, :func:`metajax.mean_across`); checked: a ``RuntimeError`` if the devices'
            parameters differ after a chunk. Validation runs on every process with its own
            copy of the parameters, and the returned state holds this process's copies.
        progress: show a progress bar (step, loss, tasks/s, ETA).
        desc: progress-bar label.

    Raises:
        FloatingPointError: when the training loss becomes non-finite (non-finite gradients
            show up as a non-finite loss one step later); names the step. The last checkpoint
            written is the last good one.
        Interrupted: after Ctrl-C, once a checkpoint of the current step has been written.
    """
    # Chunks donate their input state; copy it so the caller's arrays stay valid.
    state = jax.tree.map(jax.numpy.copy, state)
    # A host copy: the device buffers of `state` are donated to the first chunk.
    best_params = jax.tree.map(np.array, jax.device_get(state.params))
    best_score, best_step, history = None, int(state.step), []
    train_seconds = 0.0  # training wall time so far, validation and checkpoints excluded
    if checkpointer is not None:
        template = {"state": state, "best_params": state.params, "key": key}
        found = checkpointer.restore_latest(template)
        if found is not None:
            _, tree, meta = found
            if not np.array_equal(np.asarray(tree["key"]), np.asarray(key)):
                raise CheckpointError("The checkpoint's task-stream key differs from this run's "
                                      "(another seed?); refusing to mix two runs.")
            state = jax.tree.map(jax.numpy.asarray, tree["state"])
            best_params, history = tree["best_params"], list(meta["history"])
            best_score, best_step = meta["best_score"], int(meta["best_step"])
            # Checkpoints written before train_seconds existed: the last record's, else 0.
            train_seconds = float(meta.get("train_seconds", history[-1].get(
                "train_seconds", 0.0) if history else 0.0))
    sample_args = tuple(sample_args)
    if shard_map and mesh is None:
        raise ValueError("`shard_map=True` needs a `mesh` (e.g. from metajax.init_process).")
    if shard_map:  # e.g. one CPU process per core (metajax.init_process): not GSPMD
        state, sample_args = to_global(state, mesh), to_global(sample_args, mesh)
        key = to_global(key, mesh)
        sample, step = share_sampler(sample), process_step_body(step)
    elif mesh is not None:
        state, sample = replicate(state, mesh), shard_tasks(sample, mesh)
        sample_args = replicate(sample_args, mesh)
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
        checkpointer.save(current, host({"state": state, "best_params": best_params, "key": key}),
                          {"best_score": best_score, "best_step": best_step,
                           "history": history, "train_seconds": train_seconds})

    compiled: dict[int, Callable] = {}
    bar = tqdm(total=num_steps, initial=start, desc=desc, unit="step",
               disable=not progress or jax.process_index() != 0,
               dynamic_ncols=True)
    chunk_metrics: list[dict] = []
    t_log, steps_since_log, current = time.perf_counter(), 0, start
    # Across processes (shard_map), Ctrl-C stops every process after the same chunk: they
    # decide together (a process that stopped alone would leave the others waiting for it in
    # the next chunk's collectives), and the decision holds until the next chunk.
    agreed = _any_process if shard_map else bool
    stopping = False
    with _deferred_sigint() as interrupt:
        for target in points:
            while current < target:
                t_chunk = time.perf_counter()
                n = min(steps_per_call, target - current)
                if n not in compiled:
                    multi = make_multi_step(step, sample, steps_per_call=n, unroll=unroll)
                    if shard_map:
                        multi = process_multi_step(multi, mesh, len(sample_args))
                    compiled[n] = jax.jit(multi, donate_argnums=0)
                new_state, metrics = compiled[n](state, key, *sample_args)
                metrics = host(metrics)
                if shard_map and np.any(metrics.pop("replica_drift") != 0):
                    bar.close()
                    raise RuntimeError(
                        "The processes' parameters differ after a step: the learner does not "
                        "average its meta-gradient over the processes (metajax's learners do). "
                        "For a learner of your own, chain metajax.mean_across() before its "
                        "outer optimizer, e.g. optax.chain(metajax.mean_across(), "
                        "optax.adam(1e-3)).")
                loss = np.asarray(metrics["loss"])
                if not np.all(np.isfinite(loss)):
                    bad = current + 1 + int(np.argmin(np.isfinite(loss)))
                    bar.close()
                    raise FloatingPointError(
                        f"Non-finite meta-training loss at step {bad} (query loss after "
                        f"adaptation = {loss[~np.isfinite(loss)][0]}); the last good checkpoint "
                        f"is kept. Try a smaller inner learning rate or outer learning rate, or "
                        "gradient clipping (optax.clip_by_global_norm).")
                state = new_state
                train_seconds += time.perf_counter() - t_chunk
                chunk_metrics.append({k: np.asarray(v).mean() * n for k, v in metrics.items()})
                current += n
                steps_since_log += n
                bar.update(n)
                stopping = agreed(interrupt["set"])
                if stopping:
                    break
            if current in log_points and steps_since_log:
                elapsed = time.perf_counter() - t_log
                record: dict[str, Any] = {"step": current}
                for name in chunk_metrics[0]:
                    record[name] = float(sum(c[name] for c in chunk_metrics) / steps_since_log)
                record["tasks_per_s"] = steps_since_log * tasks_per_step / max(elapsed, 1e-9)
                record["train_seconds"] = train_seconds
                if current in val_points:
                    val = validate(host(state.params) if shard_map else state.params)
                    record.update({f"val_{k}": float(v) for k, v in val.items()})
                    score = float(val[val_metric])
                    better = best_score is None or (score > best_score if higher_is_better
                                                    else score < best_score)
                    if better and math.isfinite(score):
                        best_score, best_step = score, current
                        best_params = jax.tree.map(np.array, host(state.params))
                history.append(record)
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
                bar.close()
                where = f"; checkpoint saved at step {current}" if checkpointer else ""
                raise Interrupted(f"Interrupted at step {current}{where}.")
    bar.close()
    if shard_map:  # every process holds the same values: return this process's copies
        state = jax.tree.map(jax.numpy.asarray, local_value(state))
    if validate is None:
        best_params, best_step = state.params, current
    return TrainResult(state=state, best_params=best_params, best_step=best_step, history=history)
