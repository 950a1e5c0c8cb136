"""Reproduces MAML's sinusoid table (Finn et al., 2017, App. C, Table 2) over several seeds.

Runs ``metajax run sinusoid_maml --set seed=S`` for each seed (the experiment's defaults are
the paper's setup: K=10 training shots, 1 inner step of lr 0.01, meta-batch 25, Adam 1e-3,
70k steps; tested 5-shot), then writes ``benchmarks/results/sinusoid_maml.md``: the paper's
numbers next to ours, per seed and averaged over seeds.

Usage:
    python benchmarks/sinusoid_reproduction.py --seeds 0 1 2
    python benchmarks/sinusoid_reproduction.py --seeds 0 1 2 --reuse   # only re-tabulate
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PAPER = {"maml": (0.67, 0.38, 0.35), "pretrained": (2.41, 2.23, 2.19)}
STEPS = ("1", "5", "10")



def _versions() -> str:
    import flax
    import jax
    import optax

    return f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}"

def run_seed(seed: int, out: Path) -> float:
    """Runs one seed through the CLI; returns its wall time in seconds."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "metajax.cli", "run", "sinusoid_maml", "--set",
                    f"seed={seed}", "--out", str(out), "--no-progress", "--overwrite"], check=True)
    return time.perf_counter() - t0


def table(summaries: dict[int, dict], walls: dict[int, float | None]) -> str:
    """The markdown report: paper vs ours per seed and the mean (± std) over seeds."""
    lines = ["| method | source | 1 step | 5 steps | 10 steps |", "|---|---|---|---|---|"]
    for method in ("maml", "pretrained", "scratch"):
        if method in PAPER:
            lines.append(f"| {method} | paper | " + " | ".join(f"{v:.2f}" for v in PAPER[method])
                         + " |")
        for seed, summary in summaries.items():
            row = summary["results"][method]
            lines.append(f"| {method} | ours, seed {seed} | " + " | ".join(
                f"{row[s]['mean']:.3f} ± {row[s]['ci95']:.3f}" for s in STEPS) + " |")
        if len(summaries) > 1:
            cells = []
            for s in STEPS:
                means = [sm["results"][method][s]["mean"] for sm in summaries.values()]
                cells.append(f"**{statistics.mean(means):.3f}** (± {statistics.stdev(means):.3f}"
                             " sd over seeds)")
            lines.append(f"| {method} | ours, mean of {len(summaries)} seeds | "
                         + " | ".join(cells) + " |")
    any_summary = next(iter(summaries.values()))
    lrs = "; ".join(f"seed {seed}: " + ", ".join(f"{m} {lr}" for m, lr in sm["adapt_lr"].items())
                    for seed, sm in summaries.items())
    wall = ", ".join(f"seed {s}: {w:.0f} s" for s, w in walls.items() if w)
    return "\n".join([
        "# MAML sinusoid reproduction (Finn et al., 2017, App. C, Table 2)",
        "",
        "Mean squared error on held-out 5-shot tasks after 1/5/10 SGD steps, mean ± 95% CI over "
        f"{any_summary['num_test_tasks']} meta-test tasks per seed (100 query points each). "
        "Trained with K=10, 1 inner step, inner lr 0.01, meta-batch 25, Adam 1e-3, 70k steps. "
        "Parameters chosen by meta-validation loss. Baselines fine-tune with the step size that "
        f"is best on meta-validation tasks (selected: {lrs}).",
        "",
        *lines,
        "",
        "Command: `python benchmarks/sinusoid_reproduction.py --seeds "
        f"{' '.join(map(str, summaries))}` (each seed: `metajax run sinusoid_maml --set seed=S`).",
        "Wall time per seed (meta-training + 70k pre-training steps + evaluation): "
        f"{wall or 'n/a'}.",
        f"Hardware: {platform.processor() or platform.machine()}, "
        f"{subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} CPU cores; "
        f"Python {platform.python_version()}, {_versions()}; date {time.strftime('%Y-%m-%d')}.",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=RESULTS / "sinusoid_maml")
    parser.add_argument("--reuse", action="store_true",
                        help="re-tabulate existing runs instead of running them")
    args = parser.parse_args()
    summaries, walls = {}, {}
    for seed in args.seeds:
        run_dir = args.out / f"seed{seed}"
        walls[seed] = None if args.reuse else run_seed(seed, run_dir)
        summary = json.loads((run_dir / "summary.json").read_text())
        walls[seed] = walls[seed] or summary.get("wall_seconds")
        summaries[seed] = summary
    report = table(summaries, walls)
    (RESULTS / "sinusoid_maml.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
