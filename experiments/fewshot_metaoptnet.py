"""MetaOptNet (SVM head) on synthetic 5-way 1-shot Gaussian classes vs scratch and Baseline++."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import metajax
from metajax.distributed import task_axis
from metajax.experiment import FewShotConfig, run_fewshot


@dataclasses.dataclass(frozen=True)
class Config(FewShotConfig):
    """MetaOptNet-SVM (Lee et al., 2019): Crammer-Singer SVM dual by unrolled FISTA."""

    C: float = 0.1
    dual_iters: int = 30
    scale: float = 1.0


def main(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Meta-trains MetaOptNet, evaluates it and the baselines; returns the summary."""
    options = dict(n_way=config.n_way, C=config.C, dual_iters=config.dual_iters)
    return run_fewshot(
        config, name="metaoptnet",
        make_learner=lambda embed, opt: metajax.metaoptnet(embed, opt, scale=config.scale,
                                                           **options, axis_name=task_axis()),
        make_task_loss=lambda embed: metajax.metaoptnet_loss(embed, **options),
        out_dir=out_dir, progress=progress, extra={"options": {**options, "scale": config.scale}})
