"""Combined validation-accuracy-versus-training-time figures of the Omniglot CPU runs.

Reads the ``<run>.metrics.jsonl`` files copied into ``benchmarks/results/omniglot_cpu/``
(the meta-learner's records: ``val_accuracy`` against ``train_seconds``, the cumulative
training wall time without validation) and writes two PNGs there: the 5-way 1-shot runs of
every gradient-based method, and MAML across 5/20-way and 1/5-shot. Usage::

    python benchmarks/omniglot_time_curves.py
"""

from __future__ import annotations

from pathlib import Path

from metajax.experiment import plots, read_records

RESULTS = Path(__file__).resolve().parent / "results" / "omniglot_cpu"
METHODS = ("maml", "fomaml", "metasgd", "anil", "reptile")
MAML_SETTINGS = ("5w1s", "5w5s", "20w1s", "20w5s")


def _records(run: str, method: str) -> list[dict]:
    path = RESULTS / f"{run}.metrics.jsonl"
    return [r for r in read_records(path) if r.get("method") == method] if path.exists() else []


def main() -> None:
    methods = {m: _records(f"omniglot_{m}_5w1s", m) for m in METHODS}
    drawn = plots.plot_metric_vs_time(
        methods, RESULTS / "omniglot_5w1s_methods_vs_time.png",
        title="Omniglot 5-way 1-shot, validation accuracy (one CPU core)")
    settings = {s: _records(f"omniglot_maml_{s}", "maml") for s in MAML_SETTINGS}
    drawn_maml = plots.plot_metric_vs_time(
        settings, RESULTS / "omniglot_maml_settings_vs_time.png",
        title="MAML on Omniglot, validation accuracy (one CPU core)")
    print(f"{drawn} method curves, {drawn_maml} MAML curves -> {RESULTS}")


if __name__ == "__main__":
    main()
