"""Atomic, versioned checkpoints of a whole training state (any pytree)."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

FORMAT = 2
_NAME = re.compile(r"^ckpt-(\d{10})\.msgpack$")


class CheckpointError(RuntimeError):
    """A checkpoint is corrupt, or belongs to another config, version or model."""


def _version() -> str:
    from metajax import __version__

    return __version__


def fingerprint(text: str) -> str:
    """A short stable hash identifying a run's configuration."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _digest(payload: dict) -> str:
    """SHA-256 over everything a checkpoint restores: step, config, structure, metadata and
    every leaf's dtype, shape and bytes (so a flipped bit in any array is caught)."""
    h = hashlib.sha256()
    for part in (str(payload["step"]), str(payload["config"]), payload["treedef"]):
        h.update(part.encode())
        h.update(b"\0")
    h.update(payload["metadata"])
    leaves = payload["leaves"]
    for i in range(len(leaves)):
        leaf = np.ascontiguousarray(leaves[str(i)])
        h.update(f"{leaf.dtype.str}{leaf.shape}".encode())
        h.update(leaf.tobytes())
    return h.hexdigest()


class Checkpointer:
    """Saves and restores training state in ``directory``, keeping the newest ``keep`` files.

    Every file is written to a temporary name, flushed to disk and atomically renamed, so a
    crash mid-write never corrupts the last good checkpoint. A checkpoint records the metajax
    version and the run's config fingerprint; restoring one written by another version or
    config, or into a state of another structure, raises :class:`CheckpointError`.

    Serialisation uses Flax's msgpack format (raw array bytes: restores are bit-exact). A
    SHA-256 checksum of the arrays, structure and metadata is stored with them and verified on
    restore: a file altered after it was written (a flipped bit in one float) is refused.

    Args:
        directory: where checkpoint files live (created if needed).
        config_fingerprint: identifies the run's config (see :func:`fingerprint`).
        keep: how many of the newest checkpoints to keep.

    Examples:
        >>> import tempfile, jax.numpy as jnp
        >>> ckpt = Checkpointer(tempfile.mkdtemp(), config_fingerprint="abc")
        >>> _ = ckpt.save(10, {"w": jnp.arange(3.0)}, {"note": "hi"})
        >>> step, tree, meta = ckpt.restore_latest({"w": jnp.zeros(3)})
        >>> step, tree["w"].tolist(), meta["note"]
        (10, [0.0, 1.0, 2.0], 'hi')
    """

    def __init__(self, directory: str | os.PathLike, *, config_fingerprint: str, keep: int = 3):
        if keep < 1:
            raise ValueError(f"`keep` must be >= 1; got {keep}.")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_fingerprint = config_fingerprint
        self.keep = keep

    def steps(self) -> list[int]:
        """Steps of the checkpoints present, oldest first."""
        found = (_NAME.match(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def path(self, step: int) -> Path:
        """The file of the checkpoint at ``step``."""
        return self.directory / f"ckpt-{step:010d}.msgpack"

    def save(self, step: int, tree: Any, metadata: dict | None = None) -> Path:
        """Atomically writes ``tree`` (any pytree of arrays) and JSON-able ``metadata``.

        In a multi-host run only process 0 writes (every process holds the replicated state).
        """
        path = self.path(step)
        if jax.process_index() != 0:
            return path
        leaves, treedef = jax.tree.flatten(jax.device_get(tree))
        payload = {
            "format": FORMAT,
            "version": _version(),
            "config": self.config_fingerprint,
            "step": int(step),
            "treedef": str(treedef),
            "leaves": {str(i): np.asarray(leaf) for i, leaf in enumerate(leaves)},
            "metadata": serialization.msgpack_serialize(metadata or {}),
        }
        payload["checksum"] = _digest(payload)
        data = serialization.msgpack_serialize(payload)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".msgpack")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        for old in self.steps()[:-self.keep]:
            self.path(old).unlink(missing_ok=True)
        return path

    def restore(self, step: int, template: Any) -> tuple[Any, dict]:
        """Restores the checkpoint at ``step`` into the structure of ``template``."""
        path = self.path(step)
        try:
            payload = serialization.msgpack_restore(path.read_bytes())
            metadata = serialization.msgpack_restore(payload["metadata"])
        except Exception as err:  # msgpack raises various errors on truncated input
            raise CheckpointError(f"Checkpoint {path} is corrupt or unreadable ({err}). Remove "
                                  "it to resume from the previous one.") from None
        if payload.get("format") != FORMAT or payload.get("version") != _version():
            raise CheckpointError(
                f"Checkpoint {path} was written by metajax {payload.get('version')} (format "
                f"{payload.get('format')}); this is metajax {_version()} (format {FORMAT}). "
                "Resume it with the version that wrote it, or start a new run.")
        if payload.get("config") != self.config_fingerprint:
            raise CheckpointError(
                f"Checkpoint {path} belongs to another configuration (fingerprint "
                f"{payload.get('config')}, this run {self.config_fingerprint}). Resume with the "
                "run's own config.json, or start a new run in another directory.")
        try:
            intact = payload.get("checksum") == _digest(payload)
        except Exception:  # a payload missing its parts
            intact = False
        if not intact:
            raise CheckpointError(
                f"Checkpoint {path} fails its checksum: its contents changed after it was "
                "written. Remove it to resume from the previous one.")
        leaves, treedef = jax.tree.flatten(template)
        stored = payload["leaves"]
        if str(treedef) != payload["treedef"] or len(stored) != len(leaves):
            raise CheckpointError(f"Checkpoint {path} holds a state of another structure than "
                                  "this run's (did the model or optimizer change?).")
        restored = []
        for i, leaf in enumerate(leaves):
            value = stored[str(i)]
            if np.shape(value) != np.shape(leaf) or np.dtype(value.dtype) != np.dtype(leaf.dtype):
                raise CheckpointError(
                    f"Checkpoint {path}: leaf {i} is {value.dtype}{list(np.shape(value))}, this "
                    f"run expects {np.dtype(leaf.dtype)}{list(np.shape(leaf))}.")
            restored.append(value)
        return jax.tree.unflatten(treedef, restored), metadata

    def restore_latest(self, template: Any) -> tuple[int, Any, dict] | None:
        """Restores the newest checkpoint, or returns ``None`` when there is none."""
        steps = self.steps()
        if not steps:
            return None
        tree, metadata = self.restore(steps[-1], template)
        return steps[-1], tree, metadata
