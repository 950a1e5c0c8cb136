"""MAML on sinusoid regression (Finn et al., 2017): meta-learned init vs scratch and pretrained."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import metajax
from metajax import tasks
from metajax.distributed import task_axis
from metajax.experiment import (
    SinusoidConfig,
    SweepProblem,
    adam_with_clipping,
    run_sinusoid,
    sinusoid_mlp,
)


@dataclasses.dataclass(frozen=True)
class Config(SinusoidConfig):
    """Defaults reproduce the MAML paper's setup (App. C): K=10, 1 step, lr 0.01, MB 25, 70k."""

    first_order: bool = False
    clip_grad_norm: float = 0.0  # clip the meta-gradient's global norm; 0 = off


def _learner(config: Config, loss_fn, *, inner_lr, outer_lr) -> metajax.MetaLearner:
    outer_opt = adam_with_clipping(outer_lr, clip_grad_norm=config.clip_grad_norm)
    return metajax.maml(loss_fn, outer_opt, inner_steps=config.inner_steps, inner_lr=inner_lr,
                        first_order=config.first_order, axis_name=task_axis())


def main(config: Config, out_dir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Runs the experiment; writes metrics, summary and plots into ``out_dir`` if given."""
    _, _, loss_fn, _ = sinusoid_mlp(config)
    learner = _learner(config, loss_fn, inner_lr=config.inner_lr, outer_lr=config.outer_lr)
    return run_sinusoid(config, learner, name="maml", out_dir=out_dir, progress=progress)


SWEEPABLE = ("inner_lr", "outer_lr")  # shape-preserving keys: `metajax sweep` vmaps over them


def sweep_problem(config: Config) -> SweepProblem:
    """The experiment as one vmappable training function (see ``metajax sweep``)."""
    _, _, loss_fn, init_fn = sinusoid_mlp(config)
    return SweepProblem(
        make_learner=lambda h: _learner(config, loss_fn,
                                        inner_lr=h.get("inner_lr", config.inner_lr),
                                        outer_lr=h.get("outer_lr", config.outer_lr)),
        init_fn=init_fn,
        sample_train=functools.partial(tasks.sinusoid, n_tasks=config.meta_batch,
                                       k_shot=config.k_shot, n_query=config.n_query),
        sample_test=lambda seed: tasks.sinusoid(
            tasks.split_key(seed, "test"), config.test_tasks, k_shot=config.eval_k_shot,
            n_query=config.eval_n_query),
        loss_fn=loss_fn, eval_lr=lambda h: h.get("inner_lr", config.inner_lr),
        num_steps=config.num_steps)
