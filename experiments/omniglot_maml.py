"""MAML few-shot classification on Omniglot (N-way K-shot, Conv4) vs scratch and pretrained.

The defaults are sized for a 2-core CPU (roughly 10-15 minutes when the cores are free): a
strided Conv4 with 32 filters, 4 tasks per meta-batch, 600 outer steps, 600 test episodes.
Conv nets under ``vmap`` are slow on CPU (see the README), so this is a smoke-scale run, not a
reproduction: 300 steps of this setup gave 75.8 ± 1.3% 5-way 1-shot accuracy after one step
on 200 test episodes (chance 20%). The MAML paper's 5-way 1-shot setup (98.7%) is
``features=64 meta_batch=32 num_steps=60000 inner_lr=0.4 n_query=1``; run that on a GPU.
20-way (the MAML code's settings): ``--set n_way=20 --set inner_lr=0.1 --set inner_steps=5
--set meta_batch=16 --set cross_domain_way=5``. Targets (Finn et al., 2017, Table 1;
5-way 1-/5-shot, 20-way 1-/5-shot): 98.7 / 99.9 / 95.8 / 98.9%.

Data: ``data_root`` (or ``$METAJAX_DATA``) must hold ``omniglot/images_background.zip``,
``omniglot/images_evaluation.zip`` and ``omniglot/splits/`` (Vinyals split). Training uses
the Vinyals train classes, parameter selection the val classes (accuracy, higher is better),
and the final table the test classes: mean ± 95% CI over ``test_tasks`` episodes.
``split=maml`` trains on the MAML split (1100 + 100 validation characters, random rotations
per task) instead. The "pretrained" baseline trains jointly on episodes whose labels are
re-permuted every episode, so it learns little beyond its features: expect near-scratch
numbers. ``cross_domain`` (default on, needs scikit-learn) also tests all three on 5-way
digits episodes (``metajax.data.digits``); see ``summary.json["cross_domain"]``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optax

import metajax
from metajax.experiment import OmniglotGradientConfig, omniglot_loss, run_omniglot


@dataclasses.dataclass(frozen=True)
class Config(OmniglotGradientConfig):
    """5-way 1-shot by default; CPU-sized (see the module docstring for the paper's setup)."""

    first_order: bool = False


def main(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Runs the experiment; writes metrics, summary and the learning curve into ``out_dir``."""
    loss_fn, _ = omniglot_loss(config)
    learner = metajax.maml(loss_fn, optax.adam(config.outer_lr), inner_steps=config.inner_steps,
                           inner_lr=config.inner_lr, first_order=config.first_order,
                           has_aux=True)
    return run_omniglot(config, learner, name="maml", out_dir=out_dir, progress=progress)
