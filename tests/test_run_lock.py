"""One writer per run directory; workers of a killed launcher stop."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from metajax import cli
from metajax._src.experiment.run_lock import RunLock, RunLockedError


@pytest.fixture
def live_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_holder_is_refused_and_a_stale_lock_taken_over(tmp_path, live_process):
    import socket

    lock = tmp_path / ".lock"
    lock.write_text(f"{live_process.pid} {socket.gethostname()}\n")
    with pytest.raises(RunLockedError, match=f"pid {live_process.pid}"):
        RunLock(tmp_path).__enter__()
    with pytest.raises(RunLockedError):
        RunLock(tmp_path).check_free()
    lock.write_text(f"{_dead_pid()} {socket.gethostname()}\n")  # its writer was killed
    with RunLock(tmp_path):
        assert lock.read_text().split()[0] == str(os.getpid())
    assert not lock.exists()  # released


def test_the_cli_refuses_a_directory_another_process_writes(tmp_path, live_process, capsys):
    import socket

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"experiment": "linear_regression",
                                                 "config": {}}))
    (out / ".lock").write_text(f"{live_process.pid} {socket.gethostname()}\n")
    for args in (["--resume", str(out)], ["--out", str(out), "--overwrite"]):
        assert cli.main(["run", "linear_regression", "--no-progress", *args]) == 2
        err = capsys.readouterr().err
        assert f"is being written by another metajax process (pid {live_process.pid})" in err
    assert (out / "config.json").exists()  # --overwrite removed nothing


@pytest.mark.parametrize("text,message", [
    ("{not json", "config.json is not valid JSON"),
    ('{"experiment": "linear_regression"}', 'config.json has no "config" object'),
    ('{"experiment": "linear_regression", "config": {"num_steps": "many"}}',
     "num_steps: expected an int; got 'many'"),
    ('{"experiment": "sinusoid_maml", "config": {}}', "that run is experiment 'sinusoid_maml'"),
])
def test_a_damaged_run_config_is_a_one_line_error(text, message, tmp_path, capsys):
    (tmp_path / "config.json").write_text(text)
    assert cli.main(["run", "linear_regression", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.slow
def test_workers_stop_when_their_launcher_is_killed(tmp_path):
    """kill -9 of the ``--processes 2`` launcher: its workers stop (process 0 checkpoints)
    instead of running on beside a ``--resume``, which then completes the run."""
    out = tmp_path / "run"
    overrides = sum((["--set", s] for s in [
        "num_steps=100000", "pretrain_steps=4", "meta_batch=4", "test_tasks=8", "val_tasks=4",
        "val_every=200", "log_every=100", "steps_per_call=50"]), [])
    launcher = subprocess.Popen([sys.executable, "-m", "metajax.cli", "run", "linear_regression",
                                 "--out", str(out), "--no-progress", "--processes", "2",
                                 *overrides], start_new_session=True,
                                stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    children = [int(p) for p in subprocess.run(
        ["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()]
    assert len(children) == 2
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait()
    deadline = time.monotonic() + 120
    while any(_running(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_running(p) for p in children)
    assert list((out / "checkpoints" / "maml").glob("ckpt-*.msgpack"))
    assert not (out / ".lock").exists() or not RunLock(out)._holder()  # stale at most


def _running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
