"""A learned optimizer that trains an MLP classifier on Omniglot images (ordinary
classification), against tuned SGD, momentum and Adam.

Data: ``data_root`` (or ``$METAJAX_DATA``) must hold ``omniglot/images_background.zip``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import numpy as np

from metajax import lopt
from metajax.experiment import ConfigError, Count, LOptConfig, Rule, Size, run_lopt


@dataclasses.dataclass(frozen=True)
class Config(LOptConfig):
    """The first ``n_classes`` background characters at ``image_size`` pixels square, flattened
    (ink = 1); 15 images of each for training, the other 5 as the test split. An MLP with
    ``mlp_hidden`` ReLU layers, mini-batches of 128; each task is a fresh initialisation; 100
    inner steps, truncations of 20, mean training loss as the meta-objective; 1,000 outer
    steps (about 20 minutes on 2 CPU cores)."""

    n_classes: Annotated[int, Rule(low=2, high=964)] = 20  # of the 964 background characters
    image_size: Annotated[int, Rule(low=4, high=105)] = 14
    mlp_hidden: Size = (32,)
    batch_size: Count = 128
    meta_loss: str = "mean"
    n_tasks: int = 8
    outer_steps: int = 1_000
    data_root: str = ""  # directory holding omniglot/; "" = $METAJAX_DATA
    cache_dir: str = ""  # decoded-image cache; "" = $METAJAX_CACHE or ~/.cache/metajax

    def validate(self):
        super().validate()
        if self.batch_size > 15 * self.n_classes:
            raise ConfigError(f"batch_size: expected at most 15 * n_classes = "
                              f"{15 * self.n_classes} (the training images); got "
                              f"{self.batch_size}.")


def main(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Runs the experiment; writes metrics, summary and plots into ``out_dir`` if given."""
    from metajax.data import load_omniglot_characters

    chars = load_omniglot_characters(config.data_root or None, image_size=config.image_size,
                                     cache_dir=config.cache_dir or None)
    images = 1.0 - chars.images[: config.n_classes].astype(np.float32) / 255.0  # [C, 20, S, S]
    labels = np.broadcast_to(np.arange(config.n_classes)[:, None], images.shape[:2])
    family = lopt.mlp_classification_family(
        images[:, :15].reshape(-1, images[0, 0].size), labels[:, :15].ravel(),
        test_images=images[:, 15:].reshape(-1, images[0, 0].size),
        test_labels=labels[:, 15:].ravel(), hidden=config.mlp_hidden,
        batch_size=config.batch_size)
    return run_lopt(config, family, out_dir=out_dir, progress=progress)
