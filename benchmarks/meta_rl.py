"""Meta-RL reproductions: MAML-RL on 2-D navigation and RL^2 on bandits, next to the papers,
and RL^2 against MAML-RL on the gridworld.

Each run is ``metajax run <experiment> --out runs/rl/<experiment>`` (an interrupted one is
continued with ``--resume``); its ``summary.json`` is copied to
``benchmarks/results/<experiment>.summary.json`` and ``benchmarks/results/meta_rl.md`` gets the
tables (ours next to the paper's), the training time, and the date, hardware, versions and
commands.

Usage:
    python benchmarks/meta_rl.py                         # every run, in order
    python benchmarks/meta_rl.py --runs rl_bandit_rl2
    python benchmarks/meta_rl.py --report                # only re-tabulate
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
RUNS = ("rl_navigation_maml", "rl_bandit_rl2", "rl_gridworld")


def command(run: str, out: Path) -> list[str]:
    base = [sys.executable, "-m", "metajax.cli", "run"]
    if (out / "checkpoints").exists() and not (out / "summary.json").exists():
        return base + [run, "--resume", str(out), "--no-progress"]
    return base + [run, "--out", str(out), "--no-progress"] + (
        ["--overwrite"] if (out / "summary.json").exists() else [])


def versions() -> str:
    import flax
    import jax
    import optax

    return (f"Python {platform.python_version()}, jax {jax.__version__}, flax {flax.__version__},"
            f" optax {optax.__version__}")


def _cell(c: dict) -> str:
    return f"{c['mean']:.2f} ± {c['ci95']:.2f}" if c.get("ci95") else f"{c['mean']:.2f}"


def navigation(s: dict) -> list[str]:
    steps = ["0", "1", "2", "3"]
    lines = ["| method | " + " | ".join(f"{k} steps: ours | paper" for k in steps) + " |",
             "|---|" + "---|---|" * len(steps)]
    for name, row in s["results"].items():
        paper = s["paper"].get(name, [])
        cells = [f"{_cell(row[k])} | {paper[i]:.1f}" if k in row and i < len(paper)
                 else (f"{_cell(row[k])} | –" if k in row else "– | –")
                 for i, k in enumerate(steps)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    minutes = sum(s["train_seconds"].values()) / 60
    return lines + ["", f"Mean episode return over {s['num_test_tasks']} held-out goals "
                    f"({len(s['seeds'])} seeds × 40), 40 episodes per step, VPG steps of 0.5 then"
                    f" 0.25; the oracle sees the goal and is not adapted. Training time, all "
                    f"seeds and methods: {minutes:.0f} min."]


def bandits(s: dict) -> list[str]:
    labels = list(next(iter(s["results"].values())))
    lines = ["| method | " + " | ".join(f"{lab}: ours | paper" for lab in labels) + " |",
             "|---|" + "---|---|" * len(labels)]
    for name, row in s["results"].items():
        cells = []
        for lab in labels:
            paper = s["paper"].get(lab, {}).get(name)
            ours = _cell(row[lab]) if lab in row else "–"
            cells.append(f"{ours} | {paper if paper is not None else '–'}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    gittins = [f"{lab}: {s['paper'][lab]['gittins']}" for lab in labels if lab in s["paper"]]
    tuned = "; ".join(f"{lab}: epsilon {t['epsilon']}, UCB1 c {t['ucb1_c']}"
                      for lab, t in s["tuned"].items())
    minutes = sum(s["train_seconds"].values()) / 60
    return lines + ["", f"Total reward per trial over {s['num_test_tasks']} held-out bandits. "
                    f"The paper's Gittins-index row ({', '.join(gittins)}) approximates the "
                    f"Bayes-optimal policy, whose exact value we compute where the dynamic "
                    f"programme is small. Tuned on validation bandits: {tuned}. RL^2 training "
                    f"time: {minutes:.1f} min."]


def gridworld(s: dict) -> list[str]:
    stages = sorted({k for row in s["results"].values() for k in row}, key=int)
    lines = ["| method | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
    for name, row in s["results"].items():
        lines.append(f"| {name} | " + " | ".join(_cell(row[k]) if k in row else "–"
                                                  for k in stages) + " |")
    minutes = sum(s["train_seconds"].values()) / 60
    return lines + ["", s["caption"] + f" Training time, all methods: {minutes:.1f} min."]


def report(done: dict[str, dict]) -> str:
    lines = ["# Meta-reinforcement learning", "",
             f"Hardware: {platform.machine()}, {os.cpu_count()} CPU cores; {versions()}. Each "
             "section gives the date of its run.", ""]
    if "rl_navigation_maml" in done:
        s = done["rl_navigation_maml"]
        lines += ["## MAML-RL on 2-D navigation (`metajax run rl_navigation_maml`)", "",
                  f"Run {s.get('date', 'date not recorded')}.",
                  "The paper's numbers are Finn et al. (2017), Fig. 5, from the result pickles "
                  "of cbfinn/maml_rl.", ""] + navigation(s) + [""]
    if "rl_bandit_rl2" in done:
        s = done["rl_bandit_rl2"]
        lines += ["## RL^2 on Bernoulli bandits (`metajax run rl_bandit_rl2`)", "",
                  f"Run {s.get('date', 'date not recorded')}.",
                  "The paper's numbers are Duan et al. (2016), Table 1.", ""] + bandits(s) + [""]
    if "rl_gridworld" in done:
        lines += ["## RL^2 and MAML-RL on changing mazes (`metajax run rl_gridworld`)", "",
                  f"Run {done['rl_gridworld'].get('date', '')}.",
                  "No published numbers: the gridworld is metajax's own.", ""] + gridworld(
                      done["rl_gridworld"]) + [""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS))
    parser.add_argument("--out", type=Path, default=Path("runs/rl"))
    parser.add_argument("--report", action="store_true", help="only re-tabulate finished runs")
    args = parser.parse_args()
    if not args.report:
        for run in args.runs:
            subprocess.run(command(run, args.out / run), check=True)
    for run in RUNS:  # a finished run replaces its stored summary (dated); the others are kept
        if (args.out / run / "summary.json").exists():
            s = json.loads((args.out / run / "summary.json").read_text())
            s.setdefault("date", datetime.date.fromtimestamp(
                (args.out / run / "summary.json").stat().st_mtime).isoformat())
            (RESULTS / f"{run}.summary.json").write_text(json.dumps(s, indent=2) + "\n")
    done = {run: json.loads((RESULTS / f"{run}.summary.json").read_text()) for run in RUNS
            if (RESULTS / f"{run}.summary.json").exists()}
    (RESULTS / "meta_rl.md").write_text(report(done))
    print(f"wrote {RESULTS / 'meta_rl.md'}")


if __name__ == "__main__":
    main()
