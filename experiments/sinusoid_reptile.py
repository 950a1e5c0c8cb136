"""Reptile on sinusoid regression vs scratch and pretrained."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optax

import metajax
from metajax.distributed import task_axis
from metajax.experiment import SinusoidConfig, run_sinusoid, sinusoid_mlp


@dataclasses.dataclass(frozen=True)
class Config(SinusoidConfig):
    """Reptile's sinusoid demo setup (Nichol et al., 2018): plain SGD inner loop, outer step
    size annealed linearly from ``outer_step_size`` to 0, 30k outer steps; our sampler's tasks
    (K=10 support + 10 query points, all used by the inner loop) and a meta-batch of 10.
    ``inner_optimizer="adam"`` uses the paper's Adam with beta1=0 at ``inner_lr`` instead (its
    few-shot classification setting). Test-time adaptation is SGD with ``inner_lr``; ~1-2 min.
    """

    num_steps: int = 30_000
    meta_batch: int = 10
    inner_steps: int = 10
    inner_optimizer: str = "sgd"  # sgd or adam
    outer_step_size: float = 1.0
    val_every: int = 3_000
    pretrain_steps: int = 30_000


def main(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Runs the experiment; writes metrics, summary and plots into ``out_dir`` if given."""
    inner_opts = {"sgd": optax.sgd, "adam": lambda lr: optax.adam(lr, b1=0.0)}
    if config.inner_optimizer not in inner_opts:
        raise ValueError(f"`inner_optimizer` must be one of {sorted(inner_opts)}; got "
                         f"{config.inner_optimizer!r}.")
    _, _, loss_fn, _ = sinusoid_mlp(config)
    learner = metajax.reptile(loss_fn, inner_steps=config.inner_steps,
                              inner_opt=inner_opts[config.inner_optimizer](config.inner_lr),
                              outer_step_size=config.outer_step_size,
                              total_steps=config.num_steps, axis_name=task_axis())
    return run_sinusoid(config, learner, name="reptile", out_dir=out_dir, progress=progress)
