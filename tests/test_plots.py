"""Run plots: accuracy against training wall time."""

from metajax.experiment import plots

PNG = b"\x89PNG\r\n\x1a\n"


def test_metric_vs_time_draws_runs_with_timed_validation_records(tmp_path):
    timed = [{"step": 1, "train_seconds": 30.0, "val_accuracy": 0.4},
             {"step": 2, "train_seconds": 60.0, "loss": 1.0},  # no validation: skipped
             {"step": 3, "train_seconds": 90.0, "val_accuracy": 0.7}]
    untimed = [{"step": 1, "val_accuracy": 0.5}]  # written before train_seconds existed
    path = tmp_path / "t.png"
    assert plots.plot_metric_vs_time({"a": timed, "b": timed[:1], "old": untimed}, path,
                                     title="t") == 2
    assert path.read_bytes()[:8] == PNG
    assert plots.plot_metric_vs_time({"old": untimed}, tmp_path / "none.png") == 0
    assert (tmp_path / "none.png").read_bytes()[:8] == PNG
