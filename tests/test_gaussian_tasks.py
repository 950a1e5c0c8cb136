"""Tests for the synthetic few-shot classification family metajax.tasks.gaussian_classes."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

import metajax
from metajax import tasks as mt

_SIZES = dict(n_way=4, k_shot=3, n_query=20, dim=10, n_informative=3)
# Compiled once for the whole module (eager sampling compiles every random op).
_sample = jax.jit(functools.partial(mt.gaussian_classes, n_tasks=6, **_SIZES))


def _np(tree):
    return jax.tree.map(np.asarray, tree)


def test_shapes_dtypes_and_class_counts():
    batch = _np(_sample(jax.random.PRNGKey(0)))
    assert isinstance(batch, metajax.TaskBatch)
    (xs, ys), (xq, yq) = batch.support, batch.query
    assert xs.shape == (6, 12, 10) and ys.shape == (6, 12)
    assert xq.shape == (6, 80, 10) and yq.shape == (6, 80)
    assert xs.dtype == np.float32 and ys.dtype == np.int32 and yq.dtype == np.int32
    for t in range(6):  # every class: exactly k_shot support and n_query query examples
        assert np.bincount(ys[t], minlength=4).tolist() == [3] * 4
        assert np.bincount(yq[t], minlength=4).tolist() == [20] * 4


def test_labels_permuted_per_task_and_deterministic_by_key():
    a = _np(_sample(jax.random.PRNGKey(1)))
    b = _np(_sample(jax.random.PRNGKey(1)))
    c = _np(_sample(jax.random.PRNGKey(2)))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.support[0], c.support[0])
    # Example order (hence the position of each label) is shuffled independently per task.
    orders = {tuple(row) for row in a.query[1]}
    assert len(orders) == 6
    assert not np.array_equal(a.support[1][0], np.tile(np.arange(4), 3))


def test_generative_structure_through_the_mixing_matrix():
    """Un-mixing with the shared matrix recovers class-dependent informative coordinates with
    within-class spread ``class_std`` (0.7) and class-independent nuisance coordinates of spread
    ``nuisance_std`` (1.5)."""
    q = mt.mixing_matrix(10, 0)
    np.testing.assert_allclose(q @ q.T, np.eye(10), atol=1e-6)
    x, y = _np(_sample(jax.random.PRNGKey(3))).query
    z = x @ q.T  # back to latent coordinates
    inf, nuis = z[..., :3], z[..., 3:]
    means = np.stack([[inf[t][y[t] == c].mean(0) for c in range(4)] for t in range(6)])
    resid = inf - np.take_along_axis(means, y[..., None], axis=1)
    assert abs(resid.std() * np.sqrt(20 / 19) - 0.7) < 0.05
    assert abs(nuis.std() - 1.5) < 0.08
    nuis_means = np.stack([[nuis[t][y[t] == c].mean(0) for c in range(4)] for t in range(6)])
    assert np.abs(nuis_means).max() < 1.5  # nuisance carries no class signal (se ~0.34)
    assert means.std() > 0.5  # informative coordinates do: centres ~ N(0, 1)
    # Class centres differ between tasks (no global classes).
    assert np.linalg.norm(means[0, 0] - means[1, 0]) > 0.1


@pytest.mark.parametrize("kwargs, name", [
    (dict(n_way=1), "n_way"),
    (dict(k_shot=0), "k_shot"),
    (dict(n_query=2.5), "n_query"),
    (dict(dim=4, n_informative=5), "n_informative"),
    (dict(class_std=-1.0), "class_std"),
])
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        mt.gaussian_classes(jax.random.PRNGKey(0), 2, **kwargs)
