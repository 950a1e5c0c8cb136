"""Chunked evaluation (one compiled call per chunk) and evaluate_methods."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import classification_tasks, linear_logits, mlp_mse, mlp_params, regression_tasks

import metajax
from metajax._src.core.chunking import map_task_chunks
from metajax.experiment import evaluate_methods


@pytest.mark.parametrize("chunk_size", [None, 1, 2, 3, 7, 100])
def test_map_task_chunks_equals_one_call(chunk_size):
    tasks = regression_tasks(seed=3, n_tasks=7)
    calls = []

    def fn(t):
        calls.append(metajax.num_tasks(t))
        return {"a": t.support[1].sum(-1), "b": jnp.stack([t.query[1][:, 0]] * 2)}  # axes 0 / 1

    full = fn(tasks)
    del calls[:]
    out_a = map_task_chunks(lambda t: fn(t)["a"], tasks, chunk_size=chunk_size)
    out_b = map_task_chunks(lambda t: fn(t)["b"], tasks, chunk_size=chunk_size, out_axis=1)
    np.testing.assert_allclose(out_a, full["a"], rtol=1e-6)
    np.testing.assert_allclose(out_b, full["b"], rtol=1e-6)
    # Every call sees the same number of tasks (the last chunk is padded): one compilation.
    expected = 7 if chunk_size is None or chunk_size >= 7 else chunk_size
    assert set(calls) == {expected}


@pytest.mark.parametrize("chunk_size", [0, -1, 2.5, True, "4"])
def test_map_task_chunks_rejects_bad_chunk_size(chunk_size):
    with pytest.raises(ValueError, match="`chunk_size`"):
        map_task_chunks(lambda t: t.support[0], regression_tasks(), chunk_size=chunk_size)


def test_evaluate_methods_chunked_equals_unchunked_and_matches_evaluate():
    params = mlp_params(seed=4)
    tasks = regression_tasks(seed=4, n_tasks=5)
    methods = {"meta": params, "other": jax.tree.map(lambda p: 0.5 * p, params)}
    lrs = {"meta": 0.1, "other": jax.tree.map(lambda p: 0.05, params)}  # scalar and pytree
    whole = evaluate_methods(mlp_mse, methods, lrs, tasks, steps=(0, 2))
    chunked = evaluate_methods(mlp_mse, methods, lrs, tasks, steps=(0, 2), chunk_size=2)
    assert list(whole) == ["meta", "other"]
    for method in methods:
        for s in ("0", "2"):
            a, b = whole[method]["loss"][s], chunked[method]["loss"][s]
            assert a["n"] == b["n"] == 5
            assert a["mean"] == pytest.approx(b["mean"], rel=1e-5)
            assert a["ci95"] == pytest.approx(b["ci95"], rel=1e-4)
    direct = metajax.evaluate(mlp_mse, params, tasks, steps=(0, 2), lr=0.1)
    assert whole["meta"]["loss"]["2"]["mean"] == pytest.approx(float(direct[2]["loss"].mean()),
                                                               rel=1e-5)


def test_evaluate_methods_with_aux_reports_every_metric():
    params, tasks = classification_tasks(seed=1)
    loss = metajax.losses.cross_entropy(linear_logits)
    out = evaluate_methods(loss, {"m": params}, {"m": 0.1}, tasks, steps=(0, 1), has_aux=True)
    assert set(out["m"]) == {"loss", "accuracy"}
    assert all(0.0 <= out["m"]["accuracy"][s]["mean"] <= 1.0 for s in ("0", "1"))


def test_evaluate_methods_needs_a_step_size_per_method():
    with pytest.raises(ValueError, match=r"`lrs` has no step size for method\(s\) \['b'\]"):
        evaluate_methods(mlp_mse, {"a": mlp_params(), "b": mlp_params()}, {"a": 0.1},
                         regression_tasks(), steps=(0, 1))


def test_evaluate_methods_with_a_method_s_own_inner_optimizer():
    """Reptile-style: a method adapts with its own optimizer (no `lrs` entry needed)."""
    import optax

    params, tasks = mlp_params(seed=5), regression_tasks(seed=5, n_tasks=4)
    methods = {"own": params, "sgd": params}
    sgd = evaluate_methods(mlp_mse, methods, {"sgd": 0.1}, tasks, steps=(0, 3),
                           inner_opts={"own": optax.sgd(0.1)})
    assert sgd["own"]["loss"]["3"]["mean"] == pytest.approx(sgd["sgd"]["loss"]["3"]["mean"],
                                                            rel=1e-5)
    adam = evaluate_methods(mlp_mse, {"own": params}, {}, tasks, steps=(0, 3),
                            inner_opts={"own": optax.adam(0.01, b1=0.0)})
    direct = metajax.evaluate(mlp_mse, params, tasks, steps=(3,),
                              inner_opt=optax.adam(0.01, b1=0.0))
    assert adam["own"]["loss"]["3"]["mean"] == pytest.approx(float(direct[3]["loss"].mean()),
                                                             rel=1e-5)
    assert adam["own"]["loss"]["3"]["mean"] != pytest.approx(sgd["own"]["loss"]["3"]["mean"])


def test_a_cached_pretraining_trains_once_and_restores_bit_exactly(tmp_path):
    from metajax.experiment import (
        OmniglotGradientConfig,
        omniglot_classifier_pretraining,
        run_pretraining,
    )

    images = jax.random.randint(jax.random.PRNGKey(0), (6, 3, 28, 28, 1), 0, 256, jnp.int32)
    images = images.astype(jnp.uint8)
    config = OmniglotGradientConfig(features=4, n_way=2, cross_domain_way=2, pretrain_steps=4,
                                    pretrain_batch=5, pretrain_cache=str(tmp_path))

    def pretrain(config):
        records = []
        params, result = run_pretraining(omniglot_classifier_pretraining(config, images),
                                         key=jax.random.PRNGKey(3), num_steps=4, log_every=2,
                                         steps_per_call=2, on_record=records.append,
                                         progress=False)
        return params, result, records

    first, first_result, first_records = pretrain(config)
    assert [r["step"] for r in first_records] == [2, 4]  # trained
    (folder,) = tmp_path.iterdir()
    second, second_result, second_records = pretrain(config)
    assert second_records == []  # restored, not trained again
    assert second_result.history == first_result.history
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True):
        np.testing.assert_array_equal(a, b)
    assert first["head"]["kernel"].shape == (4, 2)  # to_init's zero n_way head
    # Another pre-training has a cache entry of its own.
    for change in ({"features": 3}, {"seed": 1}, {"pretrain_lr": 0.1}, {"split": "maml"}):
        other = omniglot_classifier_pretraining(dataclasses.replace(config, **change), images)
        assert other.checkpointer.directory.parent == tmp_path
        assert other.checkpointer.directory != folder
