"""Neural processes on GP regression and sinusoids: runs the experiments and tabulates them.

Each run is ``metajax run <experiment> --out runs/neural_processes/<run>`` (``--resume``
continues an interrupted one); its ``summary.json`` is copied to
``benchmarks/results/<run>.summary.json`` and ``benchmarks/results/neural_processes.md`` gets
the tables: mean target log-likelihood and MSE on the held-out tasks beside the exact GP
oracle, the notebook's logged CNP losses, the validation curve against training time, the
sinusoid comparison with MAML, and the date, hardware, versions and commands.

Usage:
    python benchmarks/neural_processes.py                       # every run, in order
    python benchmarks/neural_processes.py --runs gp_anp --resume
    python benchmarks/neural_processes.py --report              # only re-tabulate
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
RUNS = {  # run name -> (experiment, --set overrides)
    "gp_cnp": ("gp_cnp", []),
    "gp_cnp_120k": ("gp_cnp", ["num_steps=120000", "val_every=4000"]),
    "gp_np": ("gp_np", []),
    "gp_anp": ("gp_anp", []),
    "sinusoid_cnp": ("sinusoid_cnp", []),
}
# DeepMind's CNP notebook (conditional_neural_process.ipynb) prints, every 20k iterations, the
# training loss (mean target NLL) of one training batch of 64 tasks:
NOTEBOOK_CNP_NLL = {0: 1.581, 20_000: 0.671, 40_000: 0.211, 60_000: 0.109, 80_000: 0.260,
                    100_000: 0.342, 120_000: -0.012, 140_000: 0.010, 160_000: 0.539,
                    180_000: 0.112}


def command(run: str, out: Path, resume: bool) -> list[str]:
    experiment, overrides = RUNS[run]
    base = [sys.executable, "-m", "metajax.cli", "run", experiment]
    if resume:  # the run's own config.json: no --out or --set
        return base + ["--resume", str(out), "--no-progress"]
    cmd = base + ["--out", str(out), "--no-progress"]
    if (out / "summary.json").exists():  # a finished run is replaced
        cmd.append("--overwrite")
    for o in overrides:
        cmd += ["--set", o]
    return cmd


def shown(cmd: list[str]) -> str:
    return "metajax " + " ".join(c for c in cmd[3:] if c not in ("--no-progress", "--overwrite"))


def versions() -> str:
    import flax
    import jax
    import optax

    return (f"Python {platform.python_version()}, jax {jax.__version__}, flax {flax.__version__},"
            f" optax {optax.__version__}")


def cell(s: dict) -> str:
    return f"{s['mean']:.3f} ± {s['ci95']:.3f}"


def gp_table(summaries: dict[str, dict]) -> list[str]:
    lines = ["| run | model | steps | train time | test log-lik (model) | test log-lik (GP oracle)"
             " | gap (nats) | MSE (model) | MSE (oracle) |", "|---" * 9 + "|"]
    for run, s in summaries.items():
        if "gp_oracle" not in s["results"]:
            continue
        model = next(k for k in s["results"] if k != "gp_oracle")
        gap = s["results"]["gp_oracle"]["mean"] - s["results"][model]["mean"]
        lines.append(f"| {run} | {model} | {s['config']['num_steps']} | "
                     f"{s['train_seconds'] / 60:.1f} min | {cell(s['results'][model])} | "
                     f"{cell(s['results']['gp_oracle'])} | {gap:.3f} | {cell(s['mse'][model])} | "
                     f"{cell(s['mse']['gp_oracle'])} |")
    return lines


def curve(records: list[dict], oracle: float | None) -> list[str]:
    vals = [r for r in records if "val_log_lik" in r]
    every = max(1, -(-len(vals) // 12))  # at most about 12 rows, always the last
    vals = [r for i, r in enumerate(vals) if i % every == every - 1 or i == len(vals) - 1]
    lines = ["| step | train time | validation log-lik | gap to the oracle |",
             "|---|---|---|---|"]
    for r in vals:
        gap = f"{oracle - r['val_log_lik']:.3f}" if oracle is not None else "–"
        lines.append(f"| {r['step']} | {r['train_seconds'] / 60:.1f} min | "
                     f"{r['val_log_lik']:.3f} | {gap} |")
    return lines


def report(done: dict[str, Path], commands: dict[str, str]) -> str:
    summaries = {}
    for run, out in done.items():
        s = json.loads((out / "summary.json").read_text())
        s["config"] = json.loads((out / "config.json").read_text())["config"]
        summaries[run] = s
    today = datetime.date.today().isoformat()
    lines = [
        "# Neural processes: GP regression beside the exact GP, and sinusoids beside MAML",
        "",
        f"Date {today}; hardware: {platform.machine()}, 2 CPU cores; {versions()}.",
        "",
        "Held-out scores: the mean over test tasks of each task's mean target log-likelihood"
        " (higher is better) and MSE, ± 95% CI. GP test tasks (3000, a fixed seed disjoint from"
        " training) observe 400 evenly spaced points of [-2, 2], all of them targets, with a random"
        " subset as context (DeepMind's notebook protocol); the oracle is the exact GP predictive"
        " with the true kernel. Latent models (np, anp) are scored by the mixture over 32 latent"
        " draws from the prior given the context. Parameters are those with the best validation"
        " log-likelihood (256 validation tasks).",
        "",
    ]
    gp = {k: v for k, v in summaries.items() if k.startswith("gp_")}
    if gp:
        lines += ["## GP regression (EQ kernel, lengthscale 0.4, σ_f 1, noise 0.02)", ""]
        lines += gp_table(gp) + [""]
        cnp_runs = {s["config"]["num_steps"]: run for run, s in gp.items()
                    if s["config"].get("model") == "cnp"}
        if cnp_runs:
            lines += [
                "CNP against DeepMind's notebook. The notebook prints the training loss (mean"
                " target NLL, targets = context + 2-9 more points) of one training batch every"
                " 20k iterations; ours is the mean training NLL over the 1000 steps up to that"
                " step (same batch size, sizes and optimizer), with the held-out NLL on the"
                " 400-point test grid beside it.", "",
                "| steps | notebook: one batch's NLL | ours: training NLL | difference | ours:"
                " validation NLL (400-point grid) |", "|---|---|---|---|---|"]
            longest = done[cnp_runs[max(cnp_runs)]]
            records = {r["step"]: r for r in map(json.loads, (longest / "metrics.jsonl")
                                                 .read_text().splitlines()) if "loss" in r}
            for steps, nb in NOTEBOOK_CNP_NLL.items():
                r = records.get(steps)
                if r is None:
                    continue
                val = f"{-r['val_log_lik']:.3f}" if "val_log_lik" in r else "–"
                lines.append(f"| {steps} | {nb:.3f} | {r['loss']:.3f} | {r['loss'] - nb:+.3f} |"
                             f" {val} |")
            later = [v for k, v in NOTEBOOK_CNP_NLL.items() if k >= 40_000]
            lines += ["", f"The notebook's single-batch values from 40k on range from "
                      f"{min(later):.3f} to {max(later):.3f} (mean {sum(later) / len(later):.3f}).",
                      ""]
        for run, s in gp.items():
            records = [json.loads(x) for x in (done[run] / "metrics.jsonl").read_text()
                       .splitlines() if x.strip()]
            lines += [f"Validation curve of `{run}` (validation log-likelihood against "
                      "training time):", ""]
            lines += curve(records, s.get("val_oracle_log_lik")) + [""]
    if "sinusoid_cnp" in summaries:
        s = summaries["sinusoid_cnp"]
        lines += ["## Sinusoids: CNP (0 adaptation steps) against MAML and pre-training", "",
                  f"Query MSE on the {s['num_test_tasks']} held-out 5-shot tasks of"
                  " `sinusoid_maml` (seed 0, 100 query points each); MAML and the pretrained"
                  " network are trained as in `sinusoid_maml` (70k steps) and fine-tuned with the"
                  " step size chosen on validation tasks.", ""]
        from metajax.experiment import format_table

        lines += [format_table(s), ""]
    lines += ["## Commands", ""] + [f"- `{run}`: `{c}`" for run, c in commands.items()
                                    if run in done]
    lines += ["", "Reproduce: `python benchmarks/neural_processes.py` (add `--resume` to continue"
              " interrupted runs); results are copied to `benchmarks/results/<run>.summary.json`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=list(RUNS))
    parser.add_argument("--out", type=Path, default=Path("runs/neural_processes"))
    parser.add_argument("--resume", action="store_true", help="continue interrupted runs")
    parser.add_argument("--report", action="store_true", help="only re-tabulate finished runs")
    args = parser.parse_args()
    commands = {run: shown(command(run, args.out / run, False)) for run in RUNS}
    if not args.report:
        for run in args.runs:
            out = args.out / run
            unfinished = (out / "checkpoints").exists() and not (out / "summary.json").exists()
            subprocess.run(command(run, out, args.resume or unfinished), check=True)
            shutil.copy(out / "summary.json", RESULTS / f"{run}.summary.json")
    done = {run: args.out / run for run in RUNS if (args.out / run / "summary.json").exists()}
    (RESULTS / "neural_processes.md").write_text(report(done, commands))
    print(f"wrote {RESULTS / 'neural_processes.md'}")


if __name__ == "__main__":
    main()
