"""Episode sampler: shapes, sampling without replacement, labels, determinism, jit, errors."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import TaskBatch, data

C, E, S = 12, 10, 4  # classes, examples per class, image side
T, N, K, Q = 24, 5, 2, 3  # tasks, ways, shots, queries


def _images() -> np.ndarray:
    """Image (c, e) holds c * E + e everywhere except a 255 marker in its top-left corner."""
    ids = np.arange(C * E, dtype=np.uint8).reshape(C, E)
    images = np.broadcast_to(ids[:, :, None, None, None], (C, E, S, S, 1)).copy()
    images[:, :, 0, 0, 0] = 255
    return images


IMAGES = _images()


def _ids(x) -> np.ndarray:
    """(class * E + example) of each image, read from an interior pixel."""
    return np.rint(np.asarray(x)[..., 1, 1, 0] * 255).astype(int)


@functools.cache
def _sampler(**options):
    return jax.jit(functools.partial(data.episodes, n_tasks=T, n_way=N, k_shot=K, n_query=Q,
                                     **options))


@pytest.fixture(scope="module")
def batch() -> TaskBatch:
    return _sampler()(jax.random.PRNGKey(0), jnp.asarray(IMAGES))


def test_shapes_dtypes_and_range(batch):
    (xs, ys), (xq, yq) = batch
    assert xs.shape == (T, N * K, S, S, 1) and xq.shape == (T, N * Q, S, S, 1)
    assert ys.shape == (T, N * K) and yq.shape == (T, N * Q)
    assert xs.dtype == jnp.float32 and ys.dtype == jnp.int32
    assert float(xs.min()) >= 0.0 and float(xs.max()) == 1.0  # the 255 marker


def test_classes_and_examples_without_replacement(batch):
    (xs, ys), (xq, yq) = batch
    ids = np.concatenate([_ids(xs), _ids(xq)], axis=1)  # [T, N * (K + Q)]
    labels = np.concatenate([np.asarray(ys), np.asarray(yq)], axis=1)
    for t in range(T):
        classes = ids[t] // E
        assert len(set(classes)) == N  # N distinct classes
        assert len(set(ids[t])) == N * (K + Q)  # no example twice within a class
        for label in range(N):  # one class per label, K support and Q query examples
            assert len(set(classes[labels[t] == label])) == 1
            assert (np.asarray(ys[t]) == label).sum() == K
            assert (np.asarray(yq[t]) == label).sum() == Q


def test_labels_are_permuted_across_episodes(batch):
    (xs, ys), _ = batch
    classes, labels = _ids(xs) // E, np.asarray(ys)
    labels_of_class = {}
    for c, y in zip(classes.ravel(), labels.ravel(), strict=True):
        labels_of_class.setdefault(int(c), set()).add(int(y))
    assert max(len(v) for v in labels_of_class.values()) > 1  # a class gets different labels
    assert any(list(row) != sorted(row) for row in labels)  # support order is shuffled
    assert len({tuple(row) for row in labels}) > 1


def test_reproducible_from_key_under_jit(batch):
    again = _sampler()(jax.random.PRNGKey(0), jnp.asarray(IMAGES))
    other = _sampler()(jax.random.PRNGKey(1), jnp.asarray(IMAGES))
    for a, b in zip(jax.tree.leaves(batch), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(batch.support[0], other.support[0])


def test_rotation_is_per_class_within_an_episode_and_invert(batch):
    rotated = _sampler(rotate=True, invert=True)(jax.random.PRNGKey(0), jnp.asarray(IMAGES))
    (xs, ys), (xq, yq) = rotated
    x = 1.0 - np.concatenate([np.asarray(xs), np.asarray(xq)], axis=1)  # undo invert
    y = np.concatenate([np.asarray(ys), np.asarray(yq)], axis=1)
    corners = {(0, 0): 0, (S - 1, 0): 1, (S - 1, S - 1): 2, (0, S - 1): 3}  # ccw quarter turns
    turns = np.full(y.shape, -1)
    for (r, c), k in corners.items():
        turns[np.isclose(x[..., r, c, 0], 1.0)] = k
    assert (turns >= 0).all()
    for t in range(T):
        for label in range(N):
            assert len(set(turns[t][y[t] == label])) == 1  # same rotation for a whole class
    assert len(set(turns.ravel())) == 4
    # Same classes and examples as without rotation: only the orientation changed.
    unrotated = np.concatenate([batch.support[0], batch.query[0]], axis=1)
    np.testing.assert_array_equal(_ids(x), _ids(unrotated))


def test_errors_name_the_argument():
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match=r"`n_way` \(13\) is larger than the number of classes"):
        data.episodes(key, IMAGES, 2, n_way=13, k_shot=1, n_query=1)
    with pytest.raises(ValueError, match=r"`k_shot` \+ `n_query` \(5 \+ 6\) is larger"):
        data.episodes(key, IMAGES, 2, n_way=2, k_shot=5, n_query=6)
    with pytest.raises(ValueError, match="`k_shot` must be an int >= 1"):
        data.episodes(key, IMAGES, 2, n_way=2, k_shot=0, n_query=1)
    with pytest.raises(ValueError, match="channel axis"):
        data.episodes(key, IMAGES[..., 0], 2, n_way=2, k_shot=1, n_query=1)
    with pytest.raises(ValueError, match="`rotate=True` needs square images"):
        data.episodes(key, IMAGES[:, :, :3], 2, n_way=2, k_shot=1, n_query=1, rotate=True)
