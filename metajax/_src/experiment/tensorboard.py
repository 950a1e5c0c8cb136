"""TensorBoard scalars mirrored from ``metrics.jsonl``, written without TensorBoard installed.

``metrics.jsonl`` stays the source of truth: :class:`MetricsMirror` follows it while a run
trains and appends every numeric field of every new record to an event file
(``<run>/tensorboard/events.out.tfevents.*``) that ``tensorboard --logdir <run>`` reads. The
event file is TFRecord framing (length, masked CRC-32C, payload, masked CRC-32C) around
``Event`` protocol buffers holding ``Summary.Value(tag, simple_value)``, encoded here by hand.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from collections.abc import Iterable
from pathlib import Path

_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``.

    Examples:
        >>> hex(crc32c(b"123456789"))
        '0xe3069283'
    """
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint((number << 3) | wire) + payload


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _field(number, 2, _varint(len(payload)) + payload)


def event(wall_time: float, step: int, scalars: dict[str, float] | None = None, *,
          file_version: str | None = None) -> bytes:
    """One serialised ``Event`` (wall time, step, and a summary of scalars or a file version)."""
    body = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
    if file_version is not None:
        body += _length_delimited(3, file_version.encode())
    if scalars:
        values = b"".join(_length_delimited(1, _length_delimited(1, tag.encode())
                                            + _field(2, 5, struct.pack("<f", value)))
                          for tag, value in scalars.items())
        body += _length_delimited(5, values)
    return body


def record(payload: bytes) -> bytes:
    """``payload`` in TFRecord framing."""
    length = struct.pack("<Q", len(payload))
    return (length + struct.pack("<I", _masked(crc32c(length))) + payload
            + struct.pack("<I", _masked(crc32c(payload))))


def scalars_of(entry: dict) -> tuple[int, dict[str, float]]:
    """The step and the numeric fields of one ``metrics.jsonl`` record, tagged by method."""
    prefix = f"{entry['method']}/" if "method" in entry else ""
    values = {f"{prefix}{k}": float(v) for k, v in entry.items()
              if k not in ("step", "method") and isinstance(v, (int, float))
              and not isinstance(v, bool)}
    return int(entry.get("step", 0)), values


class EventWriter:
    """Appends scalar events to a new event file in ``log_dir``."""

    def __init__(self, log_dir: str | os.PathLike):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self.path = self.log_dir / f"events.out.tfevents.{int(now)}.{socket.gethostname()}"
        with open(self.path, "ab") as f:
            f.write(record(event(now, 0, file_version="brain.Event:2")))

    def write(self, entries: Iterable[dict]) -> None:
        """Writes every entry's numeric fields as scalars at its step."""
        with open(self.path, "ab") as f:
            for entry in entries:
                step, values = scalars_of(entry)
                if values:
                    f.write(record(event(time.time(), step, values)))
            f.flush()


class MetricsMirror:
    """Follows ``<run_dir>/metrics.jsonl`` in a thread and mirrors new records to TensorBoard.

    Use as a context manager around a run; on exit the records not yet mirrored are written.
    """

    def __init__(self, run_dir: str | os.PathLike, *, interval: float = 2.0):
        self.source = Path(run_dir) / "metrics.jsonl"
        self.writer = EventWriter(Path(run_dir) / "tensorboard")
        self.interval = interval
        self._offset = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def _drain(self) -> None:
        with self._lock:
            self._drain_unlocked()

    def _drain_unlocked(self) -> None:
        if not self.source.exists():
            return
        if self.source.stat().st_size < self._offset:  # rewritten shorter (a resume): restart
            self._offset = 0
        with open(self.source) as f:
            f.seek(self._offset)
            lines = []
            while True:
                line = f.readline()
                if not line.endswith("\n"):  # a record being written: read it next time
                    break
                lines.append(line)
                self._offset = f.tell()
        self.writer.write(json.loads(line) for line in lines if line.strip())

    def _follow(self) -> None:
        while not self._stop.wait(self.interval):
            self._drain()

    def __enter__(self) -> MetricsMirror:
        if self.source.exists():  # a resumed run: mirror from the start into a new file
            self._offset = 0
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._drain()
