"""metajax.data.digits: shapes, classes, Omniglot's pixel convention, errors."""

from __future__ import annotations

import functools
import importlib.util
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omniglot_data import shared_omniglot

from metajax import data

needs_sklearn = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                                   reason="metajax.data.digits needs scikit-learn")


@functools.cache
def _digits(**options):
    return data.digits(**options)


@needs_sklearn
def test_shapes_dtype_and_classes():
    splits = _digits()
    assert isinstance(splits, data.FewShotSplits)
    assert splits.train is None and splits.val is None
    test = splits.test
    assert isinstance(test, data.FewShotDataset) and test.name == "digits"
    assert test.images.shape == (10, 174, 28, 28, 1) and test.images.dtype == np.uint8
    assert test.classes == tuple("0123456789")
    assert (test.n_classes, test.n_examples, test.image_shape) == (10, 174, (28, 28, 1))


@needs_sklearn
def test_classes_hold_their_digit():
    """Nearest class mean on raw pixels separates the classes: the labels are right."""
    images = _digits().test.images.reshape(10, 174, -1).astype(np.float64)
    means = images[:, :87].mean(1)  # class means from the first half
    held_out = images[:, 87:]
    dist = ((held_out[:, :, None, :] - means[None, None]) ** 2).sum(-1)  # [10, 87, 10]
    accuracy = (dist.argmin(-1) == np.arange(10)[:, None]).mean()
    assert accuracy > 0.85, accuracy


@needs_sklearn
def test_omniglot_pixel_convention():
    """White background (255), dark strokes, centred digit; invert=True gives strokes = 1."""
    images = _digits().test.images
    assert np.all(images[:, :, :5] == 255) and np.all(images[:, :, -5:] == 255)  # margins
    assert np.all(images[:, :, :, :5] == 255) and np.all(images[:, :, :, -5:] == 255)
    assert np.median(images) == 255
    darkest = images.reshape(10, 174, -1).min(-1)
    assert darkest.max() <= 10  # every image has full-ink strokes
    ink = 1.0 - images / 255.0
    assert 0.07 < ink.mean() < 0.13  # Omniglot at 28x28: 0.09
    batch = data.episodes(jax.random.PRNGKey(0), jnp.asarray(images), 2, n_way=5, k_shot=1,
                          n_query=2, invert=True)
    x = np.asarray(batch.query[0])
    assert x[..., 0, 0, 0].max() == 0.0 and x.max() > 0.95  # background 0, strokes 1


@needs_sklearn
def test_polarity_matches_real_omniglot(tmp_path_factory):
    chars = shared_omniglot(tmp_path_factory)[0]  # skips without the data
    omni = chars.images[:200].astype(np.float64) / 255.0
    digit = _digits().test.images[..., 0].astype(np.float64) / 255.0
    for images in (omni, digit):  # same convention: background white, a little dark ink
        assert np.median(images) == 1.0
        assert images[..., 0, 0].mean() > 0.99
        assert 0.05 < (1.0 - images).mean() < 0.15


@needs_sklearn
def test_frame_filling_digit_and_fewer_examples():
    test = _digits(digit_size=28, examples_per_class=20).test
    assert test.images.shape == (10, 20, 28, 28, 1)
    ink = 1.0 - test.images / 255.0
    assert ink.mean() > 0.2  # the digit now fills the frame
    small = _digits(image_size=8, digit_size=8).test  # the original 8x8 pixels, inverted
    assert small.images.shape == (10, 174, 8, 8, 1)


@needs_sklearn
@pytest.mark.parametrize(("options", "name"), [
    ({"image_size": 0}, "image_size"),
    ({"image_size": 28.0}, "image_size"),
    ({"digit_size": 29}, "digit_size"),
    ({"digit_size": 0}, "digit_size"),
    ({"examples_per_class": 175}, "examples_per_class"),
    ({"examples_per_class": 0}, "examples_per_class"),
    ({"examples_per_class": True}, "examples_per_class"),
])
def test_bad_arguments_are_named(options, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        data.digits(**options)


def test_missing_scikit_learn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        data.digits()
