"""Tests for metajax.make_evaluator / evaluate / mean_ci95 / summarize."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    classification_tasks,
    linear_logits,
    mlp_mse,
    mlp_params,
    regression_tasks,
    task,
)

import metajax

# Compiled once (per dtype) and shared by the tests below.
_EVAL_STEPS = (0, 1, 3)
_evaluate_mlp = jax.jit(metajax.make_evaluator(mlp_mse, steps=_EVAL_STEPS, lr=0.2))


def test_evaluator_matches_adapt_per_task_and_step(x64):
    params, tasks = mlp_params(seed=20), regression_tasks(seed=20)  # 3 tasks
    steps = _EVAL_STEPS
    out = _evaluate_mlp(params, tasks)
    assert set(out) == {"loss"}
    assert out["loss"].shape == (len(steps), 3)
    for i in range(3):
        support, query = task(tasks, i)
        # Step 0: the loss at the meta-parameters themselves.
        np.testing.assert_allclose(float(out["loss"][0, i]), float(mlp_mse(params, query)),
                                   rtol=1e-12)
        for row, k in enumerate(steps[1:], start=1):
            adapted = metajax.adapt(mlp_mse, params, support, steps=k, lr=0.2)
            np.testing.assert_allclose(float(out["loss"][row, i]),
                                       float(mlp_mse(adapted, query)), rtol=1e-10)
    # Adaptation changes the loss, so rows are distinguishable.
    assert not np.allclose(np.asarray(out["loss"][0]), np.asarray(out["loss"][2]))


def test_evaluate_chunked_and_reordered_equals_full_vmap(x64):
    params, tasks = mlp_params(seed=21), regression_tasks(seed=21)  # 3 tasks: chunks 2 + 1
    full = _evaluate_mlp(params, tasks)  # steps (0, 1, 3)
    out = metajax.evaluate(mlp_mse, params, tasks, steps=(3, 0), lr=0.2, chunk_size=2)
    assert sorted(out) == [0, 3]
    for row, s in ((2, 3), (0, 0)):
        assert set(out[s]) == {"loss"}
        assert isinstance(out[s]["loss"], np.ndarray) and out[s]["loss"].shape == (3,)
        np.testing.assert_allclose(out[s]["loss"], np.asarray(full["loss"][row]), rtol=1e-12)


def test_evaluator_with_aux_and_inner_opt(x64):
    n_tasks = 3
    params, tasks = classification_tasks(seed=22, n_tasks=n_tasks)
    loss_fn = metajax.losses.cross_entropy(linear_logits)
    ev = metajax.make_evaluator(loss_fn, steps=(0, 2), inner_opt=optax.sgd(0.5), has_aux=True)
    out = jax.jit(ev)(params, tasks)
    assert set(out) == {"loss", "accuracy"}
    assert out["accuracy"].shape == (2, n_tasks)
    for i in range(n_tasks):
        support, (xq, yq) = task(tasks, i)
        adapted = metajax.adapt(loss_fn, params, support, steps=2, lr=0.5, has_aux=True)
        for row, p in ((0, params), (1, adapted)):
            logits = np.asarray(xq) @ np.asarray(p["w"]) + np.asarray(p["b"])
            acc = np.mean(logits.argmax(-1) == np.asarray(yq))
            np.testing.assert_allclose(float(out["accuracy"][row, i]), acc, rtol=1e-6)
            np.testing.assert_allclose(float(out["loss"][row, i]),
                                       float(loss_fn(p, (xq, yq))[0]), rtol=1e-10)


@pytest.mark.parametrize("steps", [(), (-1,), (1.5,), (0, True)])
def test_bad_steps(steps):
    with pytest.raises(ValueError, match="`steps`"):
        metajax.make_evaluator(mlp_mse, steps=steps, lr=0.1)


def test_evaluator_rejects_non_taskbatch():
    ev = metajax.make_evaluator(mlp_mse, steps=(0,), lr=0.1)
    support = (jnp.zeros((2, 3, 2)), jnp.zeros((2, 3)))
    with pytest.raises(TypeError, match="TaskBatch"):
        ev(mlp_params(), (support, support))


def test_mean_ci95_by_hand():
    values = np.random.default_rng(23).normal(loc=2.0, scale=3.0, size=17)
    s = metajax.mean_ci95(values)
    mean = values.sum() / values.size
    sample_std = math.sqrt(((values - mean) ** 2).sum() / (values.size - 1))
    assert s.n == 17
    np.testing.assert_allclose(s.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(s.ci95, 1.96 * sample_std / math.sqrt(17), rtol=1e-12)
    # Accepts jax arrays and nested shapes (flattened).
    s2 = metajax.mean_ci95(jnp.asarray(values.reshape(1, 17)))
    np.testing.assert_allclose([s2.mean, s2.ci95], [s.mean, s.ci95], rtol=1e-6)
    assert s2.n == 17


def test_a_few_diverged_tasks_are_counted_not_hidden_in_a_nan():
    # 4 non-finite of 100,000: the mean and CI of the others, and the count
    values = np.random.default_rng(3).normal(size=100_000)
    bad = values.copy()
    bad[[5, 77, 901, 99_999]] = [np.nan, np.inf, -np.inf, np.nan]
    s, ref = metajax.mean_ci95(bad), metajax.mean_ci95(np.delete(values, [5, 77, 901, 99_999]))
    assert (s.mean, s.ci95, s.n, s.nonfinite) == (ref.mean, ref.ci95, 99_996, 4)
    assert ref.nonfinite == 0
    none = metajax.mean_ci95([np.nan, np.inf])
    assert math.isnan(none.mean) and none.n == 0 and none.nonfinite == 2
    from metajax._src.experiment.comparison import format_table

    table = format_table({"results": {"maml": {"1": s._asdict(), "5": ref._asdict()}}})
    assert f"{s.mean:.3f} ± {s.ci95:.3f} (4 of 100000 non-finite)" in table
    assert "nan" not in table


def test_mean_ci95_edge_cases():
    one = metajax.mean_ci95([4.5])
    assert one.mean == 4.5 and one.n == 1 and math.isnan(one.ci95)
    with pytest.raises(ValueError, match="empty"):
        metajax.mean_ci95([])


def test_summarize_structure_and_values():
    rng = np.random.default_rng(24)
    per_step = {s: {"loss": rng.normal(size=5), "accuracy": rng.uniform(size=5)}
                for s in (0, 5)}
    table = metajax.summarize(per_step)
    assert set(table) == {"loss", "accuracy"}
    for name in table:
        assert set(table[name]) == {"0", "5"}
        for s in (0, 5):
            entry = table[name][str(s)]
            assert set(entry) == {"mean", "ci95", "n", "nonfinite"}
            expected = metajax.mean_ci95(per_step[s][name])
            assert entry == expected._asdict()
            np.testing.assert_allclose(entry["mean"], per_step[s][name].mean(), rtol=1e-12)
            assert entry["n"] == 5
