"""One table for every gradient-based method on sinusoid 5-shot regression.

Runs ``metajax run sinusoid_<method>`` with each experiment's defaults (seed 0) and collects
the held-out MSE after 0/1/5/10 adaptation steps (mean ± 95% CI over the same 1000 meta-test
tasks: the test stream depends only on the seed) into ``benchmarks/results/sinusoid_zoo.md``,
together with each run's scratch and pretrained baselines.

Usage:
    python benchmarks/sinusoid_zoo.py                       # run all, then tabulate
    python benchmarks/sinusoid_zoo.py --reuse               # tabulate existing runs
    python benchmarks/sinusoid_zoo.py --methods maml anil   # a subset
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("maml", "fomaml", "mamlpp", "metasgd", "anil", "reptile", "imaml", "cavia")
STEPS = ("0", "1", "5", "10")



def _versions() -> str:
    import flax
    import jax
    import optax

    return f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}"

def _cell(row: dict, step: str) -> str:
    if step not in row:
        return "–"
    return f"{row[step]['mean']:.3f} ± {row[step]['ci95']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--out", type=Path, default=RESULTS / "sinusoid_zoo")
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()
    walls = {}
    for method in args.methods:
        run = args.out / method
        if args.reuse:
            continue
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "metajax.cli", "run", f"sinusoid_{method}",
                               "--out", str(run), "--no-progress", "--overwrite"],
                              capture_output=True,
                              text=True)
        walls[method] = time.perf_counter() - t0
        (run / "stderr.log").write_text(proc.stderr[-20000:])
        print(f"{method}: exit {proc.returncode} in {walls[method]:.0f} s", flush=True)
    lines = ["| method | row | " + " | ".join(f"{s} steps" for s in STEPS) + " | wall s |",
             "|---|---|" + "---|" * (len(STEPS) + 1)]
    for method in args.methods:
        path = args.out / method / "summary.json"
        if not path.exists():
            lines.append(f"| {method} | (run failed: see {method}/stderr.log) |" + " |" *
                         (len(STEPS) + 1))
            continue
        summary = json.loads(path.read_text())
        wall = summary.get("wall_seconds", walls.get(method))
        for i, (row_name, row) in enumerate(summary["results"].items()):
            wall_cell = f"{wall:.0f}" if i == 0 and wall else ""  # the method's own row first
            lines.append(f"| {method} | {row_name} | " + " | ".join(_cell(row, s) for s in STEPS)
                         + f" | {wall_cell} |")
    report = "\n".join([
        "# Gradient-based meta-learners on sinusoid regression (5-shot, seed 0)",
        "",
        "Held-out query MSE after 0/1/5/10 SGD adaptation steps, mean ± 95% CI over 1000 "
        "meta-test tasks (the same tasks for every method). Each method runs its experiment's "
        "defaults (see `experiments/sinusoid_<method>.py`); every run also reports its own "
        "scratch and pretrained baselines (joint training, then fine-tuning with the step size "
        "best on meta-validation tasks). CAVIA adapts only its context vector.",
        "",
        *lines,
        "",
        f"Command: `python benchmarks/sinusoid_zoo.py` (each row: `metajax run sinusoid_<method>`)."
        f" Hardware: {platform.machine()}, 2 CPU cores (shared with other jobs while measured); "
        f"Python {platform.python_version()}, {_versions()}; date {time.strftime('%Y-%m-%d')}.",
        "",
    ])
    (RESULTS / "sinusoid_zoo.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
