"""The learned-optimizer experiments run end to end from the CLI, and resume exactly."""

import dataclasses
import json

import numpy as np
import pytest

from metajax import cli

TINY = ["outer_steps=6", "n_tasks=2", "num_steps=4", "truncation=2", "val_every=3",
        "log_every=3", "steps_per_call=3", "test_tasks=6", "val_tasks=4", "hidden=4",
        "baseline_lrs=0.01,0.1", "horizons=1,2"]


def _run(name, out, overrides, *extra):
    return cli.main(["run", name, "--out", str(out), "--no-progress", *extra,
                     *sum((["--set", s] for s in overrides), [])])


@pytest.mark.parametrize("name,extra", [
    ("lopt_quadratics", ["estimator=pes"]),
    pytest.param("lopt_linear_regression", ["optimizer=adam_schedule", "num_knots=2",
                                            "meta_loss=final"], marks=pytest.mark.slow),
    pytest.param("lopt_digits_mlp", ["optimizer=lstm", "estimator=es", "batch_size=8",
                                     "mlp_hidden=4"], marks=pytest.mark.slow),
])
def test_lopt_experiments_run_with_tuned_baselines(name, extra, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(name, out, TINY + extra) == 0
    summary = json.loads((out / "summary.json").read_text())
    learned = json.loads((out / "config.json").read_text())["config"]["optimizer"]
    assert {learned, "sgd", "momentum", "adam"} <= set(summary["results"])
    for row in summary["results"].values():
        assert list(row) == ["1x", "2x"] and all(c["n"] == 6 for c in row.values())
    assert set(summary["tuned_lrs"].values()) <= {0.01, 0.1}
    if name != "lopt_digits_mlp":  # the closed-form limit: nothing trains below it
        best = summary["results"]["optimum"]["1x"]["mean"]
        assert all(row["1x"]["mean"] >= best - 1e-6 for row in summary["results"].values())
    else:
        assert set(summary["final_test_loss"]) == {learned, "sgd", "momentum", "adam"}
    # the paired comparison is task by task on the same tasks: its mean log-ratio is the
    # difference of the mean log losses
    logs = summary["log10_final_loss"]
    for base in ("sgd", "momentum", "adam"):
        for h in ("1x", "2x"):
            got = summary["paired"][base][h]
            assert got["log10_ratio"]["mean"] == pytest.approx(
                logs[learned][h]["mean"] - logs[base][h]["mean"], abs=1e-5)
            assert got["diff"]["mean"] == pytest.approx(
                summary["results"][learned][h]["mean"] - summary["results"][base][h]["mean"],
                rel=1e-4, abs=1e-6)
            assert got["frac_lower"] in {i / 6 for i in range(7)}
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert f"| {learned} |" in printed and "| adam | " in printed.split("against")[-1]


def test_paired_comparison_counts_the_tasks_where_the_learned_optimizer_ends_lower():
    from metajax._src.experiment.lopt_run import paired_comparison

    finals = {"mlp": {"1x": [0.01, 0.1, 1.0, 10.0]}, "adam": {"1x": [0.1, 0.03, 3.0, 1.0]}}
    got = paired_comparison(finals, "mlp")["adam"]["1x"]
    assert got["frac_lower"] == 0.5
    assert got["diff"]["mean"] == pytest.approx((-0.09 + 0.07 - 2.0 + 9.0) / 4)
    assert got["log10_ratio"]["mean"] == pytest.approx(
        (-1 + np.log10(0.1 / 0.03) - np.log10(3.0) + 1) / 4)
    assert got["log10_ratio"]["n"] == 4


@pytest.mark.slow  # meta_train's resume has fast tests in test_training.py
def test_a_continued_run_equals_an_uninterrupted_one(tmp_path):
    # the outer state (theta, Adam, the estimator's inner runs) and the key stream are
    # checkpointed: training 3 steps, then on to 6 from the checkpoint, is training 6 at once
    module = cli.load_experiment("lopt_quadratics")
    config = cli.apply_overrides(module.Config(), TINY)
    whole = module.main(config, tmp_path / "whole", progress=False)
    module.main(dataclasses.replace(config, outer_steps=3), tmp_path / "part", progress=False)
    part = module.main(config, tmp_path / "part", progress=False)
    assert part["results"] == whole["results"] and part["best_step"] == whole["best_step"]


def test_bad_choices_are_named_before_work_starts(tmp_path, capsys):
    assert _run("lopt_quadratics", tmp_path / "a", TINY + ["estimator=sgd"]) == 2
    assert "estimator: expected one of ('tbptt', 'es', 'pes'); got 'sgd'" in (
        capsys.readouterr().err)
    assert _run("lopt_quadratics", tmp_path / "b", TINY + ["truncation=3"]) == 2
    assert "truncation: expected a divisor of num_steps (4); got 3" in capsys.readouterr().err


@pytest.mark.slow  # the Omniglot loader has fast tests of its own (test_data_omniglot.py)
def test_lopt_omniglot_mlp_trains_on_omniglot_images(tmp_path, capsys):
    # the official zip layout with random images: the experiment's data path end to end
    from omniglot_data import write_fake_omniglot

    write_fake_omniglot(tmp_path / "data")
    data = [f"data_root={tmp_path / 'data'}", f"cache_dir={tmp_path / 'cache'}", "n_classes=3",
            "batch_size=8", "mlp_hidden=4", "image_size=8"]
    assert _run("lopt_omniglot_mlp", tmp_path / "run", TINY + data) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary["final_test_loss"]) == {"mlp", "sgd", "momentum", "adam"}
    assert "optimum" not in summary["results"]
    capsys.readouterr()
    assert _run("lopt_omniglot_mlp", tmp_path / "bad", TINY + data[:2]
                + ["n_classes=3", "batch_size=100"]) == 2
    assert "batch_size: expected at most 15 * n_classes = 45 (the training images); got 100" in (
        capsys.readouterr().err)
