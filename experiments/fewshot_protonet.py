"""ProtoNet on synthetic 5-way 1-shot Gaussian classes vs scratch and Baseline++ (accuracy)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import metajax
from metajax.distributed import task_axis
from metajax.experiment import FewShotConfig, run_fewshot


@dataclasses.dataclass(frozen=True)
class Config(FewShotConfig):
    """Prototypical Networks (Snell et al., 2017) with an MLP embedding; see FewShotConfig."""

    distance: str = "sqeuclidean"


def main(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Meta-trains ProtoNet, evaluates it and the baselines; returns the summary."""
    options = dict(n_way=config.n_way, distance=config.distance)
    return run_fewshot(
        config, name="protonet",
        make_learner=lambda embed, opt: metajax.protonet(embed, opt, **options,
                                                         axis_name=task_axis()),
        make_task_loss=lambda embed: metajax.protonet_loss(embed, **options),
        out_dir=out_dir, progress=progress, extra={"options": options})
