"""XLA's memory estimate of a compiled training step, checked against the memory there is.

A meta-batch too large for the machine should stop with a message before training, not with
an allocator failure minutes in (or a machine swapping to a halt): :func:`check_fits` reads the
compiled program's :meth:`memory_analysis` (arguments, outputs and temporaries, as XLA plans
them) and compares it with the free memory of the device it runs on.
"""

from __future__ import annotations

import os

import jax

GIB = 2.0 ** 30


class MemoryEstimateError(ValueError):
    """A compiled step needs more memory than its device has free.

    Attributes:
      needed: XLA's estimate of the step's memory, in bytes.
      available: the device's free memory, in bytes.
      tasks_per_step: the tasks in one step's batch (the knob to turn down).
    """

    def __init__(self, needed: int, available: int, tasks_per_step: int):
        self.needed, self.available, self.tasks_per_step = needed, available, tasks_per_step
        super().__init__(
            f"tasks_per_step: the training step needs about {needed / GIB:.3g} GiB (XLA's "
            f"estimate for {tasks_per_step} tasks per step), more than the "
            f"{available / GIB:.3g} GiB of memory available; use fewer tasks per step.")


def program_bytes(compiled) -> int | None:
    """Arguments + outputs + temporaries of a compiled program (aliased buffers once), or
    ``None`` where the backend gives no estimate."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend or runtime implements it
        return None
    if stats is None:
        return None
    peak = getattr(stats, "peak_memory_in_bytes", 0) or 0
    total = (stats.argument_size_in_bytes + stats.output_size_in_bytes
             - stats.alias_size_in_bytes + stats.temp_size_in_bytes)
    return int(max(peak, total))


def available_bytes(device: jax.Device | None = None) -> int | None:
    """Free memory of ``device`` (an accelerator's allocator limit less what is in use; for
    the CPU, the host's available memory), or ``None`` where it cannot be read."""
    device = device if device is not None else jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return host_available_bytes()


def host_available_bytes() -> int | None:
    """The host's available memory (``MemAvailable`` on Linux), or ``None``."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(compiled, *, tasks_per_step: int, available: int | None = None) -> None:
    """Raises :class:`MemoryEstimateError` if ``compiled`` needs more than ``available``
    bytes (by default the free memory of the first local device); silent where either
    figure is unknown.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> compiled = jax.jit(lambda x: x * 2).lower(jnp.ones(1000)).compile()
      >>> check_fits(compiled, tasks_per_step=1, available=10**9)  # fits
      >>> check_fits(compiled, tasks_per_step=1, available=100)
      Traceback (most recent call last):
      ...
      metajax._src.experiment.memory.MemoryEstimateError: tasks_per_step: the training step ...
    """
    needed = program_bytes(compiled)
    available = available_bytes() if available is None else available
    if needed is not None and available is not None and needed > available:
        raise MemoryEstimateError(needed, available, tasks_per_step)
