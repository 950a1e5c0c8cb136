"""Side-by-side reports of finished runs: one table, one plot of the learning curves."""

from __future__ import annotations

import json
import os
from pathlib import Path

from metajax._src.experiment.plots import plot_learning_curve
from metajax._src.experiment.run_io import read_records
from metajax._src.experiment.tables import format_cell


def load_run(run_dir: str | os.PathLike) -> dict:
    """Reads a run directory's ``config.json``, ``summary.json`` and ``metrics.jsonl``.

    Raises:
        FileNotFoundError: naming the directory when it holds no finished run.
        ValueError: naming the file when ``config.json`` or ``summary.json`` is damaged.
    """
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        raise FileNotFoundError(f"{run_dir} has no summary.json: not a finished metajax run.")
    config_path = run_dir / "config.json"
    config = _read_json(config_path) if config_path.exists() else {}
    summary = _read_json(summary_path)
    if not isinstance(summary, dict) or not isinstance(summary.get("results"), dict):
        raise ValueError(f"{summary_path} has no \"results\" table: not a metajax summary.")
    return {"name": run_dir.name,
            "experiment": config.get("experiment", "?") if isinstance(config, dict) else "?",
            "summary": summary, "records": read_records(run_dir / "metrics.jsonl")}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}).") from None


def comparison_table(runs: list[dict]) -> str:
    """A markdown table: one row per (run, method), one column per number of adaptation steps."""
    steps: list[str] = []
    for run in runs:
        for row in run["summary"]["results"].values():
            keys = ["–"] if "mean" in row else list(row)  # a one-number row (amortised)
            steps += [s for s in keys if s not in steps]
    if all(s.isdigit() for s in steps):
        steps.sort(key=int)
    lines = ["| run | experiment | method | metric | " + " | ".join(f"{s} steps" for s in steps)
             + " |", "|---" * (len(steps) + 4) + "|"]
    for run in runs:
        metric = run["summary"].get("metric", "loss")
        for method, row in run["summary"]["results"].items():
            row = {"–": row} if "mean" in row else row
            cells = [format_cell(row[s], ".4g", ".2g") if s in row else "" for s in
                     steps]
            lines.append(f"| {run['name']} | {run['experiment']} | {method} | {metric} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(run_dirs: list[str | os.PathLike], *, plot_path: str | os.PathLike | None) -> str:
    """Builds the comparison table of ``run_dirs`` and (optionally) one learning-curve plot."""
    runs = [load_run(d) for d in run_dirs]
    if plot_path is not None:
        plot_runs(runs, plot_path)
    return comparison_table(runs)


def plot_runs(runs: list[dict], plot_path: str | os.PathLike) -> None:
    """One learning-curve plot of :func:`load_run` results."""
    records = [{**r, "method": f"{run['name']}/{r.get('method', 'train')}"}
               for run in runs for r in run["records"]]
    plot_learning_curve(records, plot_path)
