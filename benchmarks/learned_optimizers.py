"""Learned optimizers against tuned SGD, momentum and Adam: runs the experiments, tabulates them.

Each run is ``metajax run <experiment> --out runs/lopt/<run>`` (an interrupted one is
continued with ``--resume``); its ``summary.json`` is copied to
``benchmarks/results/<run>.summary.json`` and ``benchmarks/results/learned_optimizers.md`` gets
the tables: held-out final training loss (mean ± 95% CI over 256 test tasks) of the learned
optimizer, the tuned baselines and the closed-form optimum at 1x, 2x and 10x the meta-trained
horizon, the task-by-task comparison with each baseline, the tuned learning rates, the
meta-training time, and the date, hardware, versions and commands.

Usage:
    python benchmarks/learned_optimizers.py                    # every run, in order
    python benchmarks/learned_optimizers.py --runs lopt_quadratics
    python benchmarks/learned_optimizers.py --report           # only re-tabulate
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
RUNS = {  # run name -> (experiment, --set overrides)
    "lopt_linear_regression": ("lopt_linear_regression", []),
    "lopt_linear_regression_lstm": ("lopt_linear_regression", ["optimizer=lstm"]),
    "lopt_quadratics": ("lopt_quadratics", []),
    "lopt_quadratics_mlp": ("lopt_quadratics", ["optimizer=mlp", "outer_steps=20000"]),
    "lopt_digits_mlp": ("lopt_digits_mlp", []),
    "lopt_omniglot_mlp": ("lopt_omniglot_mlp", []),  # needs $METAJAX_DATA
}
BASELINES = ("sgd", "momentum", "adam")


def command(run: str, out: Path) -> list[str]:
    base = [sys.executable, "-m", "metajax.cli", "run"]
    if (out / "checkpoints").exists() and not (out / "summary.json").exists():
        return base + [RUNS[run][0], "--resume", str(out), "--no-progress"]
    cmd = base + [RUNS[run][0], "--out", str(out), "--no-progress"]
    if (out / "summary.json").exists():
        cmd.append("--overwrite")
    for o in RUNS[run][1]:
        cmd += ["--set", o]
    return cmd


def shown(run: str) -> str:
    experiment, overrides = RUNS[run]
    data = "METAJAX_DATA=DIR " if experiment == "lopt_omniglot_mlp" else ""
    return data + " ".join(["metajax run", experiment, *(f"--set {o}" for o in overrides)])


def versions() -> str:
    import flax
    import jax
    import optax

    return (f"Python {platform.python_version()}, jax {jax.__version__}, flax {flax.__version__},"
            f" optax {optax.__version__}")


def overview(summaries: dict[str, dict]) -> list[str]:
    lines = ["| run | learned | horizon | learned, 1x | best tuned baseline, 1x | learned - Adam,"
             " 1x (paired) | learned, 10x | best tuned baseline, 10x |", "|---" * 8 + "|"]
    for run, s in summaries.items():
        learned, res = s["config"]["optimizer"], s["results"]

        def best(h, res=res):
            name = min(BASELINES, key=lambda b: res[b][h]["mean"])
            return f"{name} {res[name][h]['mean']:.3g} ± {res[name][h]['ci95']:.2g}"

        diff = s["paired"]["adam"]["1x"]["diff"]
        lines.append(
            f"| {run} | {learned} | {s['trained_horizon']} | {res[learned]['1x']['mean']:.3g} ±"
            f" {res[learned]['1x']['ci95']:.2g} | {best('1x')} | {diff['mean']:+.3g} ± "
            f"{diff['ci95']:.2g} | {res[learned]['10x']['mean']:.3g} ± "
            f"{res[learned]['10x']['ci95']:.2g} | {best('10x')} |")
    return lines


def tuned(s: dict) -> str:
    parts = []
    for name, t in s["tuning"].items():
        edge = " (grid edge)" if t["at_grid_edge"] else ""
        parts.append(f"{name} {t['lr']:g}{edge}")
    return ", ".join(parts)


def report(done: dict[str, Path]) -> str:
    from metajax.experiment import format_paired, format_table

    summaries = {}
    for run, out in done.items():
        s = json.loads((out / "summary.json").read_text())
        s["config"] = json.loads((out / "config.json").read_text())["config"]
        summaries[run] = s
    lines = [
        "# Learned optimizers against tuned SGD, momentum and Adam", "",
        f"Date {datetime.date.today().isoformat()}; hardware: {platform.machine()}, "
        f"{os.cpu_count()} CPU cores; {versions()}.", "",
        "Each learned optimizer is meta-trained on its task family by truncated backpropagation"
        " (16 tasks per outer step, 8 for digits; Adam 1e-3 with the meta-gradient clipped to"
        " norm 1; the meta-parameters with the lowest validation final loss are kept). SGD,"
        " momentum (0.9) and Adam get the learning rate of the grid 1e-4, 3e-4, ..., 3 with the"
        " lowest mean final training loss at the trained horizon on 64 validation tasks. Then"
        " every optimizer trains the same 256 held-out tasks (new data and initialisations) for"
        " 1x, 2x and 10x the trained horizon; the learned optimizer is told the run's length."
        " Cells: final training loss, mean ± 95% CI over the tasks.", "",
        "## Overview", ""]
    lines += overview(summaries) + [
        "", "The paired column is the mean over tasks of (learned - Adam) final loss with its 95%"
        " CI: negative means the learned optimizer ends lower on the same tasks.", ""]
    for run, s in summaries.items():
        cfg = s["config"]
        lines += [f"## `{run}`", "",
                  f"`{shown(run)}`: {cfg['optimizer']} learned optimizer, {cfg['estimator']},"
                  f" horizon {cfg['num_steps']}, truncation {cfg['truncation']}, meta-loss"
                  f" {cfg['meta_loss']}, {cfg['outer_steps']} outer steps"
                  f" ({s['train_seconds'] / 60:.1f} min of meta-training; best validation at"
                  f" step {s['best_step']}). Tuned rates: {tuned(s)}.", "",
                  format_table(s), "",
                  "Task by task against each baseline: learned - baseline final loss (mean ±"
                  " 95% CI); log10(learned / baseline) in decades; the share of tasks where the"
                  " learned optimizer ends lower.", "",
                  format_paired(s), ""]
        if "final_test_loss" in s:
            lines += ["Held-out test loss (the dataset's test split) after training:", "",
                      format_table({"results": s["final_test_loss"]}), ""]
    lines += ["## Commands", ""] + [f"- `{run}`: `{shown(run)}`" for run in done]
    lines += ["", "Reproduce: `python benchmarks/learned_optimizers.py` (an interrupted run is"
              " continued); results are copied to `benchmarks/results/<run>.summary.json`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=list(RUNS))
    parser.add_argument("--out", type=Path, default=Path("runs/lopt"))
    parser.add_argument("--report", action="store_true", help="only re-tabulate finished runs")
    args = parser.parse_args()
    if not args.report:
        for run in args.runs:
            if run == "lopt_omniglot_mlp" and not os.environ.get("METAJAX_DATA"):
                print(f"{run}: skipped (set METAJAX_DATA to the folder holding omniglot/)")
                continue
            subprocess.run(command(run, args.out / run), check=True)
    done = {run: args.out / run for run in RUNS if (args.out / run / "summary.json").exists()}
    for run, out in done.items():
        shutil.copy(out / "summary.json", RESULTS / f"{run}.summary.json")
    (RESULTS / "learned_optimizers.md").write_text(report(done))
    print(f"wrote {RESULTS / 'learned_optimizers.md'}")


if __name__ == "__main__":
    main()
