"""The Omniglot MAML experiment runs end to end through the CLI (tiny config, real data)."""

from __future__ import annotations

import json

import pytest
from omniglot_data import SHARED_DATA, shared_omniglot

from metajax import cli

TINY = ["num_steps=2", "pretrain_steps=2", "meta_batch=2", "n_way=2", "k_shot=1", "n_query=1",
        "eval_n_query=2", "features=4", "test_tasks=6", "val_tasks=2", "eval_steps=1",
        "val_every=2", "log_every=2", "steps_per_call=2", "baseline_lrs=0.1", "eval_chunk=4",
        "cross_domain=false"]


@pytest.fixture(scope="module")
def omniglot_cache(tmp_path_factory):
    return shared_omniglot(tmp_path_factory)[1]  # skips without the data


def test_omniglot_maml_runs_end_to_end(omniglot_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("METAJAX_COMPILATION_CACHE", "")  # no persistent XLA cache from a test
    out = tmp_path / "run"
    overrides = [*TINY, f"data_root={SHARED_DATA}", f"cache_dir={omniglot_cache}"]
    assert cli.main(["run", "omniglot_maml", "--out", str(out), "--no-progress",
                     *sum((["--set", s] for s in overrides), [])]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["experiment"] == "omniglot_maml" and config["config"]["n_way"] == 2
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    maml = [r for r in records if r["method"] == "maml"]
    assert [r["step"] for r in maml] == [2]
    assert 0.0 <= maml[0]["val_accuracy"] <= 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "accuracy" and summary["num_test_tasks"] == 6
    assert set(summary["results"]) == {"maml", "pretrained", "scratch"}
    for row in summary["results"].values():
        assert list(row) == ["0", "1"]
        assert all(cell["n"] == 6 and 0.0 <= cell["mean"] <= 1.0 for cell in row.values())
    assert summary["dataset"]["train"] == {"name": "omniglot/vinyals/train", "classes": 4112}
    assert summary["dataset"]["val"]["classes"] == 688
    assert summary["episode"] == {"n_way": 2, "k_shot": 1, "n_query": 1, "eval_n_query": 2,
                                  "train_way": 2}
    assert "cross_domain" not in summary
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "Held-out query accuracy" in printed and "| maml |" in printed


def test_omniglot_maml_is_listed(capsys):
    assert cli.main(["list"]) == 0
    assert "omniglot_maml" in capsys.readouterr().out
