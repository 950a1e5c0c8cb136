"""A run killed (SIGKILL) or interrupted (Ctrl-C) and resumed ends bit-identical to an
uninterrupted one."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flax import serialization

ARGS = ["--set", "num_steps=30000", "--set", "pretrain_steps=3000", "--set", "val_every=3000",
        "--set", "log_every=1000", "--set", "steps_per_call=500", "--set", "test_tasks=50",
        "--set", "val_tasks=20", "--set", "meta_batch=4", "--no-progress"]


def _cmd(*extra):
    return [sys.executable, "-m", "metajax.cli", "run", "linear_regression", *extra]


def _final_leaves(run: Path, phase: str) -> list[np.ndarray]:
    files = sorted((run / "checkpoints" / phase).glob("ckpt-*.msgpack"))
    payload = serialization.msgpack_restore(files[-1].read_bytes())
    return [payload["leaves"][str(i)] for i in range(len(payload["leaves"]))]


def _assert_same_run(a: Path, b: Path):
    for phase in ("maml", "pretrained"):
        for x, y in zip(_final_leaves(a, phase), _final_leaves(b, phase), strict=True):
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (a, b))
    assert sa["results"] == sb["results"] and sa["best_val_step"] == sb["best_val_step"]
    steps = lambda r: [(x["method"], x["step"]) for x in map(json.loads, (r / "metrics.jsonl")  # noqa: E731
                                                              .read_text().splitlines())]
    assert steps(a) == steps(b)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    subprocess.run(_cmd("--out", str(out), *ARGS), check=True, capture_output=True)
    return out


def _start_and_stop(out: Path, sig: int) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(_cmd("--out", str(out), *ARGS), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ckpts = out / "checkpoints" / "maml"
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpts.exists() and any(ckpts.glob("ckpt-*"))):
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be stopped"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(reference, tmp_path):
    out = tmp_path / "run"
    killed = _start_and_stop(out, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()
    refused = subprocess.run(_cmd("--out", str(out), *ARGS), capture_output=True, text=True)
    assert refused.returncode != 0 and "--resume" in refused.stderr
    subprocess.run(_cmd("--resume", str(out), "--no-progress"), check=True, capture_output=True)
    _assert_same_run(reference, out)


@pytest.mark.slow
def test_ctrl_c_saves_and_resume_is_bit_identical(reference, tmp_path):
    out = tmp_path / "run"
    stopped = _start_and_stop(out, signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr
    assert "checkpoint saved at step" in stopped.stderr and "--resume" in stopped.stderr
    subprocess.run(_cmd("--resume", str(out), "--no-progress"), check=True, capture_output=True)
    _assert_same_run(reference, out)


@pytest.mark.slow
def test_resume_with_edited_config_is_refused(tmp_path):
    out = tmp_path / "run"
    _start_and_stop(out, signal.SIGKILL)
    config = json.loads((out / "config.json").read_text())
    config["config"]["inner_lr"] = 0.5
    (out / "config.json").write_text(json.dumps(config))
    proc = subprocess.run(_cmd("--resume", str(out), "--no-progress"), capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "another configuration" in proc.stderr
