"""Shared pytest fixtures for the metajax test suite."""

from __future__ import annotations

import os

import jax
import pytest


def pytest_configure(config):
    """The fast suite (``-m 'not slow'``, the default) compiles with most of XLA's
    optimisations off: its programs are tiny and compile-bound, and this halves its time on
    2 cores. The slow suite (``-m slow``), and any run with ``METAJAX_TEST_FULL_XLA=1``,
    compile as users do. The environment variable reaches the subprocesses of the CLI tests."""
    if "not slow" in (config.getoption("markexpr") or "") and os.environ.get(
            "METAJAX_TEST_FULL_XLA") != "1":
        os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
        jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture(autouse=True)
def _dataset_cache_in_tmp(tmp_path_factory, monkeypatch):
    """Decoded-dataset caches go to a temporary folder, never to the user's ~/.cache."""
    monkeypatch.setenv("METAJAX_CACHE", str(tmp_path_factory.getbasetemp() / "metajax_cache"))


@pytest.fixture
def x64():
    """Runs one test with 64-bit floats enabled, restoring the previous setting afterwards.

    ``jax.enable_x64`` is a context manager scoped to the test, so other tests keep the default
    float32 behaviour. Arrays must be created inside the test (not at module import) to be
    float64.
    """
    with jax.enable_x64(True):
        yield
