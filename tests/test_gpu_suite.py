"""benchmarks/gpu_suite.py runs on a CPU with --tiny and writes its JSON and markdown."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omniglot_data import require_omniglot

SUITE = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_suite.py"


def _run(out, *args):
    subprocess.run([sys.executable, str(SUITE), "--out", str(out), "--tiny", *args], check=True,
                   capture_output=True, text=True)
    return json.loads((out / "gpu.json").read_text()), (out / "gpu.md").read_text()


@pytest.mark.slow
def test_tiny_suite_writes_json_and_markdown(tmp_path):
    report, md = _run(tmp_path, "--parts", "sinusoid", "omniglot", "--data",
                      str(tmp_path / "nowhere"))
    assert {(r["inner_steps"], r["meta_batch"]) for r in report["sinusoid"]} == \
        {(1, 4), (1, 16), (5, 4), (5, 16)}
    assert all(r["updates_per_s"]["metajax"] > 0 for r in report["sinusoid"])
    assert report["omniglot"]["skipped"].startswith("no Omniglot zips")
    assert report["versions"]["jax"] and "## Sinusoid MAML" in md and "Skipped: no Omniglot" in md


@pytest.mark.slow
def test_tiny_suite_runs_conv4_and_omniglot_maml(tmp_path):
    report, md = _run(tmp_path, "--parts", "conv4", "omniglot", "--data", str(require_omniglot()))
    assert [r["first_order"] for r in report["conv4"]] == [False, True]
    assert all(r["updates_per_s"]["metajax"] > 0 for r in report["conv4"])
    acc = report["omniglot"]["results"]["maml"]
    assert report["omniglot"]["num_steps"] == 40 and all(0 <= c["mean"] <= 1 for c in acc.values())
    assert "| maml |" in md
