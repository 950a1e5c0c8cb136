"""Sweep speed: 5 seeds x 4 inner learning rates of sinusoid MAML in one vmapped program
against 20 sequential runs of the same training, side by side in one process.

The sequential runs are what a user gets from 20 separate runs: each builds and compiles its
own training program (learning rate as a constant) and trains for the same number of steps.
A second sequential figure reuses one compiled program across runs (learning rate passed as
an argument), the best a sequential loop can do.

Usage:
    python benchmarks/sweep_speed.py [--steps 2000] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import metajax.cpu
from metajax._src.core.loop import make_multi_step
from metajax.experiment import grid_combinations, vmapped_sweep

ROOT = Path(__file__).resolve().parent.parent


def _experiment():
    spec = importlib.util.spec_from_file_location("sinusoid_maml",
                                                  ROOT / "experiments" / "sinusoid_maml.py")
    module = importlib.util.module_from_spec(spec)
    import sys

    sys.modules["sinusoid_maml"] = module
    spec.loader.exec_module(module)
    return module


def _train_alone(problem, combo, steps_per_call, compiled=None):
    h = {"inner_lr": jnp.float32(combo["inner_lr"])}
    root = jax.random.PRNGKey(combo["seed"])
    learner = problem.make_learner(h)
    state = learner.init(problem.init_fn(jax.random.fold_in(root, 1)))
    key = jax.random.fold_in(root, 0)
    if compiled is None:  # a separate run: its own program, learning rate baked in
        run = jax.jit(make_multi_step(learner.step, problem.sample_train,
                                      steps_per_call=steps_per_call))
        call = lambda s: run(s, key)  # noqa: E731
    else:
        call = lambda s: compiled(s, key, h)  # noqa: E731
    for _ in range(problem.num_steps // steps_per_call):
        state, _ = call(state)
    return jax.block_until_ready(state.params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="200 steps, for a smoke test")
    args = parser.parse_args()
    metajax.cpu.configure()  # first, as metajax run does
    steps = 200 if args.quick else args.steps
    module = _experiment()
    config = dataclasses.replace(module.Config(), num_steps=steps, steps_per_call=min(500, steps),
                                 test_tasks=100)
    problem = module.sweep_problem(config)
    combos = grid_combinations({"inner_lr": (0.003, 0.01, 0.03, 0.1)}, range(5))
    spc = config.steps_per_call

    t0 = time.perf_counter()
    result = vmapped_sweep(problem, combos, steps_per_call=spc, progress=False)
    vmapped = time.perf_counter() - t0

    t0 = time.perf_counter()
    for combo in combos:
        _train_alone(problem, combo, spc)
    sequential = time.perf_counter() - t0

    shared = jax.jit(lambda s, k, h: make_multi_step(problem.make_learner(h).step,
                                                     problem.sample_train,
                                                     steps_per_call=spc)(s, k))
    t0 = time.perf_counter()
    for combo in combos:
        _train_alone(problem, combo, spc, compiled=shared)
    shared_seq = time.perf_counter() - t0

    tasks_total = len(combos) * steps * config.meta_batch
    rows = [
        ("one vmapped program (20 configs)", vmapped, result["compile_seconds"]),
        ("20 sequential runs, each compiled", sequential, None),
        ("20 sequential runs, one shared compile", shared_seq, None),
    ]
    lines = [
        "# Sweep speed: 5 seeds x 4 inner learning rates, sinusoid MAML",
        "",
        f"{steps} outer steps per configuration, meta-batch {config.meta_batch}, 1 inner step; "
        "training only (the vmapped figure also includes evaluating all 20 configurations on "
        f"{config.test_tasks} test tasks).",
        "",
        "| strategy | wall s | of which compile s | tasks/s | speed-up of vmapped |",
        "|---|---|---|---|---|",
    ]
    for name, seconds, compile_s in rows:
        lines.append(f"| {name} | {seconds:.1f} | "
                     f"{'' if compile_s is None else f'{compile_s:.1f}'} | "
                     f"{tasks_total / seconds:,.0f} | {seconds / vmapped:.2f}x |")
    lines += ["", f"Command: `python benchmarks/sweep_speed.py --steps {steps}`",
              f"Date: {datetime.date.today()}; {platform.machine()}, "
              f"{jax.device_count()} {jax.default_backend()} device(s); jax {jax.__version__}.",
              ""]
    report = "\n".join(lines)
    print(report)
    if not args.quick:
        (ROOT / "benchmarks" / "results" / "sweep_speed.md").write_text(report)


if __name__ == "__main__":
    main()
