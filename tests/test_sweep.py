"""Sweeps: every vmapped configuration trains exactly as it would alone."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from metajax import cli
from metajax.experiment import SweepProblem, grid_combinations, meta_train, vmapped_sweep

LOSS = metajax.losses.mse(lambda p, x: x @ p["w"] + p["b"])
SAMPLE = functools.partial(metajax.tasks.linear_regression, n_tasks=4, k_shot=3, n_query=5,
                           dim=2, x_range=(-1.0, 1.0))


def _init(key):
    return {"w": 0.1 * jax.random.normal(key, (2, 1)), "b": jnp.zeros((1,))}


def _learner(inner_lr, outer_lr):
    return metajax.maml(LOSS, optax.adam(outer_lr), inner_steps=1, inner_lr=inner_lr)


PROBLEM = SweepProblem(
    make_learner=lambda h: _learner(h["inner_lr"], h["outer_lr"]), init_fn=_init,
    sample_train=SAMPLE, sample_test=lambda seed: SAMPLE(metajax.tasks.split_key(seed, "test")),
    loss_fn=LOSS, eval_lr=lambda h: h["inner_lr"], num_steps=12)


def test_grid_combinations_cover_grid_times_seeds():
    combos = grid_combinations({"a": (1, 2), "b": (0.5,)}, [7, 8])
    assert combos == [{"a": 1, "b": 0.5, "seed": 7}, {"a": 1, "b": 0.5, "seed": 8},
                      {"a": 2, "b": 0.5, "seed": 7}, {"a": 2, "b": 0.5, "seed": 8}]


@pytest.mark.slow
def test_each_vmapped_config_equals_its_own_run():
    combos = grid_combinations({"inner_lr": (0.05, 0.2), "outer_lr": (0.01,)}, [0, 3])
    out = vmapped_sweep(PROBLEM, combos, eval_steps=(0, 2), steps_per_call=5, progress=False)
    assert out["per_task"]["loss"].shape == (4, 2, 4)
    for i, combo in enumerate(combos):
        learner = _learner(combo["inner_lr"], combo["outer_lr"])
        root = jax.random.PRNGKey(combo["seed"])
        alone = meta_train(learner.step, learner.init(_init(jax.random.fold_in(root, 1))),
                           SAMPLE, key=jax.random.fold_in(root, 0), num_steps=12,
                           tasks_per_step=4, steps_per_call=5, log_every=12, progress=False)
        evaluator = metajax.make_evaluator(LOSS, steps=(0, 2), lr=combo["inner_lr"])
        expected = evaluator(alone.state.params, PROBLEM.sample_test(combo["seed"]))["loss"]
        np.testing.assert_allclose(out["per_task"]["loss"][i], expected, rtol=2e-4, atol=1e-5)
    # different learning rates really give different results
    assert not np.allclose(out["per_task"]["loss"][0, 1], out["per_task"]["loss"][2, 1])


TINY = ["--set", "num_steps=6", "--set", "meta_batch=3", "--set", "test_tasks=6",
        "--set", "steps_per_call=3", "--set", "hidden=8", "--set", "eval_n_query=5"]


@pytest.mark.parametrize("mode", ["vmapped", pytest.param("sequential", marks=pytest.mark.slow)])
def test_cli_sweep_writes_table_and_plot(tmp_path, capsys, mode):
    extra = ["--sequential", "--set", "pretrain_steps=3", "--set", "val_tasks=4",
             "--set", "val_every=3", "--set", "log_every=3", "--set", "plot_tasks=0"] \
        if mode == "sequential" else []
    out = tmp_path / "sweep"
    seeds = 2 if mode == "vmapped" else 1  # sequential runs compile each run: keep it short
    assert cli.main(["sweep", "sinusoid_maml", "--grid", "inner_lr=0.01,0.1", "--seeds",
                     str(seeds), "--out", str(out), "--no-progress", *TINY, *extra]) == 0
    result = json.loads((out / "sweep.json").read_text())
    assert result["mode"] == mode
    assert [r["inner_lr"] for r in result["rows"]] == [0.01, 0.1]
    assert all(r["seeds"] == seeds and r["10"]["n"] + r["10"]["nonfinite"] == 6 * seeds
               for r in result["rows"])
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert f"| 0.1 | {seeds} |" in capsys.readouterr().out


def test_cli_sweep_rejects_unknown_key(tmp_path, capsys):
    assert cli.main(["sweep", "sinusoid_maml", "--grid", "nope=1,2", "--out", str(tmp_path)]) == 2
    assert "expected KEY=V1,V2" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--grid", "inner_lr=0.01,0.01"], "inner_lr repeats 0.01; each configuration once"),
    (["--grid", "inner_lr=0.01,1e-2"], "inner_lr repeats 0.01"),
    (["--grid", "inner_lr="], "with no empty value"),
    (["--grid", "inner_lr=0.01,,0.1"], "with no empty value"),
    (["--grid", "inner_lr=0.01", "--grid", "inner_lr=0.1"], "inner_lr is given twice"),
    (["--grid", "inner_lr=0.01,0.1", "--seeds", "0"], "--seeds must be >= 1; got 0"),
])
def test_cli_sweep_refuses_duplicate_or_empty_values_before_work(tmp_path, capsys, argv,
                                                                 message):
    # a repeated value was reported as one configuration with twice the seeds
    out = tmp_path / "sweep"
    assert cli.main(["sweep", "sinusoid_maml", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()  # nothing written


SEQUENTIAL = ["--sequential", "--set", "pretrain_steps=3", "--set", "val_tasks=4",
              "--set", "val_every=3", "--set", "log_every=3", "--set", "plot_tasks=0"]


@pytest.mark.slow
def test_cli_sweep_in_processes_equals_the_sequential_sweep(tmp_path, capsys):
    """--processes 2: the runs of a sequential sweep side by side, one pinned single-threaded
    process each; the same table as running them one after another in this process."""
    common = ["sweep", "sinusoid_maml", "--grid", "inner_lr=0.001,0.01", "--seeds", "2",
              "--no-progress", *TINY, *SEQUENTIAL]
    assert cli.main([*common, "--out", str(tmp_path / "one")]) == 0
    assert cli.main([*common, "--processes", "2", "--out", str(tmp_path / "two")]) == 0
    one, two = (json.loads((tmp_path / d / "sweep.json").read_text()) for d in ("one", "two"))
    assert two["processes"] == 2 and len(two["rows"]) == len(one["rows"]) == 2
    for a, b in zip(one["rows"], two["rows"], strict=True):
        assert a["inner_lr"] == b["inner_lr"] and a["seeds"] == b["seeds"] == 2
        for step in ("0", "1", "5", "10"):
            np.testing.assert_allclose(b[step]["mean"], a[step]["mean"], rtol=1e-5)
            np.testing.assert_allclose(b[step]["seed_sd"], a[step]["seed_sd"], rtol=1e-4)
    assert one["rows"][0]["1"]["mean"] != one["rows"][1]["1"]["mean"]
    for i in range(4):  # each run is a run directory of its own, with its log
        run = tmp_path / "two" / "runs" / f"run{i:03d}"
        assert (run / "summary.json").exists() and (run / "run.log").exists()
    assert "2 at a time" in capsys.readouterr().err


def test_cli_sweep_in_processes_reports_bad_input_and_failed_runs(tmp_path, capsys):
    vmappable = ["sweep", "sinusoid_maml", "--grid", "inner_lr=0.001,0.01", "--no-progress",
                 "--out", str(tmp_path / "a"), *TINY]
    assert cli.main([*vmappable, "--processes", "2"]) == 2
    assert "add --sequential" in capsys.readouterr().err
    assert cli.main([*vmappable, "--sequential", "--processes", "0"]) == 2
    assert "must be >= 1" in capsys.readouterr().err
    # a bad config is refused before any run starts
    assert cli.main(["sweep", "sinusoid_maml", "--grid", "inner_lr=0.001,0.01", "--no-progress",
                     "--out", str(tmp_path / "b"), *TINY, *SEQUENTIAL, "--set", "meta_batch=0",
                     "--processes", "2"]) == 2
    assert "meta_batch: expected an int >= 1" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    # A run that fails (its loss diverges): named, with its log.
    assert cli.main(["sweep", "sinusoid_maml", "--grid", "inner_lr=1e30,1e31", "--no-progress",
                     "--out", str(tmp_path / "c"), *TINY, *SEQUENTIAL, "--processes", "2"]) == 1
    err = capsys.readouterr().err
    assert "run 0 exited with" in err and "run000/run.log" in err
    assert "non-finite meta-training loss" in (
        tmp_path / "c" / "runs" / "run000" / "run.log").read_text()


@pytest.mark.slow
def test_cli_sweep_in_processes_ctrl_c_leaves_resumable_runs(tmp_path):
    """Ctrl-C reaches every run of a ``--processes`` sweep: each checkpoints and stops, the
    sweep exits with 130 and names how to continue each run, and ``metajax run --resume``
    finishes one."""
    import os
    import signal
    import subprocess
    import sys
    import time

    overrides = sum((["--set", s] for s in [
        "num_steps=60000", "pretrain_steps=3", "meta_batch=4", "test_tasks=8",
        "val_tasks=4", "val_every=1000", "log_every=5000", "steps_per_call=50",
        "eval_n_query=7", "hidden=8", "plot_tasks=0"]), [])  # long enough to interrupt
    out = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "metajax.cli", "sweep", "sinusoid_maml",
                             "--grid", "inner_lr=0.001,0.01", "--sequential", "--processes",
                             "2", "--no-progress", "--out", str(out), *overrides],
                            start_new_session=True, stderr=subprocess.PIPE, text=True)
    maml = [out / "runs" / f"run{i:03d}" / "checkpoints" / "maml" for i in range(2)]
    deadline = time.monotonic() + 300
    while (not all(d.is_dir() and any(d.glob("ckpt-*")) for d in maml)
           and proc.poll() is None and time.monotonic() < deadline):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    for i in range(2):
        assert f"run {i} stopped by Ctrl-C" in err, err
        assert f"metajax run sinusoid_maml --resume {out / 'runs' / f'run{i:03d}'}" in err
    assert not (out / "sweep.json").exists()
    run = out / "runs" / "run001"
    assert cli.main(["run", "sinusoid_maml", "--resume", str(run), "--no-progress"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["method"] == "maml"]
    assert steps[-1] == 60000 and steps == sorted(set(steps))  # no record twice
