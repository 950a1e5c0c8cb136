"""Reptile on Omniglot (N-way K-shot, Conv4) vs scratch and pretrained.

Reptile (Nichol et al., 2018) moves the initialisation toward the parameters adapted to
each task, ``theta <- theta + eps * mean(theta' - theta)``, with nothing differentiated
through the inner loop. It reports (5-way 1-/5-shot, 20-way 1-/5-shot) 95.39 / 98.90 / 88.14 /
96.65% on Omniglot (non-transductive; 97.68 / 99.48 / 89.43 / 97.12% transductive). Its
5-way setup: an inner loop of 5 Adam steps (lr 1e-3, beta1 = 0) on minibatches of 10 from
10 shots per class, 50 steps at test, outer step size 1 annealed linearly to 0, meta-batch
5, 100k outer steps; 20-way: 10 inner steps on minibatches of 20, 200k outer steps.

Here the inner loop adapts on each training episode's support and query examples together
(``k_shot + n_query`` per class) with ``inner_optimizer`` at ``inner_lr`` (``"sgd"`` by
default; ``"adam"`` is the paper's Adam with beta1 = 0), and validation and test episodes
are adapted with the same optimizer (a fresh state per episode), as in the paper; the
baselines fine-tune with SGD at the step size best on validation. The paper's test-time
setup is ``--set inner_optimizer=adam --set inner_lr=0.001 --set eval_steps=50``. The
defaults are CPU-sized (a few minutes on 2 cores): strided Conv4 with 32 filters,
meta-batch 4, 5 inner steps on 2 examples per class, 2,000 outer steps, accuracy after
1 / 5 / 10 test steps on 600 episodes with 15 queries per class; expect well below the
paper. Other settings:

- 5-way 5-shot: ``--set k_shot=5``
- 20-way 1-shot: ``--set n_way=20 --set inner_steps=10``
- 20-way 5-shot: the same plus ``--set k_shot=5``
- closer to the paper (GPU): ``--set features=64 --set n_query=9 --set meta_batch=5
  --set num_steps=100000 --set pretrain_steps=100000 --set steps_per_call=100
  --set unroll=false --set eval_chunk=100`` (10 shots per class in training)

Data, splits, baselines and the digits cross-domain evaluation as in ``omniglot_maml``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optax

import metajax
from metajax.distributed import task_axis
from metajax.experiment import OmniglotGradientConfig, omniglot_loss, run_omniglot

INNER_OPTIMIZERS = {"sgd": optax.sgd, "adam": lambda lr: optax.adam(lr, b1=0.0)}


@dataclasses.dataclass(frozen=True)
class Config(OmniglotGradientConfig):
    """5-way 1-shot, CPU-sized (see the module docstring for the paper's setup)."""

    n_query: int = 1
    num_steps: int = 2_000
    pretrain_steps: int = 6_000  # classifier steps of 64 images: ~4.7 epochs, ~2 min on CPU
    val_every: int = 500
    log_every: int = 100
    inner_steps: int = 5
    inner_lr: float = 0.1
    inner_optimizer: str = "sgd"  # sgd or adam
    outer_step_size: float = 1.0
    eval_steps: tuple[int, ...] = (1, 5, 10)


def main(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Runs the experiment; writes metrics, summary and the learning curve into ``out_dir``."""
    if config.inner_optimizer not in INNER_OPTIMIZERS:
        raise ValueError(f"`inner_optimizer` must be one of {sorted(INNER_OPTIMIZERS)}; got "
                         f"{config.inner_optimizer!r}.")
    loss_fn, _ = omniglot_loss(config)
    learner = metajax.reptile(loss_fn, inner_steps=config.inner_steps,
                              inner_opt=INNER_OPTIMIZERS[config.inner_optimizer](config.inner_lr),
                              outer_step_size=config.outer_step_size,
                              total_steps=config.num_steps, has_aux=True, axis_name=task_axis())
    return run_omniglot(config, learner, name="reptile", out_dir=out_dir, progress=progress,
                        inner_opt=INNER_OPTIMIZERS[config.inner_optimizer](config.inner_lr),
                        extra={"inner_optimizer": config.inner_optimizer})
