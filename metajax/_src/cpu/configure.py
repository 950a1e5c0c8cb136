"""``metajax.cpu.configure()``: the explicit XLA:CPU and allocator tuning of a CPU process."""

from __future__ import annotations

from typing import NamedTuple

from metajax._src.cpu import heap, xla_flags


class Configured(NamedTuple):
    """What :func:`configure` changed in this process.

    Attributes:
        xla_flags: ``XLA_FLAGS`` gained metajax's XLA:CPU kernel-library choice.
        malloc: glibc's malloc settings were changed (one arena, no ``mmap``, no trimming).
    """

    xla_flags: bool
    malloc: bool


def backend_started() -> bool:
    """Whether a JAX backend already exists in this process (then it is too late to tune)."""
    from jax._src import xla_bridge  # inside the engine only: no public equivalent

    return xla_bridge.backends_are_initialized()


def configure(*, xla_flags_choice: bool = True, malloc: bool = True) -> Configured:
    """Tunes this process for conv-net meta-learning on XLA:CPU. Call it first, in a CPU script.

    Two process-wide settings, measured on Conv4 MAML (``docs/design/cpu-engine.md``):

    * ``XLA_FLAGS`` gains ``--xla_cpu_experimental_ynn_fusion_type=reduce,individual_dot``:
      convolutions run in XLA's Eigen kernels instead of YNNPACK (a second-order Conv4 MAML
      meta-step 1.16x faster). Skipped where the user set that flag, set
      ``METAJAX_KEEP_XLA_FLAGS=1``, or runs a jaxlib it was not measured on (XLA aborts on a
      flag value it does not know).
    * glibc's malloc keeps XLA's per-call scratch buffers in the heap (one arena, no ``mmap``,
      no trimming): no page faults and no zeroing of a fresh mapping in every call (about 20%
      of a one-core Conv4 step). The process keeps its high-water resident size, and on two
      or more threads the heap can grow to several scratch buffers (3.2 -> 9.0 GiB at meta-batch
      32). Skipped outside glibc, where the user set malloc variables or ``GLIBC_TUNABLES``,
      or with ``METAJAX_KEEP_MALLOC=1``.

    Both only take effect before JAX starts its backend, so call this before any JAX
    computation (``metajax run``, ``metajax sweep`` and the benchmarks do). ``import metajax``
    never calls it: the library changes nothing in a process unless asked.

    Args:
        xla_flags_choice: apply the XLA:CPU kernel-library choice.
        malloc: apply the malloc settings.

    Returns:
        A :class:`Configured` saying which settings were applied.

    Raises:
        RuntimeError: JAX's backend is already running in this process.

    Example::

        import metajax, metajax.cpu
        metajax.cpu.configure()  # first, before any JAX computation
        learner = metajax.maml(...)
    """
    if backend_started():
        raise RuntimeError("metajax.cpu.configure() must run before JAX computes anything in "
                           "this process (its backend already exists); call it first, right "
                           "after the imports.")
    flags = xla_flags.configure_cpu_fusions() if xla_flags_choice else False
    heap_changed = heap.configure_heap() if malloc else False
    return Configured(xla_flags=flags, malloc=heap_changed)
