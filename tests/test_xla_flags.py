"""metajax.cpu.configure()'s XLA:CPU library choice (metajax/_src/cpu/xla_flags.py)."""

import os
import subprocess
import sys

import pytest

from metajax._src.cpu import xla_flags

CHOICE = f"--{xla_flags.FLAG}={xla_flags.CPU_LIBRARY_FUSIONS}"


@pytest.mark.parametrize("flags, version, keep, expected", [
    ("", "0.10.2", "", CHOICE),
    ("--xla_cpu_enable_fast_math=false", "0.10.0", "0",
     f"--xla_cpu_enable_fast_math=false {CHOICE}"),
    # The user's own choice wins, whatever its value.
    (f"--{xla_flags.FLAG}=dot", "0.10.2", "", f"--{xla_flags.FLAG}=dot"),
    # Opted out.
    ("--xla_force_host_platform_device_count=2", "0.10.2", "1",
     "--xla_force_host_platform_device_count=2"),
    # A jaxlib the fusion-type names were not checked on: XLA would abort on an unknown value.
    ("", "0.11.0", "", ""),
    ("", "0.9.1", "", ""),
])
def test_flags_are_added_only_when_safe_and_wanted(flags, version, keep, expected):
    assert xla_flags.xla_flags_with_cpu_fusions(flags, jaxlib_version=version,
                                                keep=keep) == expected


def _configure_and_report(env):
    code = ("import os, metajax.cpu, jax.numpy as jnp; metajax.cpu.configure(); "
            "print(os.environ.get('XLA_FLAGS', '')); print(float(jnp.ones(3).sum()))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    return out.stdout.splitlines()


def test_configure_sets_the_flag_before_the_backend_starts_and_xla_accepts_it():
    import jaxlib

    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_flags.OPT_OUT)}
    flags, total = _configure_and_report(env)
    tested = jaxlib.__version__.startswith(xla_flags.TESTED_JAXLIB)
    assert flags == (CHOICE if tested else "")
    assert total == "3.0"  # XLA parsed the flag and ran a computation
    flags, _ = _configure_and_report(dict(env, **{xla_flags.OPT_OUT: "1"}))
    assert flags == ""


def test_nothing_changes_once_a_backend_is_initialised(monkeypatch):
    import jax.numpy as jnp

    jnp.zeros(1).block_until_ready()  # the backend is up
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.delenv(xla_flags.OPT_OUT, raising=False)
    assert xla_flags.configure_cpu_fusions() is False
    assert os.environ["XLA_FLAGS"] == ""
