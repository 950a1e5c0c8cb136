"""Shared pytest fixtures for the metajax test suite."""

from __future__ import annotations

import jax
import pytest


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
