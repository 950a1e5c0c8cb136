"""metajax.cpu.configure()'s malloc settings (metajax/_src/cpu/heap.py)."""

import os
import subprocess
import sys

import pytest

from metajax._src.cpu import heap

needs_glibc = pytest.mark.skipif(heap._glibc() is None,
                                 reason="the malloc settings exist only under glibc")


@pytest.mark.parametrize("environ, wanted", [
    ({}, True),
    ({heap.OPT_OUT: "0", "GLIBC_TUNABLES": "glibc.rtld.nns=2"}, True),
    ({heap.OPT_OUT: "1"}, False),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, False),
    ({"MALLOC_ARENA_MAX": "8"}, False),
    ({"MALLOC_MMAP_THRESHOLD_": "65536"}, False),
    ({"MALLOC_TRIM_THRESHOLD_": "0"}, False),
])
def test_the_users_own_malloc_settings_win(environ, wanted):
    assert heap.wants_heap_tuning(environ) is wanted


# A program with a 128 MiB scratch buffer (the transposed exp). Under glibc's defaults every
# call maps it afresh (32768 page faults). With configure()'s settings calls reuse it from the
# heap and fault nothing, once the heap has grown to hold the blocks that are in flight at
# once (a few calls; XLA frees a call's buffers shortly after its result is ready, so calls
# are spaced out here as real steps are). Printed: the median over the last 8 of 16 calls.
PAGE_FAULTS = """
import time, resource, metajax.cpu, jax, jax.numpy as jnp
metajax.cpu.configure()
def f(x, v):
    h = jnp.exp(x.reshape(4096, 4096).T)
    return (h @ v)[:4] + (h.T @ v)[:4]
f = jax.jit(f)
x, v = jnp.full(4096 * 4096, 1e-3), jnp.ones(4096)
faults = []
for _ in range(16):
    time.sleep(0.1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x, v).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sorted(faults[-8:])[4])
"""


def _faults_per_call(**env_changes):
    env = {k: v for k, v in os.environ.items()
           if k not in (heap.OPT_OUT, "GLIBC_TUNABLES", *heap.USER_SETTINGS)}
    env.update(env_changes)
    out = subprocess.run([sys.executable, "-c", PAGE_FAULTS], env=env, capture_output=True,
                         text=True, check=True)
    return float(out.stdout.split()[-1])


@needs_glibc
def test_glibc_tunables_give_another_process_the_same_settings():
    tunables = heap.glibc_tunables()
    assert _faults_per_call(**{heap.OPT_OUT: "1", "GLIBC_TUNABLES": tunables}) < 0.5 * 2**15
    assert tunables.count("glibc.malloc.") == len(heap.SETTINGS)


@pytest.mark.slow
@needs_glibc
def test_configure_makes_large_scratch_buffers_reuse_the_heap():
    pages = 2**27 // 4096
    assert _faults_per_call() < 0.5 * pages
    assert _faults_per_call(**{heap.OPT_OUT: "1"}) > 0.5 * pages  # glibc's defaults


@needs_glibc
def test_nothing_changes_once_a_backend_is_initialised(monkeypatch):
    import jax.numpy as jnp

    jnp.zeros(1).block_until_ready()  # the backend is up
    monkeypatch.delenv(heap.OPT_OUT, raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    for name in heap.USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    assert heap.configure_heap() is False
