"""Hyper-parameter and seed sweeps compiled into one program with ``jax.vmap``."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from metajax._src.core.adapt import LossFn
from metajax._src.core.evaluate import make_evaluator, mean_ci95
from metajax._src.core.loop import make_multi_step
from metajax._src.core.types import MetaLearner, Params, TaskBatch
from metajax._src.experiment.tables import format_cell


class SweepProblem(NamedTuple):
    """What a vmapped sweep needs from an experiment.

    Attributes:
        make_learner: ``make_learner(h) -> MetaLearner`` from a dict of scalar
            hyper-parameters ``h`` (traced inside the sweep: use them only as array values,
            e.g. ``optax.adam(h["outer_lr"])``, ``inner_lr=h["inner_lr"]``).
        init_fn: ``init_fn(key) -> params``.
        sample_train: ``sample_train(key) -> TaskBatch``.
        sample_test: ``sample_test(seed) -> TaskBatch`` (traced ``seed``).
        loss_fn: the task loss (evaluation).
        eval_lr: ``eval_lr(h)``: the test-time adaptation step size.
        num_steps: outer steps per configuration.
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
        metric: the metric tabulated.
    """

    make_learner: Callable[[dict[str, jax.Array]], MetaLearner]
    init_fn: Callable[[jax.Array], Params]
    sample_train: Callable[[jax.Array], TaskBatch]
    sample_test: Callable[[jax.Array], TaskBatch]
    loss_fn: LossFn
    eval_lr: Callable[[dict[str, jax.Array]], Any]
    num_steps: int
    has_aux: bool = False
    metric: str = "loss"


def grid_combinations(grid: dict[str, Sequence[Any]], seeds: Sequence[int]) -> list[dict]:
    """Every combination of the grid's values, for every seed (seed varies fastest)."""
    keys = list(grid)
    return [{**dict(zip(keys, values, strict=True)), "seed": int(seed)}
            for values in itertools.product(*(grid[k] for k in keys)) for seed in seeds]


def vmapped_sweep(
    problem: SweepProblem,
    combos: list[dict],
    *,
    eval_steps: Sequence[int] = (0, 1, 5, 10),
    steps_per_call: int = 500,
    progress: bool = True,
) -> dict[str, Any]:
    """Meta-trains and evaluates every configuration of ``combos`` in one compiled program.

    The per-configuration training (init from the seed, ``num_steps`` outer steps on the
    seed's task stream) is ``vmap``-ed over configurations, so a sweep of learning rates and
    seeds runs as one XLA program (in compiled chunks of ``steps_per_call`` steps). Each
    configuration trains exactly as the same configuration would alone: initialisation
    ``init_fn(fold_in(PRNGKey(seed), 1))`` and tasks from ``fold_in(PRNGKey(seed), 0)``, as
    :func:`metajax.experiment.compare_with_baselines` does. Parameters are the final ones (no
    validation-based selection inside a sweep).

    Args:
        problem: the experiment's :class:`SweepProblem`.
        combos: dicts of scalar hyper-parameters, each with a ``seed`` entry.
        eval_steps: adaptation steps reported on the test tasks.
        steps_per_call: outer steps per compiled call.
        progress: show a progress bar.

    Returns:
        ``{"per_task": {metric: [n_configs, len(eval_steps), n_tasks]}, "train_loss":
        [n_configs, n_calls], "seconds": float, "compile_seconds": float}``.
    """
    names = [k for k in combos[0] if k != "seed"]
    hparams = {k: jnp.asarray([float(c[k]) for c in combos], jnp.float32) for k in names}
    seeds = jnp.asarray([c["seed"] for c in combos], jnp.uint32)

    def init_one(h, seed):
        root = jax.random.PRNGKey(seed)
        return problem.make_learner(h).init(problem.init_fn(jax.random.fold_in(root, 1)))

    def chunk_one(state, h, seed, n):
        key = jax.random.fold_in(jax.random.PRNGKey(seed), 0)
        run = make_multi_step(problem.make_learner(h).step, problem.sample_train,
                              steps_per_call=n)
        state, metrics = run(state, key)
        return state, jnp.mean(metrics["loss"])

    states = jax.jit(jax.vmap(init_one))(hparams, seeds)
    compiled: dict[int, Callable] = {}
    losses, t0, t_compile = [], time.perf_counter(), 0.0
    bar = tqdm(total=problem.num_steps, desc=f"sweep x{len(combos)}", disable=not progress,
               unit="step")
    done = 0
    while done < problem.num_steps:
        n = min(steps_per_call, problem.num_steps - done)
        if n not in compiled:
            tc = time.perf_counter()
            fn = jax.jit(jax.vmap(lambda s, h, k, n=n: chunk_one(s, h, k, n)), donate_argnums=0)
            compiled[n] = fn.lower(states, hparams, seeds).compile()
            t_compile += time.perf_counter() - tc
        states, loss = compiled[n](states, hparams, seeds)
        losses.append(np.asarray(loss))
        done += n
        bar.update(n)
    bar.close()

    def evaluate_one(params, h, seed):
        evaluator = make_evaluator(problem.loss_fn, steps=tuple(eval_steps),
                                   lr=problem.eval_lr(h), has_aux=problem.has_aux)
        return evaluator(params, problem.sample_test(seed))

    per_task = jax.device_get(jax.jit(jax.vmap(evaluate_one))(states.params, hparams, seeds))
    return {"per_task": per_task, "train_loss": np.stack(losses, axis=1),
            "seconds": time.perf_counter() - t0, "compile_seconds": t_compile}


def sweep_table(combos: list[dict], per_task: dict[str, np.ndarray], *, metric: str,
                eval_steps: Sequence[int]) -> list[dict]:
    """Pools every seed of a combination: mean ± 95% CI over all its test tasks, and the
    standard deviation of the per-seed means."""
    groups: dict[tuple, list[int]] = {}
    for i, combo in enumerate(combos):
        key = tuple((k, v) for k, v in combo.items() if k != "seed")
        groups.setdefault(key, []).append(i)
    rows = []
    for key, idx in groups.items():
        row = {**dict(key), "seeds": len(idx)}
        for j, s in enumerate(eval_steps):
            values = per_task[metric][idx, j, :]
            summary = mean_ci95(values)
            finite = np.where(np.isfinite(values), values, np.nan)
            seed_means = np.nanmean(finite, axis=1)  # each seed's mean over its finite tasks
            row[str(s)] = {"mean": summary.mean, "ci95": summary.ci95, "n": summary.n,
                           "nonfinite": summary.nonfinite,
                           "seed_sd": float(seed_means.std(ddof=1)) if len(idx) > 1 else 0.0}
        rows.append(row)
    return rows


def format_sweep_table(rows: list[dict], *, eval_steps: Sequence[int]) -> str:
    """Markdown rendering of :func:`sweep_table`."""
    keys = [k for k in rows[0] if k not in {"seeds", *map(str, eval_steps)}]
    head = "| " + " | ".join(keys) + " | seeds | " + " | ".join(
        f"{s} steps" if str(s).isdigit() else str(s) for s in eval_steps)
    lines = [head + " |", "|---" * (len(keys) + 1 + len(eval_steps)) + "|"]
    for row in rows:
        cells = [format_cell(row[str(s)], ".4g", ".2g") for s in eval_steps]
        lines.append("| " + " | ".join(str(row[k]) for k in keys) + f" | {row['seeds']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)
