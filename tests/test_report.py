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


def test_clipping_bounds_the_update_norm():
    grads = {"w": jnp.full((4,), 100.0)}
    clipped = adam_with_clipping(1.0, clip_grad_norm=1.0)
    _, state = clipped.update(grads, clipped.init(grads))
    # Adam's first moment after one step is (1 - b1) * clipped gradient: norm 0.1 * 1.0.
    mu = state[1][0].mu["w"]
    np.testing.assert_allclose(float(optax.global_norm(mu)), 0.1, rtol=1e-5)
    with pytest.raises(ValueError, match="clip_grad_norm"):
        adam_with_clipping(1.0, clip_grad_norm=-1.0)
