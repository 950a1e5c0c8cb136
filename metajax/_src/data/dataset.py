"""The in-memory form of a few-shot dataset split."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class FewShotDataset(NamedTuple):
    """One split of a few-shot dataset: every class with the same number of examples.

    Attributes:
        images: ``uint8 [n_classes, n_examples, H, W, C]``, ready for ``jax.device_put`` and
            :func:`metajax.data.episodes`.
        name: e.g. ``"omniglot/vinyals/train"``.
        classes: one name per class (``images[i]`` is class ``classes[i]``).

    Examples:
        >>> import numpy as np
        >>> ds = FewShotDataset(np.zeros((3, 4, 8, 8, 1), np.uint8), "toy", ("a", "b", "c"))
        >>> ds.n_classes, ds.n_examples, ds.image_shape
        (3, 4, (8, 8, 1))
    """

    images: np.ndarray
    name: str
    classes: tuple[str, ...]

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return int(self.images.shape[0])

    @property
    def n_examples(self) -> int:
        """Examples per class."""
        return int(self.images.shape[1])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image."""
        return tuple(int(d) for d in self.images.shape[2:])


class FewShotSplits(NamedTuple):
    """The meta-train, meta-validation and meta-test splits of a dataset.

    Attributes:
        train: classes for meta-training.
        val: classes for meta-validation (``None`` when the split has none).
        test: classes for meta-testing (``None`` when not loaded).
    """

    train: FewShotDataset | None
    val: FewShotDataset | None
    test: FewShotDataset | None
