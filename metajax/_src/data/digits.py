"""Handwritten digits (scikit-learn's bundled 8x8 set) as an Omniglot-like cross-domain test set."""

from __future__ import annotations

import numpy as np

from metajax._src.core.checks import check_int
from metajax._src.data.dataset import FewShotDataset, FewShotSplits

N_CLASSES = 10
SOURCE_SIZE = 8
SOURCE_MAX = 16.0  # pixel values of load_digits are 0 (background) .. 16 (ink)


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(
            "metajax.data.digits() reads scikit-learn's bundled digits data set (no download); "
            "install scikit-learn: pip install scikit-learn (or pip install 'metajax[digits]')"
        ) from err
    bunch = load_digits()
    return np.asarray(bunch.images, np.float64), np.asarray(bunch.target)


def digits(
    *,
    image_size: int = 28,
    digit_size: int = 16,
    examples_per_class: int | None = None,
) -> FewShotSplits:
    """The 10 handwritten digits of ``sklearn.datasets.load_digits``, drawn like Omniglot.

    A cross-domain test set for models meta-trained on Omniglot: 1797 8x8 digits (values
    0..16, about 180 per class) from scikit-learn's bundled copy of the UCI optical digits
    data; nothing is downloaded. Each image is scaled so its darkest stroke is full ink,
    upsampled with Lanczos (Pillow) to ``digit_size`` pixels and centred on a white
    ``image_size`` canvas. With the defaults (a 16-pixel digit on 28x28) the strokes span
    about the same box as Omniglot characters at 28x28 (rows and columns 6-21 on average for
    both) with about the same mean ink per pixel (0.10 against Omniglot's 0.09).

    The pixel convention is the Omniglot loader's: ``uint8`` with a white background (255) and
    dark strokes (0), so :func:`metajax.data.episodes` with ``invert=True`` gives strokes = 1
    on a 0 background for both data sets, and a network meta-trained on Omniglot sees digits
    in the same polarity.

    Args:
        image_size: side of the square output images (28 as Omniglot in most papers).
        digit_size: side of the upsampled digit inside the image (``image_size`` fills the
            frame).
        examples_per_class: keep the first this many images of each class (in the data set's
            order); default: the smallest class size (174), so every class has as many.

    Returns:
        :class:`FewShotSplits` with ``train=None``, ``val=None`` and ``test`` a
        :class:`FewShotDataset` named ``"digits"`` with classes ``"0"`` .. ``"9"`` and images
        ``uint8 [10, examples_per_class, image_size, image_size, 1]``. All ten classes are
        test classes: the set is meant for evaluation only (at most 10-way episodes).

    Raises:
        ImportError: scikit-learn is not installed (the message says ``pip install
            scikit-learn``).
        ValueError: a bad argument (named), e.g. ``digit_size`` larger than ``image_size``.

    Examples:
        >>> from metajax import data
        >>> test = data.digits().test
        >>> test.images.shape, test.images.dtype, test.classes[:3]
        ((10, 174, 28, 28, 1), dtype('uint8'), ('0', '1', '2'))
    """
    image_size = check_int("image_size", image_size, 1)
    digit_size = check_int("digit_size", digit_size, 1, image_size)
    images, labels = _load_digits()
    counts = np.bincount(labels, minlength=N_CLASSES)
    smallest = int(counts.min())
    if examples_per_class is None:
        examples_per_class = smallest
    examples_per_class = check_int("examples_per_class", examples_per_class, 1, smallest)

    from PIL import Image

    out = np.empty((N_CLASSES, examples_per_class, image_size, image_size, 1), np.uint8)
    low = (image_size - digit_size) // 2
    for c in range(N_CLASSES):
        for j, index in enumerate(np.flatnonzero(labels == c)[:examples_per_class]):
            ink = images[index] / SOURCE_MAX
            ink = ink / max(float(ink.max()), 1e-12)  # the darkest stroke is full ink
            if digit_size != SOURCE_SIZE:
                resized = Image.fromarray(ink.astype(np.float32)).resize(  # mode "F"
                    (digit_size, digit_size), resample=Image.LANCZOS)
                ink = np.asarray(resized, np.float64)
            canvas = np.zeros((image_size, image_size))
            canvas[low:low + digit_size, low:low + digit_size] = np.clip(ink, 0.0, 1.0)
            out[c, j, :, :, 0] = np.rint(255.0 * (1.0 - canvas)).astype(np.uint8)
    test = FewShotDataset(images=out, name="digits",
                          classes=tuple(str(c) for c in range(N_CLASSES)))
    return FewShotSplits(train=None, val=None, test=test)
