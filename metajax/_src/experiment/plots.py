"""PNG plots of a run: learning curves and adapted regression tasks."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    """Writes ``fig`` to ``path`` (process 0 only, see ``is_writer_process``) and closes it."""
    from metajax._src.experiment.run_io import is_writer_process

    if is_writer_process():
        fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def plot_learning_curve(records: Sequence[dict], path: str | os.PathLike, *,
                        metric: str = "loss", log_scale: bool = True) -> None:
    """Plots training (and validation, where logged) ``metric`` against step, per method.

    Args:
        records: ``metrics.jsonl`` records with ``step``, ``method`` and metric keys.
        path: output PNG path.
        metric: the metric to plot (``val_<metric>`` is plotted too where present).
        log_scale: log-scale the y axis.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = list(dict.fromkeys(r.get("method", "train") for r in records))
    for method in methods:
        rows = [r for r in records if r.get("method", "train") == method]
        steps = [r["step"] for r in rows if metric in r]
        ax.plot(steps, [r[metric] for r in rows if metric in r], label=f"{method} train")
        val = [(r["step"], r[f"val_{metric}"]) for r in rows if f"val_{metric}" in r]
        if val:
            ax.plot([v[0] for v in val], [v[1] for v in val], "o-", label=f"{method} validation")
    ax.set_xlabel("outer step")
    ax.set_ylabel(f"query {metric}")
    if log_scale:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def plot_metric_vs_time(
    runs: dict[str, Sequence[dict]],
    path: str | os.PathLike,
    *,
    metric: str = "val_accuracy",
    time_key: str = "train_seconds",
    title: str | None = None,
) -> int:
    """Plots ``metric`` against cumulative training wall time, one line per run.

    Records without ``metric`` or ``time_key`` (e.g. training-only records between
    validations, or records written before ``train_seconds`` existed) are skipped, and so
    is a run left with none.

    Args:
        runs: ``{label: records}``, e.g. the ``metrics.jsonl`` records of one method, or of
            several runs for a combined figure.
        path: output PNG path.
        metric: the record key on the y axis (validation accuracy by default).
        time_key: the record key on the x axis, in seconds (see
            :func:`metajax.experiment.meta_train`).
        title: optional figure title.

    Returns:
        The number of runs drawn.

    Examples:
        >>> import tempfile, os
        >>> recs = [{"step": 1, "train_seconds": 2.0, "val_accuracy": 0.5},
        ...         {"step": 2, "train_seconds": 4.0, "val_accuracy": 0.7}]
        >>> plot_metric_vs_time({"maml": recs}, os.path.join(tempfile.mkdtemp(), "t.png"))
        1
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for label, records in runs.items():
        points = sorted((r[time_key], r[metric]) for r in records
                        if r.get(metric) is not None and r.get(time_key) is not None)
        if not points:
            continue
        xs = [p[0] / 60.0 for p in points]
        ax.plot(xs, [p[1] for p in points], "o-", label=label)
        drawn += 1
    ax.set_xlabel("training wall time (minutes, validation excluded)")
    ax.set_ylabel(metric.replace("_", " "))
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend()
    fig.tight_layout()
    _save(fig, path)
    return drawn


def plot_regression_tasks(
    path: str | os.PathLike,
    *,
    x_support: np.ndarray,
    y_support: np.ndarray,
    x_grid: np.ndarray,
    y_true: np.ndarray,
    predictions: dict[str, np.ndarray],
) -> None:
    """One panel per task: true function, support points, and each named prediction curve.

    Args:
        path: output PNG path.
        x_support: ``[tasks, k, 1]`` support inputs.
        y_support: ``[tasks, k, 1]`` support targets.
        x_grid: ``[n]`` inputs where curves are drawn.
        y_true: ``[tasks, n]`` true function on the grid.
        predictions: ``{label: [tasks, n]}`` model predictions on the grid.
    """
    plt = _pyplot()
    n = len(y_true)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.plot(x_grid, y_true[i], "k-", lw=2, label="true")
        for label, pred in predictions.items():
            ax.plot(x_grid, pred[i], "--", label=label)
        ax.plot(x_support[i, :, 0], y_support[i, :, 0], "r^", ms=8, label="support")
        ax.set_title(f"held-out task {i}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def predict_adapted(apply: Callable, adapt_fn: Callable, params, support, x_grid) -> np.ndarray:
    """Predictions on ``x_grid`` of ``params`` adapted per task by ``adapt_fn(params, support)``."""
    import jax

    def one(s):
        return apply(adapt_fn(params, s), x_grid[:, None])[:, 0]

    return np.asarray(jax.vmap(one)(support))


def plot_predictive_tasks(path: str | os.PathLike, *, tasks, x_grid: np.ndarray,
                          mean: np.ndarray, std: np.ndarray, label: str,
                          oracle: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """One panel per task: a predictive mean ± 2σ with the context points, targets and (if
    given) the oracle's mean ± 2σ.

    Args:
        path: output PNG path.
        tasks: a ``TaskBatch`` of ``Points`` (numpy) for the panels.
        x_grid: ``[n]`` inputs of the curves.
        mean: ``[tasks, n]`` predictive means.
        std: ``[tasks, n]`` predictive standard deviations.
        label: the model's name.
        oracle: ``(mean, std)`` ``[tasks, n]`` of the exact predictive, if there is one.
    """
    plt = _pyplot()
    n = len(mean)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), squeeze=False)
    for i, ax in enumerate(axes[0]):
        t = tasks.query
        keep = np.asarray(t.mask[i], bool)
        ax.plot(t.x[i, keep, 0], t.y[i, keep, 0], ".", color="0.6", ms=2, label="targets")
        if oracle is not None:
            ax.plot(x_grid, oracle[0][i], "k-", lw=1, label="GP oracle")
            ax.fill_between(x_grid, oracle[0][i] - 2 * oracle[1][i],
                            oracle[0][i] + 2 * oracle[1][i], color="k", alpha=0.12)
        ax.plot(x_grid, mean[i], "b-", lw=1.5, label=label)
        ax.fill_between(x_grid, mean[i] - 2 * std[i], mean[i] + 2 * std[i], color="b",
                        alpha=0.18)
        c = tasks.support
        ctx = np.asarray(c.mask[i], bool)
        ax.plot(c.x[i, ctx, 0], c.y[i, ctx, 0], "ko", ms=5, label="context")
        ax.set_title(f"held-out task {i} ({int(ctx.sum())} context points)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def plot_loss_curves(path: str | os.PathLike, curves: dict[str, np.ndarray], *,
                     trained_horizon: int | None = None) -> None:
    """Mean log10 training loss against inner step, one line per optimizer.

    Args:
        path: output PNG path.
        curves: ``{optimizer: [steps + 1]}`` mean log10 losses.
        trained_horizon: draw a vertical line at the horizon meta-trained on.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in curves.items():
        ax.plot(np.arange(len(curve)), curve, label=name)
    if trained_horizon is not None:
        ax.axvline(trained_horizon, color="grey", linestyle=":", label="trained horizon")
    ax.set_xlabel("inner step")
    ax.set_ylabel("mean log10 training loss")
    ax.legend()
    fig.tight_layout()
    _save(fig, path)
