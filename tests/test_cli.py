"""Every experiment runs end to end through the CLI with a tiny config."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from metajax import cli

TINY = {
    "sinusoid_maml": ["num_steps=6", "pretrain_steps=4", "meta_batch=3", "test_tasks=8",
                      "val_tasks=4", "val_every=3", "log_every=3", "steps_per_call=3",
                      "eval_n_query=7", "hidden=8,8", "plot_tasks=2", "baseline_lrs=0.01,0.1"],
    "linear_regression": ["num_steps=6", "pretrain_steps=4", "meta_batch=3", "test_tasks=8",
                          "val_tasks=4", "val_every=3", "log_every=3", "steps_per_call=3"],
    "sinusoid_imaml": ["num_steps=6", "pretrain_steps=4", "meta_batch=3", "test_tasks=8",
                       "val_tasks=4", "val_every=3", "log_every=3", "steps_per_call=3",
                       "eval_n_query=7", "hidden=8,8", "plot_tasks=2", "baseline_lrs=0.01,0.1",
                       "eval_steps=1,5,10", "inner_steps=3", "cg_steps=2"],
    "sinusoid_cavia": ["num_steps=6", "pretrain_steps=4", "meta_batch=3", "test_tasks=8",
                       "val_tasks=4", "val_every=3", "log_every=3", "steps_per_call=3",
                       "eval_n_query=7", "hidden=8,8", "plot_tasks=2", "baseline_lrs=0.01,0.1",
                       "num_context=2", "inner_steps=1"],
}
METHOD = {"sinusoid_imaml": "imaml", "sinusoid_cavia": "cavia"}  # the meta-learner if not maml
# The gradient-based zoo's sinusoid experiments: sinusoid_maml's overrides plus their own.
for _method, _extra in {"fomaml": [], "anil": [], "metasgd": [], "reptile": ["inner_steps=2"],
                        "mamlpp": ["inner_steps=2", "msl_anneal_steps=3",
                                   "first_order_until=3"]}.items():
    TINY[f"sinusoid_{_method}"] = TINY["sinusoid_maml"] + _extra
    METHOD[f"sinusoid_{_method}"] = _method


def test_list_shows_every_experiment(capsys):
    assert cli.main(["list"]) == 0
    listed = capsys.readouterr().out
    for name in TINY:
        assert name in listed


# The zoo's variants share sinusoid_maml's driver (their algorithms have their own tests): the
# fast suite runs the driver once per runner, the slow one every experiment.
RUNNERS = {"sinusoid_maml", "linear_regression", "sinusoid_imaml", "sinusoid_cavia"}


@pytest.mark.parametrize("name", [n if n in RUNNERS else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(TINY)])
def test_experiment_runs_end_to_end(name, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", name, "--out", str(out), "--no-progress",
                     *sum((["--set", s] for s in TINY[name]), [])]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["experiment"] == name and config["config"]["num_steps"] == 6
    method = METHOD.get(name, "maml")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["method"] == method] == [3, 6]
    assert "val_loss" in records[0]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["results"]) == {method, "pretrained", "scratch"}
    for row in summary["results"].values():
        assert list(row) == ["0", "1", "5", "10"]
        assert all(cell["n"] == 8 and cell["ci95"] > 0 for cell in row.values())
    # Before adaptation "scratch" is the same model at another random init: its 0-step loss
    # differs from the meta-learned one.
    assert summary["results"]["scratch"]["0"]["mean"] != summary["results"][method]["0"]["mean"]
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if name.startswith("sinusoid_"):
        assert (out / "tasks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert f"| {method} |" in printed and "10 steps" in printed


def test_bad_override_exits_with_valid_keys(tmp_path, capsys):
    code = cli.main(["run", "sinusoid_maml", "--set", "num_steps=fast", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "'num_steps' expects int; got 'fast'" in err and "inner_lr: float = 0.01" in err


def test_unknown_experiment_lists_available():
    with pytest.raises(SystemExit, match="Unknown experiment 'nope'.*sinusoid_maml"):
        cli.main(["run", "nope"])


def test_user_experiment_file_runs(tmp_path):
    module = tmp_path / "my_exp.py"
    module.write_text(
        "from __future__ import annotations\n"
        "import dataclasses, json\n"
        "@dataclasses.dataclass(frozen=True)\n"
        "class Config:\n"
        "    x: int = 1\n"
        "def main(config, out_dir, *, progress=True):\n"
        "    (out_dir / 'done.json').write_text(json.dumps({'x': config.x}))\n"
    )
    out = tmp_path / "out"
    assert cli.main(["run", str(module), "--set", "x=4", "--out", str(out)]) == 0
    assert json.loads((out / "done.json").read_text()) == {"x": 4}


def test_console_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "metajax.cli", "list"], capture_output=True,
                          text=True, cwd=Path(__file__).parent, check=False)
    assert proc.returncode == 0 and "sinusoid_maml" in proc.stdout


def _summary_numbers(summary: dict, prefix: str = "") -> dict[str, float]:
    """Every float of a summary (timings left out), keyed by its path."""
    out = {}
    for key, value in summary.items():
        path = f"{prefix}/{key}"
        if isinstance(value, dict):
            out.update(_summary_numbers(value, path))
        elif isinstance(value, float) and "seconds" not in path:
            out[path] = value
    return out


@pytest.mark.slow
def test_processes_run_equals_one_process(tmp_path, capsys):
    """``--processes 2``: two single-threaded workers split every meta-batch and share out the
    evaluation episodes; the run directory and table equal one process's."""
    overrides = sum((["--set", s] for s in TINY["sinusoid_maml"] + ["meta_batch=4"]), [])
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli.main(["run", "sinusoid_maml", "--out", str(one), "--no-progress", *overrides]) == 0
    capsys.readouterr()
    assert cli.main(["run", "sinusoid_maml", "--out", str(two), "--no-progress",
                     "--processes", "2", *overrides]) == 0
    assert "2 processes" in capsys.readouterr().err
    want = _summary_numbers(json.loads((one / "summary.json").read_text()))
    got = _summary_numbers(json.loads((two / "summary.json").read_text()))
    assert set(got) == set(want) and len(want) > 20
    for path, value in want.items():
        assert abs(got[path] - value) <= 1e-5 * max(1.0, abs(value)), path
    records = [(one / "metrics.jsonl").read_text(), (two / "metrics.jsonl").read_text()]
    steps = [[(json.loads(line)["method"], json.loads(line)["step"]) for line in r.splitlines()]
             for r in records]
    assert steps[0] == steps[1]  # written once, by process 0
    assert (two / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("flags, message", [
    (["--processes", "0"], "--processes must be >= 1"),
    (["--processes", "2", "--set", "meta_batch=3"], "must be a multiple of 2"),
])
def test_processes_bad_input(flags, message, tmp_path, capsys):
    assert cli.main(["run", "sinusoid_maml", "--out", str(tmp_path / "r"), *flags]) == 2
    assert message in capsys.readouterr().err


def _two_process_experiment(path, body: str):
    """An experiment file whose ``main`` runs ``body`` (indented code) in each process."""
    path.write_text(
        "from __future__ import annotations\n"
        "import dataclasses, os, signal\n"
        "import jax, numpy as np\n"
        "from jax.experimental import multihost_utils\n"
        "@dataclasses.dataclass(frozen=True)\n"
        "class Config:\n"
        "    x: int = 1\n"
        "def main(config, out_dir, *, progress=True):\n" + body)
    return path


def test_processes_failed_worker_stops_the_run(tmp_path, monkeypatch, capsys):
    """Process 1 fails while process 0 waits for it in a collective: the launcher reports
    process 1 and its log, and does not hang."""
    module = _two_process_experiment(tmp_path / "half_broken.py",
                                     "    if jax.process_index() == 1:\n"
                                     "        raise RuntimeError('worker one broke')\n"
                                     "    multihost_utils.process_allgather(np.ones(3))\n")
    monkeypatch.setattr(cli, "WORKER_GRACE_SECONDS", 3.0)
    out = tmp_path / "out"
    assert cli.main(["run", str(module), "--out", str(out), "--processes", "2"]) != 0
    assert "process 1 exited with 1; see" in capsys.readouterr().err
    assert "worker one broke" in (out / "process-1.log").read_text()


def test_processes_a_killed_worker_is_one_line_with_the_resume_command(tmp_path, capfd):
    """Process 1 is killed (SIGKILL) while process 0 waits for it in a collective: process 0
    says another process is gone and how to resume, the launcher names the signal; no
    traceback reaches the terminal."""
    module = _two_process_experiment(tmp_path / "half_killed.py",
                                     "    multihost_utils.process_allgather(np.ones(3))\n"
                                     "    if jax.process_index() == 1:\n"
                                     "        os.kill(os.getpid(), signal.SIGKILL)\n"
                                     "    multihost_utils.process_allgather(np.ones(3))\n")
    out = tmp_path / "out"
    assert cli.main(["run", str(module), "--out", str(out), "--processes", "2"]) == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    assert "another process of --processes 2 is gone" in err, err
    assert f"--resume {out} --processes 2" in err
    assert "process 1 was killed by SIGKILL; see" in err


@pytest.mark.slow
def test_processes_run_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    """Ctrl-C reaches every worker; process 0 checkpoints, and ``--resume DIR --processes 2``
    ends with the uninterrupted run's results."""
    import os
    import signal
    import time

    overrides = sum((["--set", s] for s in [
        "num_steps=900", "pretrain_steps=10", "meta_batch=4", "test_tasks=8", "val_tasks=4",
        "val_every=300", "log_every=100", "steps_per_call=50", "eval_n_query=7",
        "hidden=8,8", "plot_tasks=0", "baseline_lrs=0.01,0.1"]), [])
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert cli.main(["run", "sinusoid_maml", "--out", str(whole), "--no-progress",
                     "--processes", "2", *overrides]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "metajax.cli", "run", "sinusoid_maml",
                             "--out", str(cut), "--no-progress", "--processes", "2",
                             *overrides], start_new_session=True, stderr=subprocess.PIPE,
                            text=True)
    first = cut / "checkpoints" / "maml" / "ckpt-0000000300.msgpack"
    deadline = time.monotonic() + 300
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err and "--processes 2" in err
    assert cli.main(["run", "sinusoid_maml", "--resume", str(cut), "--no-progress",
                     "--processes", "2"]) == 0
    done = [json.loads((d / "summary.json").read_text()) for d in (whole, cut)]
    assert done[0]["results"] == done[1]["results"]
    steps = [[json.loads(line)["step"] for line in (d / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["method"] == "maml"] for d in (whole, cut)]
    assert steps[0] == steps[1] == list(range(100, 901, 100))


def _tiny_run(out, *extra):
    return cli.main(["run", "linear_regression", "--out", str(out), "--no-progress", *extra,
                     *sum((["--set", s] for s in TINY["linear_regression"]), [])])


def test_an_earlier_run_is_never_overwritten_silently(tmp_path, capsys):
    # results without checkpoints (an earlier finished or copied run): refused, untouched
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text('{"earlier": true}')
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "notes.txt").write_text("mine")
    assert _tiny_run(out) == 2
    err = capsys.readouterr().err
    assert f"--out {out} already holds a run (metrics.jsonl, summary.json)" in err
    assert "--overwrite" in err and "Traceback" not in err
    assert (out / "summary.json").read_text() == '{"earlier": true}'
    # --overwrite replaces the run's own files and nothing else
    assert _tiny_run(out, "--overwrite") == 0
    assert "earlier" not in (out / "summary.json").read_text()
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text()
            .splitlines()][0] != 1
    assert (out / "notes.txt").read_text() == "mine"
    # a finished run has checkpoints: the message offers --resume as well
    assert _tiny_run(out) == 2
    assert f"--resume {out}" in capsys.readouterr().err


