"""First-order MAML on sinusoid regression vs scratch and pretrained."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optax

import metajax
from metajax.distributed import task_axis
from metajax.experiment import SinusoidConfig, run_sinusoid, sinusoid_mlp


@dataclasses.dataclass(frozen=True)
class Config(SinusoidConfig):
    """MAML's sinusoid setup (App. C: K=10, 1 step of lr 0.01, meta-batch 25, Adam 1e-3, 70k
    steps) with first-order meta-gradients (Finn et al., 2017, Sec. 5.2); ~1 min on 2 cores."""


def main(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Runs the experiment; writes metrics, summary and plots into ``out_dir`` if given."""
    _, _, loss_fn, _ = sinusoid_mlp(config)
    learner = metajax.fomaml(loss_fn, optax.adam(config.outer_lr),
                             inner_steps=config.inner_steps, inner_lr=config.inner_lr,
                             axis_name=task_axis())
    return run_sinusoid(config, learner, name="fomaml", out_dir=out_dir, progress=progress)
