"""Meta-SGD (learned per-parameter step sizes) on Omniglot (N-way K-shot, Conv4).

Meta-SGD (Li et al., 2017) meta-learns an initialisation and one inner step size per
parameter (direction included), and adapts in one step with them. It reports (5-way
1-/5-shot, 20-way 1-/5-shot) 99.53 / 99.93 / 95.93 / 98.97% on Omniglot with MAML's Conv4
(64 filters). Here the rates start uniform in ``[init_lr_low, init_lr_high]`` = [0.005, 0.1]
(the paper's initialisation) and test-time SGD uses the learned rates: they are trained for
``inner_steps`` steps, so more test steps (the 3-step column) may overshoot.

The defaults are CPU-sized (a few minutes on 2 cores): strided Conv4 with 32 filters,
meta-batch 4, one inner step, 2,000 outer steps with query sets of one example per class,
accuracy on 600 test episodes with 15 queries per class; expect well below the paper.
Other settings:

- 5-way 5-shot: ``--set k_shot=5``
- 20-way 1-shot: ``--set n_way=20 --set meta_batch=16``
- 20-way 5-shot: the same plus ``--set k_shot=5``
- the paper's scale (GPU): ``--set features=64 --set meta_batch=32 --set num_steps=60000
  --set pretrain_steps=60000 --set steps_per_call=100 --set unroll=false
  --set eval_chunk=100``

Data, splits, baselines and the digits cross-domain evaluation as in ``omniglot_maml``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
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
    init_lr_low: float = 0.005
    init_lr_high: float = 0.1


def main(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Runs the experiment; writes metrics, summary and the learning curve into ``out_dir``."""
    if not 0 <= config.init_lr_low <= config.init_lr_high:
        raise ValueError("Need 0 <= `init_lr_low` <= `init_lr_high`; got "
                         f"{config.init_lr_low} and {config.init_lr_high}.")
    loss_fn, init_fn = omniglot_loss(config)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 3)  # 0-2 used by the comparison
    shapes = jax.eval_shape(init_fn, key)
    keys = iter(jax.random.split(key, len(jax.tree.leaves(shapes))))
    init_lr = jax.tree.map(lambda s: jax.random.uniform(
        next(keys), s.shape, s.dtype, config.init_lr_low, config.init_lr_high), shapes)
    learner = metajax.metasgd(loss_fn, optax.adam(config.outer_lr),
                              inner_steps=config.inner_steps, init_lr=init_lr, has_aux=True,
                              axis_name=task_axis())
    return run_omniglot(config, learner, name="metasgd", out_dir=out_dir, progress=progress,
                        extra={"init_lr_range": [config.init_lr_low, config.init_lr_high]})
