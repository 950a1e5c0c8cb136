"""Every Omniglot experiment of the zoo runs end to end through the CLI (tiny configs, real data).

Each test meta-trains for two steps on a 4-filter Conv4 and checks the run files; one
gradient-based experiment and the metric one also run the digits cross-domain evaluation.
The tests skip (with the reason) when the Omniglot data is absent.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
from omniglot_data import SHARED_DATA, shared_compilation_cache, shared_omniglot

from metajax import cli

# eval_chunk == val_tasks: validation and test chunks share one shape, so one compile each.
EPISODES = ["n_way=2", "k_shot=1", "n_query=1", "eval_n_query=2", "features=4",
            "test_tasks=6", "val_tasks=2", "val_every=2", "log_every=2", "steps_per_call=1",
            "eval_chunk=2", "num_steps=2", "cross_domain_way=2", "cross_domain_tasks=6"]
GRADIENT = [*EPISODES, "pretrain_steps=2", "pretrain_batch=8", "meta_batch=2", "eval_steps=1",
            "baseline_lrs=0.1", "baseline_head_lrs=0.1", "baseline_head_steps=5"]
GRADIENT_ROWS = ["pretrained", "baseline", "scratch"]
TINY = {
    "omniglot_fomaml": ("fomaml", GRADIENT),
    "omniglot_anil": ("anil", GRADIENT),
    "omniglot_metasgd": ("metasgd", GRADIENT),
    "omniglot_reptile": ("reptile", [*GRADIENT, "inner_steps=2"]),
}
CROSS_DOMAIN = {"omniglot_fomaml"}  # the gradient-based experiment that also runs digits
needs_sklearn = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                                   reason="the digits cross-domain evaluation needs scikit-learn")


@pytest.fixture(scope="module")
def omniglot_cache(tmp_path_factory):
    return shared_omniglot(tmp_path_factory)[1]  # skips without the data


@pytest.fixture(scope="module", autouse=True)
def xla_cache(tmp_path_factory):
    yield from shared_compilation_cache(tmp_path_factory)


def _run(name, overrides, out, cache, monkeypatch):
    monkeypatch.setenv("METAJAX_COMPILATION_CACHE", "")  # no persistent XLA cache from a test
    overrides = [*overrides, f"data_root={SHARED_DATA}", f"cache_dir={cache}"]
    assert cli.main(["run", name, "--out", str(out), "--no-progress",
                     *sum((["--set", s] for s in overrides), [])]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["experiment"] == name and config["config"]["n_way"] == 2
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    for png in ("learning_curve.png", "accuracy_vs_time.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return records, summary


def _check_cross_domain(summary, *, method, rows, steps, baselines):
    cross = summary["cross_domain"]
    assert cross["dataset"] == {"name": "digits", "classes": 10, "examples_per_class": 174}
    assert cross["episode"] == {"n_way": 2, "k_shot": 1, "n_query": 2}
    assert cross["metric"] == "accuracy" and cross["num_test_tasks"] == 6
    assert list(cross["results"]) == rows
    for name, row in cross["results"].items():
        assert list(row) == (steps[-1:] if name == "baseline" else steps)
        assert all(cell["n"] == 6 and 0.0 <= cell["mean"] <= 1.0 for cell in row.values())
    adv = cross["advantage"]
    assert adv["method"] == method and adv["baselines"] == baselines
    assert adv["steps"] == steps[-1] and set(adv["per_step"]) == set(steps)
    for domain in ("in_domain", "cross_domain"):
        assert adv[domain]["best_baseline"] in baselines
        table = summary["results"] if domain == "in_domain" else cross["results"]
        best = max(table[b][steps[-1]]["mean"] for b in baselines)
        assert adv[domain]["advantage"] == pytest.approx(table[method][steps[-1]]["mean"] - best)
    if adv["in_domain"]["advantage"] > 0:
        assert adv["retained"] == pytest.approx(adv["cross_domain"]["advantage"]
                                                / adv["in_domain"]["advantage"])
    else:
        assert adv["retained"] is None


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) for n in sorted(TINY)])
def test_gradient_experiment_runs_end_to_end(name, omniglot_cache, tmp_path, monkeypatch,
                                             capsys):
    method, overrides = TINY[name]
    cross = name in CROSS_DOMAIN
    if cross and importlib.util.find_spec("sklearn") is None:
        pytest.skip("the digits cross-domain evaluation needs scikit-learn")
    out = tmp_path / "run"
    records, summary = _run(name, [*overrides, f"cross_domain={str(cross).lower()}"], out,
                            omniglot_cache, monkeypatch)
    rows = [r for r in records if r["method"] == method]
    assert [r["step"] for r in rows] == [2]
    assert 0.0 <= rows[0]["val_accuracy"] <= 1.0
    assert [r["step"] for r in records if r["method"] == "pretrained"] == [2]
    assert summary["metric"] == "accuracy" and summary["num_test_tasks"] == 6
    assert list(summary["results"]) == [method, *GRADIENT_ROWS]
    for row_name, row in summary["results"].items():
        assert list(row) == (["1"] if row_name == "baseline" else ["0", "1"])
        assert all(cell["n"] == 6 and 0.0 <= cell["mean"] <= 1.0 for cell in row.values())
    assert summary["baseline"]["pretraining"]["classes"] == 4112
    if method == "reptile":  # adapts with its own inner optimizer in validation and test
        assert summary["adapt_optimizer"] == {"reptile": "own inner optimizer"}
        assert summary["inner_optimizer"] == "sgd"
    else:
        assert "adapt_optimizer" not in summary
    assert summary["dataset"]["test"] == {"name": "omniglot/vinyals/test", "classes": 1692}
    assert summary["episode"] == {"n_way": 2, "k_shot": 1, "n_query": 1, "eval_n_query": 2,
                                  "train_way": 2}
    printed = capsys.readouterr().out
    assert f"| {method} |" in printed
    if cross:
        _check_cross_domain(summary, method=method, rows=[method, *GRADIENT_ROWS],
                            steps=["0", "1"], baselines=GRADIENT_ROWS)
        assert "Cross-domain (digits)" in printed and "in-domain" in printed
    else:
        assert "cross_domain" not in summary


@needs_sklearn
def test_protonet_runs_end_to_end_with_cross_domain(omniglot_cache, tmp_path, monkeypatch,
                                                    capsys):
    overrides = [*EPISODES, "train_way=3", "meta_batch=1", "finetune_steps=3",
                 "finetune_lrs=0.1,1.0", "pretrain_steps=2", "pretrain_batch=8",
                 "baseline_head_lrs=0.1", "baseline_head_steps=5"]
    records, summary = _run("omniglot_protonet", overrides, tmp_path / "run", omniglot_cache,
                            monkeypatch)
    assert [r["step"] for r in records if r["method"] == "protonet"] == [2]
    assert summary["metric"] == "accuracy" and summary["num_test_tasks"] == 6
    rows = ["protonet", "scratch", "baseline++_raw", "baseline", "baseline++_meta"]
    assert list(summary["results"]) == rows
    for row in summary["results"].values():
        assert list(row) == ["0"] and row["0"]["n"] == 6
    assert summary["episode"] == {"n_way": 2, "k_shot": 1, "n_query": 1, "eval_n_query": 2,
                                  "train_way": 3}
    assert summary["chance"] == 0.5 and summary["options"] == {"distance": "sqeuclidean"}
    for row in summary["finetune"]["lr_search"].values():
        assert row["chosen_lr"] in (0.1, 1.0)
    # Chen et al.'s Baseline on the globally pre-trained Conv4 (all 4112 training classes).
    assert summary["baseline"]["pretraining"]["classes"] == 4112
    assert summary["baseline"]["head_lr"] == 0.1 and summary["baseline"]["column"] == "0"
    assert [r["step"] for r in records if r["method"] == "pretrained"] == [2]
    _check_cross_domain(summary, method="protonet", rows=rows, steps=["0"],
                        baselines=["scratch", "baseline++_raw", "baseline"])
    printed = capsys.readouterr().out
    assert "| protonet |" in printed and "Cross-domain" in printed


@pytest.mark.slow
def test_protomaml_runs_end_to_end(omniglot_cache, tmp_path, monkeypatch, capsys):
    overrides = [*EPISODES, "train_way=2", "meta_batch=2", "finetune_steps=3",
                 "finetune_lrs=0.1,1.0", "pretrain_steps=2", "pretrain_batch=8",
                 "baseline_head_lrs=0.1", "baseline_head_steps=5", "cross_domain=false",
                 "inner_steps=2"]
    records, summary = _run("omniglot_protomaml", overrides, tmp_path / "run", omniglot_cache,
                            monkeypatch)
    assert [r["step"] for r in records if r["method"] == "protomaml"] == [2]
    rows = ["protomaml", "scratch", "baseline++_raw", "baseline", "baseline++_meta"]
    assert list(summary["results"]) == rows
    assert summary["options"] == {"inner_steps": 2, "inner_lr": 0.1, "first_order": True}
    for row in summary["results"].values():
        assert list(row) == ["0"] and row["0"]["n"] == 6
    assert "| protomaml |" in capsys.readouterr().out


def test_zoo_is_listed(capsys):
    assert cli.main(["list"]) == 0
    listed = capsys.readouterr().out
    for name in [*TINY, "omniglot_protonet", "omniglot_protomaml", "fewshot_protomaml"]:
        assert name in listed
