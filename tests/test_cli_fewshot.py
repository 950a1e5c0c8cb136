"""The few-shot experiments run end to end through the CLI, and each method learns.

One tiny run per experiment (linear embedding, 100 outer steps of 4 tasks) is both the CLI
end-to-end test and the learning test of its method: after meta-training, held-out query
accuracy must be clearly above the same head on a randomly initialised embedding (``scratch``,
i.e. before training) and above chance (5-way: 0.2).
"""

import json

import pytest

from metajax import cli

COMMON = ["num_steps=100", "meta_batch=4", "test_tasks=50", "val_tasks=50", "val_every=50",
          "log_every=50", "steps_per_call=50", "dim=8", "n_informative=2", "k_shot=2",
          "n_query=3", "hidden=", "embed_dim=4", "outer_lr=0.03", "finetune_steps=5",
          "finetune_lrs=0.1,1.0"]
TINY = {
    "fewshot_protonet": ("protonet", []),
    "fewshot_matchingnet": ("matchingnet", ["scale=5.0"]),
    "fewshot_r2d2": ("r2d2", []),
    "fewshot_protomaml": ("protomaml", ["inner_steps=1", "inner_lr=0.1"]),
    "fewshot_metaoptnet": ("metaoptnet", ["dual_iters=5"]),
}


@pytest.mark.parametrize("experiment", sorted(TINY))
def test_fewshot_experiment_runs_end_to_end_and_learns(experiment, tmp_path, capsys):
    method, overrides = TINY[experiment]
    out = tmp_path / "run"
    args = ["run", experiment, "--out", str(out), "--no-progress"]
    assert cli.main(args + sum((["--set", s] for s in COMMON + overrides), [])) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["experiment"] == experiment and config["config"]["num_steps"] == 100
    assert config["config"]["hidden"] == []
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["method"] == method] == [50, 100]
    assert all(0.0 <= r["val_accuracy"] <= 1.0 for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "accuracy" and summary["num_test_tasks"] == 50
    results = summary["results"]
    assert list(results) == [method, "scratch", "baseline++_raw", "baseline++_meta"]
    for row in results.values():
        assert list(row) == ["0"] and row["0"]["n"] == 50 and row["0"]["ci95"] > 0
    for row in summary["finetune"]["lr_search"].values():
        assert row["chosen_lr"] in (0.1, 1.0)
    assert summary["best_val_step"] in (50, 100)
    # The method learned: well above its untrained (random-embedding) self and above chance.
    learned, scratch = results[method]["0"]["mean"], results["scratch"]["0"]["mean"]
    assert learned > scratch + 0.12 and learned > 0.35, (learned, scratch)
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert f"| {method} |" in printed and "| baseline++_raw |" in printed
