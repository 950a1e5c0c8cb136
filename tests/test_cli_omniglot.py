"""The Omniglot MAML experiment runs end to end through the CLI (tiny config, real data)."""

from __future__ import annotations

import json

import pytest
from omniglot_data import SHARED_DATA, shared_compilation_cache, shared_omniglot

from metajax import cli

TINY = ["num_steps=2", "pretrain_steps=2", "pretrain_batch=8", "meta_batch=2", "n_way=2",
        "k_shot=1", "n_query=1", "eval_n_query=2", "features=4", "test_tasks=6", "val_tasks=2",
        "eval_steps=1", "val_every=2", "log_every=2", "steps_per_call=1", "baseline_lrs=0.1",
        "baseline_head_lrs=0.1", "baseline_head_steps=5", "eval_chunk=2",
        "cross_domain=false"]


@pytest.fixture(scope="module")
def omniglot_cache(tmp_path_factory):
    return shared_omniglot(tmp_path_factory)[1]  # skips without the data


@pytest.fixture(scope="module", autouse=True)
def xla_cache(tmp_path_factory):
    yield from shared_compilation_cache(tmp_path_factory)


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
    assert list(summary["results"]) == ["maml", "pretrained", "baseline", "scratch"]
    for method, row in summary["results"].items():
        # Chen et al.'s Baseline fits a new head: one column, the most-adapted.
        assert list(row) == (["1"] if method == "baseline" else ["0", "1"])
        assert all(cell["n"] == 6 and 0.0 <= cell["mean"] <= 1.0 for cell in row.values())
    # The pre-trained rows come from global-label classification over all 4112 classes.
    baseline = summary["baseline"]
    assert baseline["pretraining"] == {"labels": "global", "classes": 4112, "steps": 2,
                                       "batch": 8, "lr": 1e-3, "augment": None}
    assert baseline["head"] == "linear" and baseline["head_lr"] == 0.1
    assert baseline["column"] == "1" and set(baseline["head_lr_search"]) == {"0.1"}
    pre = [r for r in records if r["method"] == "pretrained"]
    assert [r["step"] for r in pre] == [2] and 0.0 <= pre[0]["accuracy"] <= 1.0
    assert pre[0]["tasks_per_s"] > 0 and "val_accuracy" not in pre[0]
    assert maml[0]["train_seconds"] > 0 and pre[0]["train_seconds"] > 0
    assert summary["train_seconds"] == {"maml": maml[0]["train_seconds"],
                                        "pretrained": pre[0]["train_seconds"]}
    assert summary["dataset"]["train"] == {"name": "omniglot/vinyals/train", "classes": 4112}
    assert summary["dataset"]["val"]["classes"] == 688
    assert summary["episode"] == {"n_way": 2, "k_shot": 1, "n_query": 1, "eval_n_query": 2,
                                  "train_way": 2}
    assert "cross_domain" not in summary
    for png in ("learning_curve.png", "accuracy_vs_time.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "Held-out query accuracy" in printed and "| maml |" in printed
    assert "| baseline | – |" in printed


def test_omniglot_maml_is_listed(capsys):
    assert cli.main(["list"]) == 0
    assert "omniglot_maml" in capsys.readouterr().out
