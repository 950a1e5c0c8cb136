"""Compact on-disk caches of decoded datasets: atomic writes, validated reads."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

CACHE_VERSION = 1
_META = "__meta__"


def user_cache_dir() -> Path:
    """The per-user cache directory: ``$METAJAX_CACHE`` if set, else ``$XDG_CACHE_HOME/metajax``
    or ``~/.cache/metajax``."""
    if os.environ.get("METAJAX_CACHE"):
        return Path(os.environ["METAJAX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "metajax"


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def cache_candidates(filename: str, *, data_dir: Path, cache_dir: str | os.PathLike | None
                     ) -> list[Path]:
    """Where a cache file may be read from, in order of preference; the last is written.

    With an explicit ``cache_dir`` only ``cache_dir/filename``. Otherwise the user's cache
    directory (:func:`user_cache_dir`), under a name that includes a hash of ``data_dir`` so
    that two data roots never share a cache file, read after a cache already next to the
    data (``data_dir/filename``, which metajax reads but never writes: a data folder is not
    its to change).
    """
    if cache_dir is not None:
        return [Path(cache_dir) / filename]
    tag = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:10]
    stem, _, suffix = filename.rpartition(".")
    return [Path(data_dir) / filename, user_cache_dir() / f"{stem}-{tag}.{suffix}"]


def read_cache(path: Path, fingerprint: dict,
               validate: Callable[[dict[str, np.ndarray]], str | None] | None = None,
               ) -> dict[str, np.ndarray] | None:
    """Reads a cache file; ``None`` (with a warning) when it is corrupt or stale.

    A cache is accepted only if it is a readable ``.npz`` whose stored fingerprint equals
    ``fingerprint``, whose stored SHA-256 checksum matches the arrays read back, and which
    ``validate(arrays)`` (shapes, names) does not reject with a message.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(str(arrays.pop(_META)))
        problem = None
        if meta.get("fingerprint") != json.loads(json.dumps(fingerprint)):
            problem = "it was built from other source files or settings (stale)"
        elif meta.get("checksum") != _checksum(arrays):
            problem = "its checksum does not match its contents"
        elif validate is not None:
            problem = validate(arrays)
    except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile) as err:
        problem = f"it cannot be read ({type(err).__name__}: {err})"
    if problem is not None:
        warnings.warn(f"Ignoring the dataset cache {path}: {problem}. Rebuilding it from the "
                      "source files.", RuntimeWarning, stacklevel=3)
        return None
    return arrays


def write_cache(path: Path, arrays: dict[str, np.ndarray], fingerprint: dict) -> None:
    """Writes ``arrays`` and their fingerprint/checksum to ``path`` atomically.

    The file is written to a temporary name in the same directory and renamed over ``path``
    (``os.replace``), so readers never see a half-written cache.

    Raises:
        OSError: if the directory cannot be created or written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"version": CACHE_VERSION, "fingerprint": fingerprint,
                       "checksum": _checksum(arrays)})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays, **{_META: np.asarray(meta)})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_or_build(
    build: Callable[[], dict[str, np.ndarray]],
    *,
    filename: str,
    data_dir: Path,
    cache_dir: str | os.PathLike | None,
    fingerprint: dict,
    validate: Callable[[dict[str, np.ndarray]], str | None] | None = None,
) -> tuple[dict[str, np.ndarray], Path | None]:
    """Returns the cached arrays if a valid cache exists, else builds and caches them.

    Args:
        build: decodes the source files into named arrays.
        filename: the cache file name (see :func:`cache_candidates`).
        data_dir: the dataset directory; the preferred cache location.
        cache_dir: an explicit cache directory (the only location then).
        fingerprint: JSON-able description of the sources and settings; a cache built from
            another fingerprint is stale.
        validate: optional extra check of cached arrays; returns a problem or ``None``.

    Returns:
        ``(arrays, path)`` where ``path`` is the cache file read or written (``None`` if no
        candidate location was writable; a warning says so).
    """
    fingerprint = {"version": CACHE_VERSION, **fingerprint}
    candidates = cache_candidates(filename, data_dir=data_dir, cache_dir=cache_dir)
    for path in candidates:
        if path.is_file():
            arrays = read_cache(path, fingerprint, validate)
            if arrays is not None:
                return arrays, path
    arrays = build()
    path = candidates[-1]  # the cache directory, never the data folder
    try:
        write_cache(path, arrays, fingerprint)
        return arrays, path
    except OSError as err:
        warnings.warn(f"Could not write the dataset cache {path} ({err}); set METAJAX_CACHE or "
                      "cache_dir to a writable folder. The data will be decoded again next "
                      "time.", RuntimeWarning, stacklevel=2)
    return arrays, None
