"""Prototypical Networks on Omniglot (Conv4 embedding) vs scratch, Baseline++ and Baseline.

ProtoNets (Snell et al., 2017) classify a query by its squared Euclidean distance to each
class's mean support embedding. The paper's Omniglot setup: the Vinyals split (rotations as
classes), a Conv4 embedding (64 filters, max-pooling, 64-dimensional output), training
episodes with more classes than the test episodes (60-way, 5 queries per class, the test's
shots), one episode per step, Adam 1e-3 halved every 2,000 episodes. It reports (5-way
1-/5-shot, 20-way 1-/5-shot) 98.8 / 99.7 / 96.0 / 98.9%.

The defaults keep the paper's embedding and 60-way training episodes and are CPU-sized (a
few minutes on 2 cores): 200 episodes, a constant learning rate, accuracy on 600 5-way
1-shot test episodes with 15 queries per class. Other settings (``train_way`` stays 60):

- 5-way 5-shot: ``--set k_shot=5``
- 20-way 1-shot: ``--set n_way=20``
- 20-way 5-shot: ``--set n_way=20 --set k_shot=5``
- longer training: ``--set num_steps=20000`` (the paper trains until validation stops
  improving)

Rows: ``protonet``, ``scratch`` (prototypes of a randomly initialised embedding),
``baseline++_raw`` (a cosine classifier fine-tuned per episode on raw pixels), ``baseline``
(Chen et al.'s Baseline: the same Conv4 pre-trained by classification over all training
classes, frozen, with a linear head fitted per episode; ``pretrain_*`` and ``baseline_head_*``
options as in ``omniglot_maml``; its pre-training takes ~10-20 min on one core, so use
``--set pretrain_cache=DIR`` to train it once for several settings) and ``baseline++_meta``
(the cosine classifier on the meta-learned embedding). Data, splits and the digits
cross-domain evaluation (default on, needs scikit-learn) as in ``omniglot_maml``; the
cross-domain advantage is measured against the best of ``scratch``, ``baseline++_raw`` and
``baseline``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import metajax
from metajax.distributed import task_axis
from metajax.experiment import OmniglotMetricConfig, run_omniglot_metric


@dataclasses.dataclass(frozen=True)
class Config(OmniglotMetricConfig):
    """5-way 1-shot tests after 60-way training, CPU-sized (see the module docstring)."""

    n_query: int = 5
    num_steps: int = 200
    meta_batch: int = 1
    features: int = 64
    strided: bool = False
    val_every: int = 100
    log_every: int = 50
    eval_chunk: int = 25
    distance: str = "sqeuclidean"


def main(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Meta-trains ProtoNet, evaluates it and the baselines; returns the summary."""
    return run_omniglot_metric(
        config, name="protonet",
        make_learner=lambda embed, opt, way: metajax.protonet(embed, opt, n_way=way,
                                                              distance=config.distance,
                                                              axis_name=task_axis()),
        make_task_loss=lambda embed, way: metajax.protonet_loss(embed, n_way=way,
                                                                distance=config.distance),
        out_dir=out_dir, progress=progress, extra={"options": {"distance": config.distance}})
