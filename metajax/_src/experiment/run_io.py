"""Run outputs: config.json, metrics.jsonl and summary.json, never left half-written."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def is_writer_process() -> bool:
    """Whether this process writes run files: process 0 of a multi-host run (or the only one)."""
    import jax

    return jax.process_index() == 0


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Writes ``obj`` as JSON to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_jsonable(obj), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunWriter:
    """Writes a run's files into ``out_dir`` (created if needed).

    Examples:
        >>> import tempfile
        >>> w = RunWriter(tempfile.mkdtemp())
        >>> w.log({"step": 1, "loss": 0.5})
        >>> (w.out_dir / "metrics.jsonl").read_text()
        '{"step": 1, "loss": 0.5}\\n'
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, obj: Any) -> Path:
        """Writes ``obj`` to ``out_dir/name`` as JSON, atomically (process 0 only)."""
        path = self.out_dir / name
        if is_writer_process():
            write_json_atomic(path, obj)
        return path

    def log(self, record: dict) -> None:
        """Appends one JSON line to ``metrics.jsonl`` (flushed at once; process 0 only)."""
        if not is_writer_process():
            return
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")
            f.flush()

    def drop_records_after(self, method: str, step: int) -> None:
        """Removes ``method``'s records past ``step`` from ``metrics.jsonl`` (on resume, the
        steps after the last checkpoint are trained and logged again; process 0 only)."""
        if not is_writer_process():
            return
        path = self.out_dir / "metrics.jsonl"
        records = read_records(path)
        kept = [r for r in records if not (r.get("method") == method and r["step"] > step)]
        if len(kept) != len(records):
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, path)

    def checkpointer(self, phase: str, *, keep: int = 3):
        """A :class:`metajax.experiment.Checkpointer` in ``checkpoints/<phase>``, keyed to
        this run's ``config.json`` (so another config cannot resume it)."""
        from metajax._src.experiment.checkpoint import Checkpointer, fingerprint

        config = self.out_dir / "config.json"
        text = config.read_text() if config.exists() else ""
        return Checkpointer(self.out_dir / "checkpoints" / phase,
                            config_fingerprint=fingerprint(text), keep=keep)

    def path(self, name: str) -> Path:
        """The path of ``name`` inside the run directory."""
        return self.out_dir / name


def read_records(path: str | os.PathLike) -> list[dict]:
    """Reads a ``metrics.jsonl`` file into a list of dicts (empty if the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
