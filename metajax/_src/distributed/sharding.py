"""Sharding the task axis of a meta-batch across devices (and hosts) with ``jax.sharding``."""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from metajax._src.core.loop import Sampler
from metajax._src.core.types import TaskBatch

TASK_AXIS = "tasks"


def task_mesh(devices: Any = None) -> Mesh:
    """A 1-D mesh named ``"tasks"`` over ``devices`` (default: every device of every host).

    Examples:
        >>> task_mesh().axis_names
        ('tasks',)
    """
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (TASK_AXIS,), devices=devices,
                         axis_types=(AxisType.Auto,))  # GSPMD propagates the task sharding


def check_splits(n: int, size: int) -> int:
    """``n // size``: the tasks per device of an ``n``-task meta-batch split over ``size``
    devices of the ``"tasks"`` axis.

    Raises:
        ValueError: ``n`` is not a multiple of ``size``.
    """
    if n % size:
        raise ValueError(f"The meta-batch ({n} tasks) must be a multiple of the number of "
                         f"devices on the mesh's '{TASK_AXIS}' axis ({size}).")
    return n // size


def shard_tasks(sample: Sampler, mesh: Mesh) -> Sampler:
    """Wraps a task sampler so its batches are split over ``mesh`` along the task axis.

    Inside a jitted step (e.g. :func:`metajax.make_multi_step`), GSPMD then runs each device's
    share of the tasks locally, and the mean over tasks in the meta-loss becomes the
    cross-device reduction of the meta-gradient. Parameters and optimizer state are
    replicated (see :func:`replicate`). The meta-batch size must be a multiple of the number
    of devices.

    Args:
        sample: ``sample(key, *sample_args) -> TaskBatch``.
        mesh: a mesh with a ``"tasks"`` axis (see :func:`task_mesh`).
    """
    sharding = NamedSharding(mesh, PartitionSpec(TASK_AXIS))
    size = mesh.shape[TASK_AXIS]

    def sharded(key: jax.Array, *sample_args: Any) -> TaskBatch:
        tasks = sample(key, *sample_args)
        check_splits(jax.tree.leaves(tasks)[0].shape[0], size)
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tasks)

    return sharded


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf of ``tree`` fully replicated on ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