def test_out_pointing_at_a_file_is_a_one_line_error(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert _tiny_run(target) == 2
    err = capsys.readouterr().err
    assert "that is a file, not a directory" in err and "Traceback" not in err


def test_non_finite_loss_says_what_was_kept_and_which_fields_to_change(tmp_path, capsys):
    assert _tiny_run(tmp_path / "run", "--set", "outer_lr=1e30") == 1
    err = capsys.readouterr().err
    assert "non-finite meta-training loss at step" in err
    assert "No checkpoint had been written yet" in err  # not "the last good one is kept"
    assert "--set outer_lr=3.33e+29" in err and "--set clip_grad_norm=1" in err
    assert "optax." not in err and "Traceback" not in err


def test_kept_names_the_newest_checkpoint(tmp_path):
    from metajax._src.experiment.checkpoint import Checkpointer
    from metajax._src.experiment.training import _kept

    ckpt = Checkpointer(tmp_path, config_fingerprint="x")
    assert "No checkpoint had been written yet" in _kept(ckpt)
    ckpt.save(30, {"w": np.zeros(2)})
    ckpt.save(60, {"w": np.zeros(2)})
    assert _kept(ckpt).startswith(f"The checkpoint of step 60 (the last good state) is kept in "
                                  f"{tmp_path}")


def test_ctrl_c_after_training_is_one_line_with_the_resume_command(tmp_path, capsys,
                                                                   monkeypatch):
    from metajax._src.experiment import plots

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "plot_learning_curve", interrupted)  # while plotting
    out = tmp_path / "run"
    assert _tiny_run(out) == 130
    err = capsys.readouterr().err
    assert "interrupted. The checkpoints are intact: maml at step 6" in err
    assert f"metajax run linear_regression --resume {out}" in err and "Traceback" not in err


