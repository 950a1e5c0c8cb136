"""Attentive neural process (Kim et al., 2019) on GP regression, beside the exact GP."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from metajax.experiment import GPProcessConfig, gp_problem, run_process


@dataclasses.dataclass(frozen=True)
class Config(GPProcessConfig):
    """DeepMind's ANP notebook: 3-50 context points and up to 50 more targets, batch 16, Adam
    1e-4, encoders [128]x4, multi-head cross-attention (8 heads), a 128-d latent; here on the
    fixed kernel (lengthscale 0.4, sigma_f 1), so the exact GP is the oracle. Like the notebook
    it has no self-attention; ``--set self_attention=2`` adds Kim et al.'s two layers in each
    encoder (about 3x the CPU time per step)."""

    model: str = "anp"
    batch: int = 16
    max_context: int = 50
    max_extra_targets: int = 50
    self_attention: int = 0
    num_steps: int = 60_000
    val_every: int = 5_000


def main(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Runs the experiment; writes metrics, summary and plots into ``out_dir`` if given."""
    return run_process(config, gp_problem(config), out_dir=out_dir, progress=progress)
