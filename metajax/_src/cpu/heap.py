"""Keep XLA:CPU's per-call buffers in the process heap: part of :func:`metajax.cpu.configure`.

Every call of a compiled XLA:CPU program allocates its scratch buffer (and its outputs) with
``malloc`` and frees it when the call ends. Under glibc's default settings a block that large
(above 32 MiB, or any block requested from a thread's own arena, whose heaps are at most
64 MiB) is a fresh ``mmap`` and goes back to the kernel with ``munmap`` when freed, so *every
call* page-faults its whole scratch buffer in again and the kernel zeroes every page. For a
second-order Conv4 MAML step on Omniglot shapes (0.49 GiB scratch at meta-batch 8) that is
~128k page faults and ~0.3 s of kernel time per call, about 20% of the step on one core
(``benchmarks/results/conv_task_batching.md``).

With one malloc arena, no ``mmap``-served blocks and no trimming of the heap, such blocks
come from the heap and are reused by later calls: no page faults, no zeroing (after the first
few calls, while the heap grows to hold the blocks that are in flight at once). The cost: the
process keeps the memory it freed for reuse (its resident size stays at its high-water mark),
and all threads share one malloc arena (XLA allocates per call, not per operation, so there is
nothing to contend for in practice). If the heap cannot grow (its address range is taken),
glibc still falls back to ``mmap``.

Setting the mmap and trim *thresholds* to their maximum instead (2 GiB: ``mallopt`` takes a C
int) leaves a cliff: a program whose scratch buffer passes 2 GiB (2.4 GiB for a variant of the
Conv4 step) is mapped afresh every call again and runs 1.8x slower. Turning ``mmap`` off
(``M_MMAP_MAX=0``) and trimming off (``M_TRIM_THRESHOLD=-1``, glibc's documented "never") has no
such size limit.

:func:`metajax.cpu.configure` changes these settings through ``mallopt``, only when all of
these hold:

* the C library is glibc (``gnu_get_libc_version`` exists);
* the user has not chosen: none of ``GLIBC_TUNABLES`` (with a ``glibc.malloc`` entry),
  ``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_MMAP_MAX_``,
  ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_`` is set, and
  ``METAJAX_KEEP_MALLOC`` is unset or ``0``;
* no JAX backend is initialised yet (XLA's threads would already hold arenas of their own).

Numbers are unaffected; only where memory comes from changes.

Known cost (measured 2026-11-28, 2-core x86-64 VM, jaxlib 0.10.2): with two or more threads the heap
grows beyond one scratch buffer's worth. Small allocations land in the freed scratch region in an
order that varies between calls; when the next scratch request no longer fits, the heap grows by
another scratch size, page-faulting it in (a step about 2.5x as long). For Conv4 at meta-batch 32 on
two threads (2 GiB scratch) it grew 3.2 -> 9.0 GiB in three such steps (at calls 2, 14 and 30 in one
run, 8 and 10 in another) and then stayed flat for 90 calls; one thread stays at 3.3 GiB.
``METAJAX_KEEP_MALLOC=1`` keeps memory flat at the cost of page faults in every call
(``docs/design/cpu-engine.md``).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

OPT_OUT = "METAJAX_KEEP_MALLOC"
USER_SETTINGS = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_",
                 "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
# mallopt parameters (glibc's malloc.h) and their values here.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
NEVER = -1  # M_TRIM_THRESHOLD: never give the top of the heap back
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER))
_TUNABLE_NAMES = {M_ARENA_MAX: "arena_max", M_MMAP_MAX: "mmap_max",
                  M_TRIM_THRESHOLD: "trim_threshold"}


def glibc_tunables() -> str:
    """:data:`SETTINGS` as a ``GLIBC_TUNABLES`` value, to give another process (e.g. a
    PyTorch peer in a benchmark) the same malloc settings. Tunables are ``size_t``, so ``-1``
    becomes its maximum, as ``mallopt`` converts it.

    Examples:
        >>> glibc_tunables()
        'glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=18446744073709551615'
    """
    return ":".join(f"glibc.malloc.{_TUNABLE_NAMES[param]}={value % 2**64}"
                    for param, value in SETTINGS)


def wants_heap_tuning(environ: Mapping[str, str]) -> bool:
    """Whether the environment leaves the malloc settings to metajax.

    Examples:
        >>> wants_heap_tuning({})
        True
        >>> wants_heap_tuning({"MALLOC_ARENA_MAX": "4"}), wants_heap_tuning({OPT_OUT: "1"})
        (False, False)
    """
    if environ.get(OPT_OUT, "") not in ("", "0"):
        return False
    if "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
        return False
    return not any(name in environ for name in USER_SETTINGS)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (absent outside glibc)
        return libc
    except (OSError, AttributeError):
        return None


def configure_heap() -> bool:
    """Applies metajax's malloc settings when it may (see the module docstring); returns
    whether it did."""
    from jax._src import xla_bridge

    libc = _glibc()
    if libc is None or not wants_heap_tuning(os.environ):
        return False
    if xla_bridge.backends_are_initialized():
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in SETTINGS)
