"""Latent neural process (Garnelo et al., 2018b) on GP regression, beside the exact GP."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from metajax.experiment import GPProcessConfig, gp_problem, run_process


@dataclasses.dataclass(frozen=True)
class Config(GPProcessConfig):
    """The CNP's setup with a 128-d global latent and its deterministic path (the "NP" of
    Kim et al., 2019), trained on the ELBO; held-out scores mix 32 latent draws."""

    model: str = "np"
    num_steps: int = 40_000


def main(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Runs the experiment; writes metrics, summary and plots into ``out_dir`` if given."""
    return run_process(config, gp_problem(config), out_dir=out_dir, progress=progress)
