"""Conditional neural process (Garnelo et al., 2018a) on GP regression, beside the exact GP."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from metajax.experiment import GPProcessConfig, gp_problem, run_process


@dataclasses.dataclass(frozen=True)
class Config(GPProcessConfig):
    """DeepMind's CNP notebook: EQ kernel (lengthscale 0.4, sigma_f 1), 3-10 context points,
    batch 64, Adam 1e-4, encoder [128]x4, decoder [128, 128, 2]."""

    model: str = "cnp"
    num_steps: int = 40_000


def main(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Runs the experiment; writes metrics, summary and plots into ``out_dir`` if given."""
    return run_process(config, gp_problem(config), out_dir=out_dir, progress=progress)
