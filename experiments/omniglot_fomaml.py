"""First-order MAML on Omniglot (N-way K-shot, Conv4) vs scratch and pretrained.

FOMAML (Finn et al., 2017, Sec. 5.2) drops the second-order terms of MAML's meta-gradient:
the meta-gradient of a task is the query-loss gradient at the adapted parameters. The paper
trains it with MAML's Omniglot setup and reports (5-way 1-/5-shot, 20-way 1-/5-shot)
98.3 / 99.2 / 89.4 / 97.9% against MAML's 98.7 / 99.9 / 95.8 / 98.9%.

MAML's setup: Conv4 with 64 filters (strided), one inner SGD step of 0.4 (5-way) or five
of 0.1 (20-way), meta-batch 32 (5-way) or 16 (20-way), Adam 1e-3, 60k outer steps, query
sets of one example per class in training. The defaults here are CPU-sized (a few minutes on
2 cores): 32 filters, meta-batch 4, 2,000 outer steps, accuracy on 600 test episodes with 15
queries per class; expect well below the paper. Other settings:

- 5-way 5-shot: ``--set k_shot=5``
- 20-way 1-shot: ``--set n_way=20 --set inner_steps=5 --set inner_lr=0.1 --set meta_batch=16``
- 20-way 5-shot: the same plus ``--set k_shot=5``
- the paper's scale (GPU): ``--set features=64 --set meta_batch=32 --set num_steps=60000
  --set pretrain_steps=60000 --set steps_per_call=100 --set unroll=false
  --set eval_chunk=100``

Data, splits, baselines and the digits cross-domain evaluation as in ``omniglot_maml``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optax

import metajax
from metajax.distributed import task_axis
from metajax.experiment import OmniglotGradientConfig, omniglot_loss, run_omniglot


@dataclasses.dataclass(frozen=True)
class Config(OmniglotGradientConfig):
    """5-way 1-shot, CPU-sized (see the module docstring for the paper's setup)."""

    n_query: int = 1
    num_steps: int = 2_000
    pretrain_steps: int = 6_000  # classifier steps of 64 images: ~4.7 epochs, ~2 min on CPU
    val_every: int = 500
    log_every: int = 100


def main(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Runs the experiment; writes metrics, summary and the learning curve into ``out_dir``."""
    loss_fn, _ = omniglot_loss(config)
    learner = metajax.fomaml(loss_fn, optax.adam(config.outer_lr),
                             inner_steps=config.inner_steps, inner_lr=config.inner_lr,
                             has_aux=True, axis_name=task_axis())
    return run_omniglot(config, learner, name="fomaml", out_dir=out_dir, progress=progress)
