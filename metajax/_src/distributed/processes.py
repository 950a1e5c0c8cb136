"""One single-threaded process per CPU core, each meta-training on its share of the tasks.

XLA:CPU runs one operation at a time, each spread over the cores by its intra-op thread pool.
For a conv net's meta-step that scales poorly: the element-wise passes are memory-bound, and
the batch-norm reductions and the weight-gradient products get no faster (or slower) on two
threads, so one process on two cores is only ~1.3x one core. Two processes, each pinned to a
core of its own with a one-thread pool, run their operations side by side instead.

This module sets that up with JAX's own multi-process machinery (``jax.distributed`` with gloo
collectives over localhost): every process is a JAX process owning one CPU device; the global
``"tasks"`` mesh spans them; :func:`process_step` runs a learner's step under ``shard_map``
so each process computes the meta-gradient of its share of the meta-batch, and a learner built
with ``axis_name="tasks"`` (every metajax learner takes it; for a learner of your own,
:func:`mean_across` chained before its optimizer) averages the meta-gradients over the
processes, so the parameters stay identical on every process and equal to the single-process
step on the whole meta-batch (to float rounding).

Example (each of ``N`` processes runs this with its own ``process_id``)::

    from metajax import distributed
    mesh = distributed.init_process(process_id, N, coordinator="localhost:12321")
    learner = metajax.maml(loss_fn, optax.adam(1e-3), ..., axis_name=distributed.TASK_AXIS)
    step = jax.jit(distributed.process_step(learner.step, mesh))
    state = distributed.to_global(learner.init(params), mesh)         # replicated
    state, metrics = step(state, distributed.to_global(tasks, mesh, share=True))
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from metajax._src.core.checks import check_int
from metajax._src.core.outer import tree_pmean
from metajax._src.core.types import MetaState, Metrics, TaskBatch, num_tasks
from metajax._src.distributed.sharding import TASK_AXIS, check_splits, task_mesh

# Learners run under shard_map with per-device semantics: every value, the replicated parameters
# included, is this device's own, and the learner averages its meta-gradient explicitly
# (``axis_name``). With ``check_vma=True`` JAX would instead treat the parameters as invariant
# and sum the gradient of every use of them over the devices, the inner loop's per-task
# gradients included (one collective per parameter leaf and inner step, and a different
# meta-gradient), so the check stays off.
LOCAL_SEMANTICS = False


def init_process(process_id: int, num_processes: int, *,
                 coordinator: str = "localhost:12321", pin: bool = True) -> Mesh:
    """Joins this process to a group of ``num_processes`` CPU processes; returns their mesh.

    Call it first thing, before JAX computes anything (the CPU backend must be created
    afterwards, with gloo collectives and, when pinned, a one-thread pool). Every process of
    the group calls it with its own ``process_id``; the call returns once all have joined.

    Args:
        process_id: this process's index, ``0 <= process_id < num_processes``; process 0
            hosts the coordinator.
        num_processes: processes in the group (one per core is the point).
        coordinator: ``host:port`` of process 0's coordination service (a free port).
        pin: restrict this process to one of the CPUs it may use, the
            ``process_id % len(cpus)``-th, so XLA gives it a one-thread pool and processes do
            not share cores.

    Returns:
        The 1-D ``"tasks"`` mesh over the group's devices (one per process), for
        :func:`process_step` and :func:`to_global`.

    Raises:
        ValueError: bad ``process_id`` / ``num_processes``.
        RuntimeError: JAX's backend already exists in this process.
    """
    check_int("num_processes", num_processes, 1)
    check_int("process_id", process_id, 0)
    if process_id >= num_processes:
        raise ValueError(f"`process_id` must be below `num_processes` ({num_processes}); got "
                         f"{process_id}.")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:  # JAX refuses (before connecting) once a backend exists
        jax.distributed.initialize(coordinator, num_processes, process_id)
    except RuntimeError as err:
        raise RuntimeError("init_process must run before JAX computes anything in this process "
                           f"(JAX: {err})") from err
    if pin:  # before the backend exists: XLA sizes its thread pool from the affinity
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[process_id % len(cpus)]})
    return task_mesh()


def mean_across(axis_name: str = TASK_AXIS) -> optax.GradientTransformation:
    """An Optax transformation that averages the updates over the devices of ``axis_name``.

    Chain it before the outer optimizer of *your own* learner run by :func:`process_step`, so
    every process applies the meta-gradient of the whole meta-batch:
    ``optax.chain(mean_across(), optax.adam(1e-3))``. metajax's learners average by
    themselves when built with ``axis_name``. It is a ``lax.pmean`` (:func:`metajax.tree_pmean`:
    one collective per dtype): it only works inside ``shard_map`` (or ``pmap``) over
    ``axis_name``.
    """

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        return tree_pmean(updates, axis_name), state

    return optax.GradientTransformation(init, update)


def task_axis() -> str | None:
    """The ``axis_name`` to build learners with in this program: ``"tasks"`` when the meta-batch
    is split over several CPU processes under ``shard_map`` (:func:`task_split`), else ``None``.

    Experiment code that may run under ``metajax run --processes N`` builds its learners with
    ``axis_name=task_axis()``; on one process (or with GSPMD over several devices, which needs
    no explicit mean) it is ``None``.
    """
    if jax.process_count() > 1 and jax.default_backend() == "cpu":
        return TASK_AXIS
    return None


def task_split(tasks_per_step: int) -> dict[str, Any]:
    """:func:`metajax.experiment.meta_train`'s ``mesh`` / ``shard_map`` options for this
    program's devices.

    * Several CPU processes (:func:`init_process`, ``metajax run --processes N``): the
      meta-batch is split over them under ``shard_map`` (GSPMD does not keep a conv net's
      per-task convolutions local on CPU).
    * Several devices otherwise (GPUs, TPU cores, forced host devices): the task axis is
      sharded through GSPMD when the meta-batch is a multiple of their number.
    * One device: no mesh.

    Raises:
        ValueError: several CPU processes and ``tasks_per_step`` is not a multiple of their
            number.
    """
    devices = jax.device_count()
    if task_axis() is not None:
        check_splits(tasks_per_step, devices)
        return {"mesh": task_mesh(), "shard_map": True}
    if devices > 1 and tasks_per_step % devices == 0:
        return {"mesh": task_mesh(), "shard_map": False}
    return {"mesh": None, "shard_map": False}


def process_step(step, mesh: Mesh):
    """``step(state, tasks)`` with the tasks split over ``mesh``'s ``"tasks"`` axis.

    Runs ``step`` under ``shard_map``: each device (each process of :func:`init_process`) gets
    the replicated state and its share of the tasks (a global array sharded along the task
    axis, see :func:`to_global`). Build the learner with ``axis_name="tasks"`` so it averages
    its meta-gradients over the devices (a learner of your own chains :func:`mean_across`
    before its outer optimizer). The metrics are averaged here.
    ``metrics["replica_drift"]`` is the spread of a parameter checksum over the devices: 0
    when the processes hold the same parameters (not 0: the optimizer does not average).

    Returns:
        ``sharded_step(state, tasks) -> (state, metrics)``; jit it.
    """
    spec = PartitionSpec(TASK_AXIS)
    return jax.shard_map(process_step_body(step), mesh=mesh, in_specs=(PartitionSpec(), spec),
                         out_specs=(PartitionSpec(), PartitionSpec()), check_vma=LOCAL_SEMANTICS)


def process_multi_step(multi_step, mesh: Mesh, n_sample_args: int):
    """``multi_step(state, key, *sample_args)`` (:func:`metajax.make_multi_step`) run by every
    process of ``mesh`` under ``shard_map``; all arguments and results replicated.

    Build ``multi_step`` from :func:`process_step_body` and :func:`share_sampler` (each
    process samples the whole meta-batch from the shared key and keeps its share).
    """
    rep = PartitionSpec()
    return jax.shard_map(multi_step, mesh=mesh, in_specs=(rep, rep, *[rep] * n_sample_args),
                         out_specs=(rep, rep), check_vma=LOCAL_SEMANTICS)


def process_step_body(step):
    """``step`` inside ``shard_map``: metrics averaged over the task axis, plus
    ``replica_drift`` (see :func:`process_step`)."""

    def local(state: MetaState, tasks: TaskBatch) -> tuple[MetaState, Metrics]:
        state, metrics = step(state, tasks)
        metrics = tree_pmean(metrics, TASK_AXIS)
        checksum = sum(leaf.sum() for leaf in jax.tree.leaves(state.params))
        largest = lax.pmax(jnp.stack([checksum, -checksum]), TASK_AXIS)  # one collective
        drift = largest[0] + largest[1]  # max - min
        return state, {**metrics, "replica_drift": drift}

    return local


def share_sampler(sample):
    """``sample`` inside ``shard_map``: the whole meta-batch, of which this device keeps its
    block along the task axis (the ``axis_index``-th of ``axis_size`` equal blocks)."""

    def local(key: jax.Array, *sample_args: Any) -> TaskBatch:
        tasks = sample(key, *sample_args)
        per = check_splits(num_tasks(tasks), lax.axis_size(TASK_AXIS))
        start = lax.axis_index(TASK_AXIS) * per
        return jax.tree.map(lambda x: lax.dynamic_slice_in_dim(x, start, per), tasks)

    return local


def to_global(tree: Any, mesh: Mesh, *, share: bool = False) -> Any:
    """Global arrays on ``mesh`` from the same host values on every process.

    Args:
        tree: a pytree of arrays, equal on every process (same seed, same data).
        mesh: from :func:`init_process` (or any mesh with a ``"tasks"`` axis).
        share: ``False``: replicated (state, parameters, data arrays). ``True``: ``tree`` is
            a whole meta-batch (task axis first); each process keeps its share of the tasks
            (process ``i`` the ``i``-th block), and the result is sharded along the task axis.

    Raises:
        ValueError: ``share=True`` and the meta-batch is not a multiple of the mesh size.
    """
    if not share:
        sharding = NamedSharding(mesh, PartitionSpec())
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
            sharding, np.asarray(x)), tree)
    n, index = num_tasks(tree), jax.process_index()
    per = check_splits(n, mesh.shape[TASK_AXIS])
    sharding = NamedSharding(mesh, PartitionSpec(TASK_AXIS))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
        sharding, np.asarray(x)[index * per:(index + 1) * per], (n, *np.shape(x)[1:])), tree)


def local_value(tree: Any) -> Any:
    """Host (numpy) copies of replicated global arrays, from this process's own device
    (other leaves are converted with ``np.asarray``)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0) if isinstance(x, jax.Array)
                                             else x), tree)
