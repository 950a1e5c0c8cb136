"""Several devices and CPU processes: the task axis of a meta-batch split over them.

* One process per CPU core (:func:`init_process`, :func:`process_step`, :func:`to_global`):
  learners built with ``axis_name=TASK_AXIS`` average their meta-gradients over the processes
  (:func:`task_axis` gives the right ``axis_name`` for the running program).
* Several devices through GSPMD (:func:`task_mesh`, :func:`shard_tasks`, :func:`replicate`).
"""

from metajax._src.distributed.processes import (
    init_process,
    local_value,
    mean_across,
    process_multi_step,
    process_step,
    process_step_body,
    share_sampler,
    task_axis,
    task_split,
    to_global,
)
from metajax._src.distributed.sharding import (
    TASK_AXIS,
    check_splits,
    replicate,
    shard_tasks,
    task_mesh,
)

__all__ = [
    "TASK_AXIS",
    "check_splits",
    "init_process",
    "local_value",
    "mean_across",
    "process_multi_step",
    "process_step",
    "process_step_body",
    "replicate",
    "shard_tasks",
    "share_sampler",
    "task_axis",
    "task_split",
    "task_mesh",
    "to_global",
]
