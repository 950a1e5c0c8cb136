"""R2-D2 (ridge-regression head) on synthetic 5-way 1-shot Gaussian classes vs baselines."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import metajax
from metajax.distributed import task_axis
from metajax.experiment import FewShotConfig, run_fewshot


@dataclasses.dataclass(frozen=True)
class Config(FewShotConfig):
    """R2-D2 (Bertinetto et al., 2019): closed-form ridge head, learned lambda and scale."""

    lam: float = 1.0
    learn_lam: bool = True
    scale: float = 1.0


def main(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Meta-trains R2-D2, evaluates it and the baselines on held-out tasks; returns the summary."""
    return run_fewshot(
        config, name="r2d2",
        make_learner=lambda embed, opt: metajax.r2d2(
            embed, opt, n_way=config.n_way, lam=config.lam, learn_lam=config.learn_lam,
            scale=config.scale, axis_name=task_axis()),
        make_task_loss=lambda embed: metajax.r2d2_loss(
            embed, n_way=config.n_way, lam=config.lam, learn_lam=config.learn_lam),
        out_dir=out_dir, progress=progress,
        extra={"options": {"lam": config.lam, "learn_lam": config.learn_lam,
                           "scale": config.scale}})
