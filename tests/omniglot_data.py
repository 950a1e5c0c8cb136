"""Test helpers for the data loaders: the real Omniglot data (shared build) and fake zips."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # ../shared/data relative to the repo root
OMNIGLOT_DIR = SHARED_DATA / "omniglot"

_BUILT: dict = {}


def require_omniglot() -> Path:
    """Skips the calling test unless the real Omniglot zips are at ../shared/data/omniglot."""
    if not (OMNIGLOT_DIR / "images_background.zip").is_file():
        pytest.skip(f"real Omniglot data not found at {OMNIGLOT_DIR} (../shared/data/omniglot "
                    "relative to the repo root)")
    return SHARED_DATA


def shared_omniglot(tmp_path_factory):
    """Builds the real Omniglot cache once per test session in a temporary cache directory.

    Returns ``(characters, cache_dir, build_seconds)``. Every test module that needs the real
    data calls this from a fixture, so the ~15 s decode happens once per session.
    """
    require_omniglot()
    if "chars" not in _BUILT:
        from metajax import data

        cache_dir = tmp_path_factory.mktemp("omniglot_cache")
        start = time.perf_counter()
        chars = data.load_omniglot_characters(SHARED_DATA, cache_dir=cache_dir)
        _BUILT.update(chars=chars, cache_dir=cache_dir, seconds=time.perf_counter() - start)
    return _BUILT["chars"], _BUILT["cache_dir"], _BUILT["seconds"]


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("1").save(buffer, format="PNG")
    return buffer.getvalue()


def write_fake_omniglot(root: Path, *, background=(("Alpha", 2), ("Beta", 1)),
                        evaluation=(("Gamma", 2),), size: int = 105, seed: int = 0,
                        images_per_character: int = 20) -> Path:
    """Writes tiny zips in the official layout under ``root/omniglot``; returns that folder.

    ``background`` / ``evaluation`` list ``(alphabet, n_characters)``; every image is random
    1-bit noise of ``size`` x ``size`` (mode "1", as the real PNGs).
    """
    rng = np.random.default_rng(seed)
    directory = root / "omniglot"
    directory.mkdir(parents=True, exist_ok=True)
    for stem, alphabets in (("images_background", background),
                            ("images_evaluation", evaluation)):
        with zipfile.ZipFile(directory / f"{stem}.zip", "w") as zf:
            for alphabet, n_chars in alphabets:
                for c in range(1, n_chars + 1):
                    for i in range(1, images_per_character + 1):
                        pixels = (rng.random((size, size)) > 0.2).astype(np.uint8) * 255
                        zf.writestr(f"{stem}/{alphabet}/character{c:02d}/{c:04d}_{i:02d}.png",
                                    _png(pixels))
    return directory


def shared_compilation_cache(tmp_path_factory):
    """A persistent XLA cache in a temporary directory, shared by the Omniglot CLI tests.

    Their tiny runs compile the same programs (episode samplers, Conv4 inits, baseline
    evaluators, the classifier pre-training) again and again, and on CPU compiling is most
    of their time. Generator for a module fixture: yields the directory, then restores the
    previous cache setting (nothing is written outside the temporary directory).
    """
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    if "xla_cache" not in _BUILT:
        _BUILT["xla_cache"] = tmp_path_factory.mktemp("xla_cache")
    options = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    previous = {name: getattr(jax.config, name) for name in options}
    jax.config.update(options[0], str(_BUILT["xla_cache"]))
    jax.config.update(options[1], 0.5)
    cc.reset_cache()  # whether the cache is used is decided at a process's first compile
    try:
        yield _BUILT["xla_cache"]
    finally:
        for name, value in previous.items():
            jax.config.update(name, value)
        cc.reset_cache()
