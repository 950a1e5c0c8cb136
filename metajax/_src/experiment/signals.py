"""Ctrl-C during meta-training: a flag checked between compiled chunks, agreed across processes."""

from __future__ import annotations

import contextlib
import signal
import threading

import numpy as np


@contextlib.contextmanager
def deferred_sigint():
    """Turns Ctrl-C into a flag checked between compiled chunks (main thread only).

    A second Ctrl-C stops at once (``KeyboardInterrupt``).
    """
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


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is set on any of the program's processes (a collective)."""
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))
