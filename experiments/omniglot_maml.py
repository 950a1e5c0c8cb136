"""MAML few-shot classification on Omniglot (N-way K-shot, Conv4) vs scratch and pretrained.

The defaults are sized for a 2-core CPU (a few minutes): a strided Conv4 with 32 filters,
4 tasks per meta-batch, 600 outer steps on episodes with 15 queries per class, 600 test
episodes. This is a smoke-scale run, not a reproduction: 300 steps of this setup gave
75.8 ± 1.3% 5-way 1-shot accuracy after one step on 200 test episodes (chance 20%). The
other ``omniglot_*`` gradient-based experiments default to ``n_query=1 num_steps=2000
val_every=500 log_every=100``; pass those to compare MAML with them.
Targets (Finn et al., 2017, Table 1; 5-way 1-/5-shot, 20-way 1-/5-shot): 98.7 / 99.9 / 95.8 /
98.9%, with a Conv4 of 64 filters, one inner step of 0.4 (5-way) or five of 0.1 (20-way),
meta-batch 32 (5-way) or 16 (20-way), 60k outer steps, one query per class in training.

- 5-way 5-shot: ``--set k_shot=5``
- 20-way 1-shot: ``--set n_way=20 --set inner_steps=5 --set inner_lr=0.1 --set meta_batch=16``
- 20-way 5-shot: the same plus ``--set k_shot=5``
- the paper's scale (GPU): ``--set features=64 --set meta_batch=32 --set num_steps=60000
  --set pretrain_steps=60000 --set n_query=1 --set steps_per_call=100 --set unroll=false
  --set eval_chunk=100``
- on a CPU with N cores: add ``--processes N`` (one single-threaded process per core, each
  meta-batch split between them; ``meta_batch`` a multiple of N)

Data: ``data_root`` (or ``$METAJAX_DATA``) must hold ``omniglot/images_background.zip``,
``omniglot/images_evaluation.zip`` and ``omniglot/splits/`` (Vinyals split). Training uses
the Vinyals train classes, parameter selection the val classes (accuracy, higher is better),
and the final table the test classes: mean ± 95% CI over ``test_tasks`` episodes.
``split=maml`` trains on the MAML split (1100 + 100 validation characters, random rotations
per task) instead. The pre-trained baselines follow Chen et al. (2019, "A Closer Look at
Few-shot Classification"): one Conv4 is trained by ordinary minibatch classification over all
training classes (4112 with the Vinyals split; ``pretrain_steps`` Adam steps on
``pretrain_batch`` images); ``pretrained`` fine-tunes it whole from a zero head like the other
rows, and ``baseline`` fits a new linear head on its frozen embedding per episode (reported
in the most-adapted column); with ``split=maml`` the classes are the characters, each
minibatch image rotated by a random multiple of 90 degrees. ``cross_domain`` (default on,
needs scikit-learn) also tests every row on 5-way digits episodes (``metajax.data.digits``);
see ``summary.json["cross_domain"]``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optax

import metajax
from metajax.distributed import task_axis
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
                           has_aux=True, axis_name=task_axis())
    return run_omniglot(config, learner, name="maml", out_dir=out_dir, progress=progress)
