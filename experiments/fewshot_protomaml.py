"""ProtoMAML on synthetic 5-way 1-shot Gaussian classes vs scratch and Baseline++ (accuracy)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import metajax
from metajax.distributed import task_axis
from metajax.experiment import FewShotConfig, PositiveRate, Steps, run_fewshot


@dataclasses.dataclass(frozen=True)
class Config(FewShotConfig):
    """ProtoMAML (Triantafillou et al., 2020): the linear head starts at the prototypes, then
    ``inner_steps`` SGD steps of ``inner_lr`` adapt the whole MLP; ``first_order`` is
    fo-Proto-MAML. Test episodes adapt with the same steps and rate."""

    inner_steps: Steps = 1
    inner_lr: PositiveRate = 0.1
    first_order: bool = False


def main(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Meta-trains ProtoMAML, evaluates it and the baselines; returns the summary."""
    options = dict(n_way=config.n_way, inner_steps=config.inner_steps, inner_lr=config.inner_lr,
                   first_order=config.first_order)
    return run_fewshot(
        config, name="protomaml",
        make_learner=lambda embed, opt: metajax.protomaml(embed, opt, **options,
                                                          axis_name=task_axis()),
        make_task_loss=lambda embed: metajax.protomaml_loss(embed, **options),
        out_dir=out_dir, progress=progress, extra={"options": options})
