"""Tests for the task samplers in metajax.tasks."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

import metajax
from metajax import tasks as mt

# Each sampler configuration is compiled once; eager sampling would compile every random op.
_sinusoid = jax.jit(functools.partial(mt.sinusoid, n_tasks=50, k_shot=4, n_query=7,
                                      return_params=True))
_linear = jax.jit(lambda key, noise_std: mt.linear_regression(
    key, 4, k_shot=6, n_query=8, dim=3, b_mean=1.0, noise_std=noise_std))


def _np(tree):
    return jax.tree.map(np.asarray, tree)


def test_sinusoid_shapes_ranges_and_function():
    batch, params = _np(_sinusoid(jax.random.PRNGKey(0)))
    assert isinstance(batch, metajax.TaskBatch)
    (xs, ys), (xq, yq) = batch.support, batch.query
    assert xs.shape == ys.shape == (50, 4, 1)
    assert xq.shape == yq.shape == (50, 7, 1)
    amp, phase = params.amplitude, params.phase
    assert amp.shape == phase.shape == (50,)
    assert amp.min() >= 0.1 and amp.max() <= 5.0
    assert phase.min() >= 0.0 and phase.max() <= np.pi
    for x in (xs, xq):
        assert x.min() >= -5.0 and x.max() <= 5.0
    # Samples spread over the ranges rather than collapsing to one value.
    assert amp.max() - amp.min() > 2.0 and xs.max() - xs.min() > 5.0
    for x, y in ((xs, ys), (xq, yq)):
        np.testing.assert_allclose(y, amp[:, None, None] * np.sin(x - phase[:, None, None]),
                                   rtol=1e-5, atol=1e-5)
    assert metajax.num_tasks(batch) == 50
    assert not np.allclose(xs[:, :4], xq[:, :4])  # support and query are different draws


def test_sinusoid_determinism_and_jit_equals_eager():
    key = jax.random.PRNGKey(3)
    a, b = _np(_sinusoid(key)), _np(_sinusoid(key))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    c = _np(_sinusoid(jax.random.PRNGKey(4)))
    assert not np.allclose(a[0].support[0], c[0].support[0])
    eager = _np(mt.sinusoid(key, 50, k_shot=4, n_query=7, return_params=True))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(eager), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


def test_linear_regression_noise_free_recovers_w_and_b():
    n_tasks, dim = 4, 3
    batch = _np(_linear(jax.random.PRNGKey(5), 0.0))
    (xs, ys), (xq, yq) = batch.support, batch.query
    assert xs.shape == (n_tasks, 6, dim) and ys.shape == (n_tasks, 6, 1)
    assert xq.shape == (n_tasks, 8, dim) and yq.shape == (n_tasks, 8, 1)
    assert xs.min() >= -5.0 and xs.max() <= 5.0
    slopes = []
    for t in range(n_tasks):
        design = np.concatenate([xs[t], np.ones((6, 1))], axis=1).astype(np.float64)
        coef, *_ = np.linalg.lstsq(design, ys[t, :, 0].astype(np.float64), rcond=None)
        w, b = coef[:dim], coef[dim]
        slopes.append(w)
        # The support points determine w and b; the query points lie on the same plane.
        np.testing.assert_allclose(xs[t] @ w + b, ys[t, :, 0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(xq[t] @ w + b, yq[t, :, 0], rtol=1e-4, atol=1e-4)
    assert not np.allclose(slopes[0], slopes[1])  # tasks differ


def test_linear_regression_noise_is_added():
    key = jax.random.PRNGKey(6)
    clean, noisy = _np(_linear(key, 0.0)), _np(_linear(key, 0.5))
    np.testing.assert_array_equal(clean.support[0], noisy.support[0])  # same x
    residual = np.concatenate([noisy.support[1] - clean.support[1],
                               noisy.query[1] - clean.query[1]], axis=1)
    assert 0.25 < residual.std() < 1.0


def test_split_key_distinct_and_deterministic():
    def data(seed, split):
        return np.asarray(jax.random.key_data(mt.split_key(seed, split)))

    keys = {s: data(0, s) for s in mt.SPLITS}
    assert set(keys) == {"train", "val", "test"}
    assert len({tuple(k.ravel().tolist()) for k in keys.values()}) == 3
    np.testing.assert_array_equal(data(0, "train"), keys["train"])
    assert not np.array_equal(data(1, "train"), keys["train"])
    # Different streams give different tasks.
    a = np.asarray(_sinusoid(mt.split_key(0, "train"))[0].support[0])
    b = np.asarray(_sinusoid(mt.split_key(0, "test"))[0].support[0])
    assert not np.allclose(a, b)


@pytest.mark.parametrize("split", ["training", "Train", "", None])
def test_split_key_rejects_bad_split(split):
    with pytest.raises(ValueError, match="`split`"):
        mt.split_key(0, split)


@pytest.mark.parametrize("sampler", [mt.sinusoid, mt.linear_regression])
@pytest.mark.parametrize("n_tasks", [0, -2, 2.5, "3"])
def test_bad_n_tasks(sampler, n_tasks):
    with pytest.raises(ValueError, match="`n_tasks`"):
        sampler(jax.random.PRNGKey(0), n_tasks)


@pytest.mark.parametrize("kwargs,name", [(dict(k_shot=0), "k_shot"), (dict(n_query=0), "n_query")])
def test_bad_sizes(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        mt.sinusoid(jax.random.PRNGKey(0), 2, **kwargs)
    with pytest.raises(ValueError, match=f"`{name}`"):
        mt.linear_regression(jax.random.PRNGKey(0), 2, **kwargs)
    with pytest.raises(ValueError, match="`dim`"):
        mt.linear_regression(jax.random.PRNGKey(0), 2, dim=0)
