"""`metajax report` and gradient clipping."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metajax import cli
from metajax.experiment import RunWriter, adam_with_clipping


def _fake_run(path, name, maml_loss):
    writer = RunWriter(path / name)
    writer.write("config.json", {"experiment": "sinusoid_maml", "config": {}})
    writer.write("summary.json", {"metric": "loss", "results": {
        "maml": {"0": {"mean": 3.0, "ci95": 0.1, "n": 10},
                 "1": {"mean": maml_loss, "ci95": 0.05, "n": 10}}}})
    for step in (10, 20):
        writer.log({"method": "maml", "step": step, "loss": maml_loss * 30 / step})
    return writer.out_dir


def test_report_prints_runs_side_by_side_and_plots(tmp_path, capsys):
    a, b = _fake_run(tmp_path, "a", 0.5), _fake_run(tmp_path, "b", 0.25)
    plot = tmp_path / "curves.png"
    assert cli.main(["report", str(a), str(b), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "| a | sinusoid_maml | maml | loss | 3 ± 0.1 | 0.5 ± 0.05 |" in out
    assert "| b | sinusoid_maml | maml | loss | 3 ± 0.1 | 0.25 ± 0.05 |" in out
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_report_of_unfinished_run_names_it(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path), "--no-plot"]) == 2
    assert "has no summary.json" in capsys.readouterr().err


def test_report_prints_the_table_even_when_the_plot_cannot_be_written(tmp_path, capsys):
    a = _fake_run(tmp_path, "a", 0.5)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["report", str(a), "--plot", str(blocker / "curves.png")]) == 1
    captured = capsys.readouterr()
    assert "| a | sinusoid_maml | maml | loss | 3 ± 0.1 | 0.5 ± 0.05 |" in captured.out
    assert "could not write the plot" in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize("text,message", [("{broken", "is not valid JSON"),
                                          ('{"metric": "loss"}', 'has no "results" table')])
def test_report_of_a_damaged_summary_names_the_file(tmp_path, capsys, text, message):
    a = _fake_run(tmp_path, "a", 0.5)
    (a / "summary.json").write_text(text)
    assert cli.main(["report", str(a), "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert f"{a / 'summary.json'} " in err and message in err


def test_report_shows_runs_with_horizon_and_one_number_rows(tmp_path, capsys):
    writer = RunWriter(tmp_path / "lopt")
    writer.write("summary.json", {"metric": "final_loss", "results": {
        "mlp": {"1x": {"mean": 0.2, "ci95": 0.01, "n": 4}}}})
    writer2 = RunWriter(tmp_path / "np")
    writer2.write("summary.json", {"metric": "log_lik", "results": {
        "cnp": {"mean": -0.8, "ci95": 0.02, "n": 4}}})
    assert cli.main(["report", str(writer.out_dir), str(writer2.out_dir), "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "| lopt | ? | mlp | final_loss | 0.2 ± 0.01 |" in out
    assert "| np | ? | cnp | log_lik |" in out and "-0.8 ± 0.02 |" in out


def test_clipping_bounds_the_update_norm():
    grads = {"w": jnp.full((4,), 100.0)}
    clipped = adam_with_clipping(1.0, clip_grad_norm=1.0)
    _, state = clipped.update(grads, clipped.init(grads))
    # Adam's first moment after one step is (1 - b1) * clipped gradient: norm 0.1 * 1.0.
    mu = state[1][0].mu["w"]
    np.testing.assert_allclose(float(optax.global_norm(mu)), 0.1, rtol=1e-5)
    with pytest.raises(ValueError, match="clip_grad_norm"):
        adam_with_clipping(1.0, clip_grad_norm=-1.0)
