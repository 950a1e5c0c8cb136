"""A learned optimizer that learns how to train linear regression (y = w . x + b + noise, few
points), against tuned SGD, momentum and Adam and the least-squares optimum."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from metajax import lopt
from metajax.experiment import LOptConfig, run_lopt


@dataclasses.dataclass(frozen=True)
class Config(LOptConfig):
    """10 input features with per-task scales log-uniform in [0.5, 2], 20 points, noise 0.1;
    full-batch MSE. Few steps: 20 inner steps (within 100 every tuned optimizer reaches the
    least-squares optimum), backpropagated through whole (20-step) episodes; 8,000 outer steps
    (under a minute of training on 2 CPU cores)."""

    dim: int = 10
    n_points: int = 20
    noise_std: float = 0.1
    num_steps: int = 20
    truncation: int = 20
    outer_steps: int = 8_000
    val_every: int = 1_000


def main(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Runs the experiment; writes metrics, summary and plots into ``out_dir`` if given."""
    family = lopt.linear_regression_family(dim=config.dim, n_points=config.n_points,
                                           noise_std=config.noise_std)
    return run_lopt(config, family, out_dir=out_dir, progress=progress)
