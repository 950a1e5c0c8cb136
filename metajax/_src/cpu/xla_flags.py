"""Which XLA:CPU kernel libraries run which operations: part of :func:`metajax.cpu.configure`.

XLA:CPU hands some operations to the YNNPACK library. For the convolutions of conv-net
meta-learning, YNNPACK is the slow choice: a weight-gradient convolution of Omniglot's Conv4
(75 images of 14x14x64, window = the whole feature map) runs at 22-25 GFLOP/s in YNNPACK and at
65-82 GFLOP/s in XLA's Eigen convolution on one core of this project's CPU, and a whole
second-order Conv4 MAML meta-step is 1.16x faster with convolutions left to Eigen
(``benchmarks/results/conv_task_batching.md``). YNNPACK stays in charge of reductions and
single matrix products, where it is the faster library (an MLP MAML step is as fast or up to
5% faster than with XLA's defaults); its element-wise fusions are off (they slowed both).

The choice is made through ``XLA_FLAGS``, which XLA reads once, when the first computation
initialises the backend, so :func:`metajax.cpu.configure` sets it before that, and only when all
of these hold:

* the user has not chosen: ``XLA_FLAGS`` does not already name
  ``xla_cpu_experimental_ynn_fusion_type``, and ``METAJAX_KEEP_XLA_FLAGS`` is unset or ``0``;
* the installed jaxlib is a version this choice was measured on (:data:`TESTED_JAXLIB`):
  XLA aborts the process on a flag value it does not know, so an untested jaxlib is left alone;
* no JAX backend is initialised yet (otherwise the flag could no longer take effect).

The flag only concerns XLA:CPU; GPU and TPU programs are unaffected. Results differ from
XLA's defaults by float rounding only (a different summation order inside convolutions).
"""

from __future__ import annotations

import os

FLAG = "xla_cpu_experimental_ynn_fusion_type"
CPU_LIBRARY_FUSIONS = "reduce,individual_dot"  # YNNPACK keeps these; convolutions go to Eigen
TESTED_JAXLIB = ("0.10.",)  # jaxlib versions whose XLA knows these fusion-type names
OPT_OUT = "METAJAX_KEEP_XLA_FLAGS"


def xla_flags_with_cpu_fusions(flags: str, *, jaxlib_version: str, keep: str = "") -> str:
    """``XLA_FLAGS`` with metajax's XLA:CPU library choice added, when it may be added.

    Args:
        flags: the current ``XLA_FLAGS`` value.
        jaxlib_version: the installed jaxlib's version.
        keep: the value of ``METAJAX_KEEP_XLA_FLAGS`` (non-empty and not ``"0"``: leave
            ``flags`` unchanged).

    Returns:
        ``flags`` with ``--xla_cpu_experimental_ynn_fusion_type=reduce,individual_dot``
        appended, or ``flags`` unchanged when the user opted out, already set the flag, or
        runs a jaxlib outside :data:`TESTED_JAXLIB`.

    Examples:
        >>> xla_flags_with_cpu_fusions("", jaxlib_version="0.10.2")
        '--xla_cpu_experimental_ynn_fusion_type=reduce,individual_dot'
        >>> xla_flags_with_cpu_fusions("", jaxlib_version="0.10.2", keep="1")
        ''
    """
    if keep not in ("", "0") or FLAG in flags:
        return flags
    if not jaxlib_version.startswith(TESTED_JAXLIB):
        return flags
    return f"{flags} --{FLAG}={CPU_LIBRARY_FUSIONS}".strip()


def configure_cpu_fusions() -> bool:
    """Sets ``XLA_FLAGS`` for metajax's XLA:CPU library choice; returns whether it changed."""
    import jaxlib
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        return False
    flags = os.environ.get("XLA_FLAGS", "")
    new = xla_flags_with_cpu_fusions(flags, jaxlib_version=jaxlib.__version__,
                                     keep=os.environ.get(OPT_OUT, ""))
    if new == flags:
        return False
    os.environ["XLA_FLAGS"] = new
    return True
