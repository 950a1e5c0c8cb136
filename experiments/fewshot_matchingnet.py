"""Matching Networks on synthetic 5-way 1-shot Gaussian classes vs scratch and Baseline++."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import metajax
from metajax.distributed import task_axis
from metajax.experiment import FewShotConfig, run_fewshot


@dataclasses.dataclass(frozen=True)
class Config(FewShotConfig):
    """Matching Networks (Vinyals et al., 2016) without full-context embeddings."""

    scale: float = 1.0  # attention inverse temperature; 1 as in the paper


def main(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Meta-trains a matching network, evaluates it and the baselines; returns the summary."""
    options = dict(n_way=config.n_way, scale=config.scale)
    return run_fewshot(
        config, name="matchingnet",
        make_learner=lambda embed, opt: metajax.matchingnet(embed, opt, **options,
                                                            axis_name=task_axis()),
        make_task_loss=lambda embed: metajax.matchingnet_loss(embed, **options),
        out_dir=out_dir, progress=progress, extra={"options": options})
