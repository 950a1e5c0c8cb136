"""Atomic, versioned checkpoints."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from metajax._src.experiment import checkpoint as ckpt_mod
from metajax._src.experiment.checkpoint import Checkpointer, CheckpointError

TREE = {"w": jnp.arange(6.0).reshape(2, 3), "n": jnp.int32(4), "key": jnp.array([1, 2], jnp.uint32)}


def _ckpt(tmp_path, fp="cfg", keep=3):
    return Checkpointer(tmp_path, config_fingerprint=fp, keep=keep)


def test_roundtrip_is_bit_exact_and_keeps_metadata(tmp_path):
    tree = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(5, 7)), jnp.float32),
            "n": jnp.int32(3)}
    _ckpt(tmp_path).save(7, tree, {"history": [{"step": 7, "loss": 0.25}], "best": None})
    step, restored, meta = _ckpt(tmp_path).restore_latest(tree)
    assert step == 7 and meta == {"history": [{"step": 7, "loss": 0.25}], "best": None}
    assert np.asarray(restored["w"]).tobytes() == np.asarray(tree["w"]).tobytes()


def test_keeps_only_the_newest(tmp_path):
    c = _ckpt(tmp_path, keep=2)
    for s in (1, 2, 3, 4):
        c.save(s, TREE)
    assert c.steps() == [3, 4]


def test_crash_mid_write_leaves_last_good_checkpoint(tmp_path, monkeypatch):
    c = _ckpt(tmp_path)
    c.save(1, TREE)

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        c.save(2, {**TREE, "w": TREE["w"] + 1})
    monkeypatch.undo()
    assert c.steps() == [1]
    assert sorted(os.listdir(tmp_path)) == [c.path(1).name]  # no temporary file left
    np.testing.assert_array_equal(c.restore_latest(TREE)[1]["w"], TREE["w"])


def test_corrupt_file_is_reported(tmp_path):
    c = _ckpt(tmp_path)
    path = c.save(1, TREE)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="corrupt"):
        c.restore_latest(TREE)


def test_altered_array_bytes_are_refused(tmp_path):
    # a file that still parses, with one exponent bit flipped in every float of one kernel
    c = _ckpt(tmp_path)
    w = jnp.asarray(np.random.default_rng(1).normal(size=(4, 5)), jnp.float32)
    path = c.save(3, {**TREE, "w": w})
    data, raw = bytearray(path.read_bytes()), np.asarray(w).tobytes()
    at = bytes(data).find(raw)
    assert at >= 0
    for i in range(3, len(raw), 4):  # little-endian float32: the high byte holds the exponent
        data[at + i] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{path.name} fails its checksum"):
        c.restore_latest({**TREE, "w": w})


def test_other_config_is_refused(tmp_path):
    _ckpt(tmp_path, fp="a").save(1, TREE)
    with pytest.raises(CheckpointError, match="another configuration"):
        _ckpt(tmp_path, fp="b").restore_latest(TREE)


def test_other_version_is_refused(tmp_path, monkeypatch):
    _ckpt(tmp_path).save(1, TREE)
    monkeypatch.setattr(ckpt_mod, "_version", lambda: "999.0")
    with pytest.raises(CheckpointError, match="written by metajax .* this is metajax 999.0"):
        _ckpt(tmp_path).restore_latest(TREE)


def test_other_structure_or_shape_is_refused(tmp_path):
    _ckpt(tmp_path).save(1, TREE)
    with pytest.raises(CheckpointError, match="another structure"):
        _ckpt(tmp_path).restore_latest({"w": TREE["w"]})
    with pytest.raises(CheckpointError, match=r"leaf \d+ is float32\[2, 3\]"):
        _ckpt(tmp_path).restore_latest({**TREE, "w": jnp.zeros((3, 2))})


def test_empty_directory_restores_nothing(tmp_path):
    assert _ckpt(tmp_path).restore_latest(TREE) is None
