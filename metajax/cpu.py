"""The CPU conv engine: fast conv-net meta-learning on XLA:CPU, and the process's CPU tuning.

Plugs into the core through one seam, :class:`metajax.TaskBatching`:
:func:`conv_batching` is what :func:`metajax.default_batching` returns on CPU. It interprets
jaxprs with JAX's extension API, so it lives here, off the default path of GPU and TPU
programs, and is loaded only when used. :func:`configure` is the explicit XLA:CPU and
allocator tuning (call it first, before any computation, in a CPU script). See
``docs/design/cpu-engine.md``.
"""

from metajax._src.cpu.batching import TASK_GROUP, conv_batching
from metajax._src.cpu.configure import Configured, configure
from metajax._src.cpu.conv_block import conv_bn_relu_pool
from metajax._src.cpu.heap import glibc_tunables
from metajax._src.cpu.task_batching import lowering_counts, per_task_weight_convs, task_vmap
from metajax._src.cpu.winograd import conv_winograd
from metajax._src.cpu.winograd_rewrite import with_winograd_convs

__all__ = [
    "TASK_GROUP",
    "Configured",
    "configure",
    "conv_batching",
    "conv_bn_relu_pool",
    "conv_winograd",
    "glibc_tunables",
    "lowering_counts",
    "per_task_weight_convs",
    "task_vmap",
    "with_winograd_convs",
]
