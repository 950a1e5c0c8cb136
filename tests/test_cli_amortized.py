"""The neural-process experiments run end to end from the CLI, with TensorBoard scalars."""

import json

import pytest
from test_tensorboard import read_events

from metajax import cli

TINY = ["num_steps=6", "batch=4", "val_every=3", "log_every=3", "steps_per_call=3",
        "test_tasks=20", "val_tasks=8", "encoder=8,8", "decoder=8", "latent_dim=4",
        "num_samples=2", "plot_tasks=1", "num_heads=2"]
GP = TINY + ["grid=50", "max_context=6", "max_extra_targets=4"]


def _run(name, out, overrides, *extra):
    return cli.main(["run", name, "--out", str(out), "--no-progress", *extra,
                     *sum((["--set", s] for s in overrides), [])])


@pytest.mark.parametrize("name,model", [
    ("gp_cnp", "cnp"),
    pytest.param("gp_np", "np", marks=pytest.mark.slow),  # the models: tests/test_amortized.py
    pytest.param("gp_anp", "anp", marks=pytest.mark.slow),
])
def test_gp_experiments_run_with_the_oracle_row(name, model, tmp_path, capsys):
    out = tmp_path / "run"
    extra = ["self_attention=1"] if name == "gp_anp" else []
    assert _run(name, out, GP + extra, "--tensorboard") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["results"]) == {model, "gp_oracle"} and summary["metric"] == "log_lik"
    assert summary["results"][model]["n"] == 20
    # the oracle is the best predictive: no model beats it
    assert summary["results"]["gp_oracle"]["mean"] > summary["results"][model]["mean"]
    assert (out / "tasks.png").stat().st_size > 0
    table = capsys.readouterr().out
    assert "| gp_oracle |" in table and "log_lik | mse" in table
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    events = read_events(next((out / "tensorboard").glob("events.out.tfevents.*")))
    assert [e[0] for e in events[1:]] == [r["step"] for r in records]
    assert events[-1][2][f"{model}/val_log_lik"] == pytest.approx(records[-1]["val_log_lik"])


@pytest.mark.slow
def test_sinusoid_cnp_reports_cnp_beside_maml_on_the_same_tasks(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run("sinusoid_cnp", out, TINY + ["maml_steps=4", "eval_n_query=7"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "mse" and list(summary["results"]["cnp"]) == ["0"]
    assert {"maml", "pretrained", "scratch"} <= set(summary["results"])
    maml = json.loads((out / "maml" / "summary.json").read_text())
    assert maml["num_test_tasks"] == summary["num_test_tasks"] == 20


def test_bad_model_name_is_a_clear_error_before_work_starts(tmp_path, capsys):
    assert _run("gp_cnp", tmp_path / "run", GP + ["model=gp"]) == 2
    assert "model: expected one of ('cnp', 'np', 'anp'); got 'gp'" in capsys.readouterr().err