def test_disk_full_says_what_is_intact_and_how_to_resume(tmp_path, capsys, monkeypatch):
    import errno

    from metajax._src.experiment import run_io

    real = run_io.write_json_atomic

    def full(path, obj):
        if str(path).endswith("summary.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, obj)

    monkeypatch.setattr(run_io, "write_json_atomic", full)
    out = tmp_path / "run"
    assert _tiny_run(out) == 1
    err = capsys.readouterr().err
    assert f"No space left on device ({out / 'summary.json'})" in err
    assert "The checkpoints are intact: maml at step 6" in err and "--resume" in err
    assert "Traceback" not in err


def test_missing_data_names_the_option(tmp_path, capsys):
    assert cli.main(["run", "lopt_omniglot_mlp", "--out", str(tmp_path / "r"), "--no-progress",
                     "--set", f"data_root={tmp_path / 'nowhere'}"]) == 2
    err = capsys.readouterr().err
    assert "--set data_root=DIR (or METAJAX_DATA)" in err and "Traceback" not in err


def test_one_broken_experiment_file_does_not_break_list(tmp_path, capsys, monkeypatch):
    mine = tmp_path / "experiments"
    mine.mkdir()
    (mine / "broken.py").write_text("import nonexistent_module_xyz\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["list"]) == 0
    captured = capsys.readouterr()
    assert "sinusoid_maml" in captured.out
    assert "skipped" in captured.err and "broken.py" in captured.err


def test_an_unwritable_out_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    import errno

    from metajax._src.experiment import run_io

    def read_only(path, obj):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(run_io, "write_json_atomic", read_only)
    assert _tiny_run(tmp_path / "ro") == 2
    err = capsys.readouterr().err
    assert f"--out {tmp_path / 'ro'}: cannot write there (Read-only file system)" in err
    assert "Traceback" not in err
