"""The package's shape: an inert import, the CPU engine behind its seam, one-way layers."""

import ast
import os
import pathlib
import re
import subprocess
import sys

import metajax

SRC = pathlib.Path(metajax.__file__).parent / "_src"
# Each layer may import only the layers listed (and itself).
ALLOWED = {
    "core": set(),
    "tasks": {"core"},
    "data": {"core"},
    "algorithms": {"core"},
    "metric": {"core"},
    "amortized": {"core"},
    "lopt": {"core"},
    "rl": {"core"},
    "cpu": {"core"},
    "distributed": {"core"},
    "experiment": {"core", "algorithms", "metric", "amortized", "lopt", "rl", "data",
                   "tasks", "distributed"},
}

INERT = """
import ctypes, json, os, sys
before = os.environ.get("XLA_FLAGS")
import metajax
print(json.dumps({
    "xla_flags": [before, os.environ.get("XLA_FLAGS")],
    "engine": sorted(m for m in sys.modules if m.startswith(("metajax._src.cpu", "metajax.cpu",
                                                              "metajax.experiment"))),
}))
"""


def _run(code, **env):
    environ = {k: v for k, v in os.environ.items()
               if k not in ("XLA_FLAGS", "METAJAX_KEEP_XLA_FLAGS", "METAJAX_KEEP_MALLOC")}
    environ.update(env)
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip().splitlines()


def test_import_changes_nothing_and_loads_no_engine():
    import json

    report = json.loads(_run(INERT, XLA_FLAGS="--xla_cpu_enable_fast_math=false")[-1])
    assert report["xla_flags"] == ["--xla_cpu_enable_fast_math=false"] * 2
    assert report["engine"] == []
    report = json.loads(_run(INERT)[-1])
    assert report["xla_flags"] == [None, None]


MALLOC = """
import ctypes, metajax, jax.numpy as jnp
libc = ctypes.CDLL(None)

class Info(ctypes.Structure):  # glibc's struct mallinfo2 (size_t fields)
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks",
                                               "keepcost")]
libc.mallinfo2.restype = Info
before = libc.mallinfo2().hblks
big = ctypes.create_string_buffer(64 << 20)  # 64 MiB: mmap-served under glibc's defaults
print(libc.mallinfo2().hblks - before)
"""

CONFIGURED = """
import metajax.cpu, os
print(metajax.cpu.configure())
print(os.environ.get("XLA_FLAGS", ""))
""" + MALLOC.replace("import ctypes, metajax, jax.numpy as jnp", "import ctypes") + """
import jax.numpy as jnp
print(float(jnp.ones(3).sum()))
"""


def test_malloc_is_untouched_by_import_and_configure_takes_effect():
    import jaxlib

    from metajax._src.cpu import heap, xla_flags

    if heap._glibc() is None:  # the allocator settings exist only under glibc
        assert _run(INERT)
        return
    # After `import metajax` a large block is still served by mmap (glibc's default).
    assert int(_run(MALLOC)[-1]) == 1
    configured, flags, mmapped, total = _run(CONFIGURED)
    assert "malloc=True" in configured
    assert int(mmapped) == 0  # the explicit call turned mmap-served blocks off
    tested = jaxlib.__version__.startswith(xla_flags.TESTED_JAXLIB)
    assert (xla_flags.FLAG in flags) == tested
    assert total == "3.0"  # XLA accepted the flag and computed


def test_configure_refuses_once_the_backend_runs():
    code = ("import jax.numpy as jnp, metajax.cpu\njnp.ones(1).block_until_ready()\n"
            "try:\n    metajax.cpu.configure()\nexcept RuntimeError as e:\n    print(e)")
    assert "before JAX computes anything" in _run(code)[-1]


def _imported_layers(path: pathlib.Path) -> set[str]:
    layers = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["metajax", "_src"] and len(parts) > 2:
                layers.add(parts[2])
            elif parts[0] == "metajax" and len(parts) > 1 and parts[1] in ALLOWED:
                layers.add(parts[1])
    return layers


def test_layers_depend_one_way():
    bad = {}
    for layer, allowed in ALLOWED.items():
        for path in (SRC / layer).glob("*.py"):
            extra = _imported_layers(path) - allowed - {layer}
            if extra:
                bad[str(path.relative_to(SRC))] = sorted(extra)
    # The one seam: core/batching.py resolves the CPU engine lazily, on CPU only.
    assert bad == {"core/batching.py": ["cpu"]}


def test_jax_internals_only_inside_the_cpu_engine():
    users = set()
    for path in SRC.parent.rglob("*.py"):
        if re.search(r"(?<![\w.])jax\.(_src|extend)\b", path.read_text()):
            users.add(path.relative_to(SRC.parent).parts[:2])
    assert users == {("_src", "cpu")}
