"""ProtoMAML on Omniglot (Conv4) vs scratch, Baseline++ and Baseline.

ProtoMAML (Triantafillou et al., 2020, the strongest simple baseline of Meta-Dataset) makes
MAML's output layer task-specific: it starts at the linear layer equivalent to the support
set's prototypes (``w_k = 2 c_k``, ``b_k = -|c_k|^2``), and ``inner_steps`` SGD steps then
adapt the whole Conv4. Training episodes are ``train_way``-way as for ProtoNets (default
``n_way``: the test way), tests 5-way 1-shot with 15 queries per class after the same number
of steps; CPU-sized defaults (a few minutes on 2 cores). Other settings and the rows
(``scratch``, ``baseline++_raw``, ``baseline``, ``baseline++_meta``) as in
``omniglot_protonet``; data and splits as in ``omniglot_maml``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import metajax
from metajax.distributed import task_axis
from metajax.experiment import (
    OmniglotMetricConfig,
    PositiveRate,
    Steps,
    run_omniglot_metric,
)


@dataclasses.dataclass(frozen=True)
class Config(OmniglotMetricConfig):
    """5-way 1-shot ProtoMAML with first-order inner steps, CPU-sized."""

    train_way: int = 5
    n_query: int = 5
    num_steps: int = 300
    meta_batch: int = 4
    features: int = 64
    strided: bool = False
    val_every: int = 100
    log_every: int = 50
    eval_chunk: int = 25
    inner_steps: Steps = 1
    inner_lr: PositiveRate = 0.1
    first_order: bool = True


def main(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Meta-trains ProtoMAML, evaluates it and the baselines; returns the summary."""
    options = dict(inner_steps=config.inner_steps, inner_lr=config.inner_lr,
                   first_order=config.first_order)
    return run_omniglot_metric(
        config, name="protomaml",
        make_learner=lambda embed, opt, way: metajax.protomaml(
            embed, opt, n_way=way, **options, axis_name=task_axis()),
        make_task_loss=lambda embed, way: metajax.protomaml_loss(embed, n_way=way, **options),
        out_dir=out_dir, progress=progress, extra={"options": options})
