"""Speed of the jitted second-order MAML meta-step on sinusoid regression: metajax vs torch.func.

Both sides run the same problem with the same hyper-parameters and initial weights: an MLP
1-40-40-1 (ReLU), MSE loss, 10 support + 10 query points per task, inner SGD with lr 0.01,
Adam(1e-3) on the mean query loss, exact second-order meta-gradient. Four configurations:
(1 inner step, meta-batch 25), (5, 1000), (1, 1000) and (5, 25).

Contenders, all timed side by side in this one process:

* ``torch.func``: ``functional_call`` + ``torch.func.grad`` for the inner step, ``vmap`` over the
  tasks and ``torch.func.grad`` of that (second order, the ``create_graph`` equivalent), fused
  Adam, tasks pre-sampled. Run with all cores (``torch.set_num_threads``) and with one
  thread; the faster is the reference. (OpenMP threads collapse when other processes share
  the cores, one thread does not; a short probe drops a thread count over 2x slower.)
* ``jit(step)``: ``jax.jit(metajax.maml(...).step, donate_argnums=0)``, one call per outer
  step on the same pre-sampled tasks as torch.func.
* ``multi_step``: ``jax.jit(metajax.make_multi_step(step, sampler, steps_per_call=K))``: K outer
  steps per call, tasks sampled on the device inside the call.
* ``... + chunks`` (meta-batches that are multiples of ``--chunk``, i.e. 1000): the same outer
  update computed on chunks of ``--chunk`` tasks whose meta-gradients ``optax.MultiSteps``
  averages before the one Adam step: mathematically the same update, but the program's
  temporaries (per-task adapted weights and residuals, 82 MiB at 1000 tasks x 5 steps) shrink
  to cache size. With ``jit(step)`` the chunks are pre-sampled; with ``multi_step`` they are
  sampled inside the call.

Fairness: the metajax learner skips the optional pre-adaptation loss (which torch does not
compute); every repetition times the same number of outer updates (of ``meta_batch`` tasks
each) for every contender, the contenders alternate within each repetition (rotating the
order), the warm-up is excluded and the reported rate is the median over repetitions. JAX
compile time (lower + compile) is reported separately. A one-step check from identical
weights and tasks confirms both sides compute the same update.

Usage:
    python benchmarks/sinusoid_speed.py            # full run, writes results/sinusoid_speed.md
    python benchmarks/sinusoid_speed.py --quick    # smoke test (< 30 s), writes nothing
    python benchmarks/sinusoid_speed.py --configs 5x1000 --reps 31 --chunk 50
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from torch.func import functional_call, grad, grad_and_value, vmap

import metajax
import metajax.cpu

RESULTS = Path(__file__).resolve().parent / "results" / "sinusoid_speed.md"
CONFIGS = ((1, 25), (5, 1000), (1, 1000), (5, 25))  # (inner steps, meta-batch)
QUICK_CONFIGS = ((1, 250),)  # every code path (chunks included), the fastest compiles
TARGETS = {(1, 25): 5.0, (5, 1000): 1.5}  # minimum metajax / torch.func speed-up, from the issue
HIDDEN, K_SHOT, N_QUERY, INNER_LR, OUTER_LR = 40, 10, 10, 0.01, 1e-3


# ----------------------------------------------------------------------------- metajax


def mlp_params(seed: int = 0):
    model = metajax.models.MLP(features=(HIDDEN, HIDDEN, 1))
    params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 1)))["params"]
    return model, params


def jax_learner(model, inner_steps: int, outer_opt: optax.GradientTransformation):
    loss_fn = metajax.losses.mse(lambda p, x: model.apply({"params": p}, x))
    return metajax.maml(loss_fn, outer_opt, inner_steps=inner_steps, inner_lr=INNER_LR,
                        track_pre_adaptation=False)


def sampler(n_tasks: int) -> Callable[[jax.Array], metajax.TaskBatch]:
    return functools.partial(metajax.tasks.sinusoid, n_tasks=n_tasks, k_shot=K_SHOT,
                             n_query=N_QUERY)


def sample_batches(n_batches: int, meta_batch: int, seed: int = 1) -> metajax.TaskBatch:
    """``n_batches`` meta-batches of sinusoid tasks, stacked on a leading axis."""
    keys = jax.random.split(jax.random.PRNGKey(seed), n_batches)
    return jax.vmap(sampler(meta_batch))(keys)


def split_chunks(batches: metajax.TaskBatch, chunk: int) -> metajax.TaskBatch:
    """``[n, meta_batch, ...]`` -> ``[n * meta_batch / chunk, chunk, ...]`` (consecutive tasks)."""
    return jax.tree.map(lambda x: x.reshape(-1, chunk, *x.shape[2:]), batches)


# ----------------------------------------------------------------------------- torch.func


class TorchMAML:
    """Second-order MAML with ``torch.func``: grad of (vmap over tasks of (inner grad steps))."""

    def __init__(self, flax_params, inner_steps: int):
        self.net = torch.nn.Sequential(
            torch.nn.Linear(1, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, HIDDEN),
            torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 1))
        with torch.no_grad():  # start from the very same weights as metajax
            for i, layer in enumerate(self.net[::2]):
                dense = flax_params[f"dense_{i}"]
                layer.weight.copy_(torch.from_numpy(np.asarray(dense["kernel"]).T.copy()))
                layer.bias.copy_(torch.from_numpy(np.asarray(dense["bias"]).copy()))
        self.params = dict(self.net.named_parameters())
        try:
            self.opt = torch.optim.Adam(self.params.values(), lr=OUTER_LR, fused=True)
        except (RuntimeError, TypeError):  # fused Adam unavailable on this build
            self.opt = torch.optim.Adam(self.params.values(), lr=OUTER_LR, foreach=True)
        net = self.net

        def loss(p, x, y):
            return ((functional_call(net, p, (x,)) - y) ** 2).mean()

        inner_grad = grad(loss)

        def task_loss(p, xs, ys, xq, yq):
            for _ in range(inner_steps):
                g = inner_grad(p, xs, ys)
                p = {k: p[k] - INNER_LR * g[k] for k in p}
            return loss(p, xq, yq)

        def meta_loss(p, xs, ys, xq, yq):
            return vmap(task_loss, in_dims=(None, 0, 0, 0, 0))(p, xs, ys, xq, yq).mean()

        self.meta_grad = grad_and_value(meta_loss)

    def step(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """One outer update; returns the meta-loss before it."""
        grads, value = self.meta_grad({k: v.detach() for k, v in self.params.items()}, *batch)
        with torch.no_grad():
            for k, v in self.params.items():
                v.grad = grads[k]
            self.opt.step()
        return value

    def flax_layout(self) -> dict:
        return {f"dense_{i}": {"kernel": layer.weight.detach().numpy().T,
                               "bias": layer.bias.detach().numpy()}
                for i, layer in enumerate(self.net[::2])}


def torch_batches(batches: metajax.TaskBatch) -> list[tuple[torch.Tensor, ...]]:
    (xs, ys), (xq, yq) = batches.support, batches.query
    arrays = [torch.from_numpy(np.array(a)) for a in (xs, ys, xq, yq)]
    return [tuple(a[i] for a in arrays) for i in range(arrays[0].shape[0])]


# ----------------------------------------------------------------------------- timing


@dataclasses.dataclass
class Contender:
    """A named way to run ``updates_per_rep`` outer updates; ``run()`` blocks until done."""

    name: str
    run: Callable[[], None]
    compile_s: float | None = None
    probe: Callable[[], None] | None = None  # a short run() to pre-select torch thread counts
    times: list[float] = dataclasses.field(default_factory=list)


def aot_compile(fn, *args, donate: bool = True):
    """Lowers and compiles ``jax.jit(fn)``; returns ``(compiled, seconds)``."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=0 if donate else ()).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def updates_per_rep(inner_steps: int, meta_batch: int, quick: bool) -> int:
    """Outer updates per timed repetition: enough work to dwarf dispatch and timer noise."""
    if quick:
        return 4 if meta_batch <= 100 else 1
    return max(4, 4000 // (meta_batch * inner_steps))


def build_contenders(inner_steps, meta_batch, k, chunk, torch_threads, check):
    """Returns the torch.func contenders (one per thread count), the metajax contenders (each
    running ``k`` outer updates of ``meta_batch`` tasks per ``run()``) and a check line."""
    model, params = mlp_params()
    adam = optax.adam(OUTER_LR)
    batches = sample_batches(k, meta_batch)  # the pre-sampled tasks, shared by both sides
    batch_list = [jax.tree.map(lambda x, i=i: x[i], batches) for i in range(k)]

    def fresh(learner):  # donation consumes the state, so never hand over `params` itself
        return learner.init(jax.tree.map(jnp.copy, params))

    def jit_contender(name, learner, task_list):
        """``jax.jit(learner.step)``, one call per element of ``task_list``."""
        step, compile_s = aot_compile(learner.step, fresh(learner), task_list[0])
        box = {"state": fresh(learner)}

        def run():
            state = box["state"]
            for tasks in task_list:
                state, _ = step(state, tasks)
            box["state"] = jax.block_until_ready(state)

        return Contender(name, run, compile_s), step

    def multi_step_contender(name, learner, n_tasks, steps_per_call):
        """``make_multi_step``: ``steps_per_call`` steps on ``n_tasks`` sampled in the call."""
        fn = metajax.make_multi_step(learner.step, sampler(n_tasks), steps_per_call=steps_per_call)
        box = {"state": fresh(learner), "key": jax.random.PRNGKey(2)}
        multi_step, compile_s = aot_compile(fn, box["state"], box["key"])

        def run():
            box["key"], key = jax.random.split(box["key"])
            state, _ = multi_step(box["state"], key)
            box["state"] = jax.block_until_ready(state)

        return Contender(name, run, compile_s)

    # torch.func on the pre-sampled tasks.
    peer = TorchMAML(params, inner_steps)
    t_batches = torch_batches(batches)

    def torch_contender(threads):
        def run(n=None):
            torch.set_num_threads(threads)
            for b in t_batches[:n]:
                peer.step(b)

        return Contender(f"torch.func ({threads} thread{'s' * (threads > 1)})", run,
                         probe=functools.partial(run, 2))

    peers = [torch_contender(t) for t in torch_threads]

    # (a) jax.jit(learner.step) on the same pre-sampled tasks; (b) make_multi_step.
    learner = jax_learner(model, inner_steps, adam)
    plain, step = jit_contender("jit(step)", learner, batch_list)
    contenders = [plain, multi_step_contender(f"multi_step(K={k})", learner, meta_batch, k)]

    check_line = None
    if check:  # one update from identical weights and tasks on both sides
        state, metrics = step(fresh(learner), batch_list[0])
        torch_loss = float(peer.step(t_batches[0]))
        diff = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - b))),
                            state.params, peer.flax_layout())
        check_line = (f"meta-loss metajax {float(metrics['loss']):.6f} vs torch.func "
                      f"{torch_loss:.6f}; max |param difference| after the update "
                      f"{max(jax.tree.leaves(diff)):.1e}")

    # (c) the same updates on chunks of tasks, meta-gradients averaged by optax.MultiSteps.
    if chunk and meta_batch > chunk and meta_batch % chunk == 0:
        n_chunks = meta_batch // chunk
        chunked = jax_learner(model, inner_steps,
                              optax.MultiSteps(adam, every_k_schedule=n_chunks))
        chunks = split_chunks(batches, chunk)
        chunk_list = [jax.tree.map(lambda x, i=i: x[i], chunks) for i in range(k * n_chunks)]
        contenders += [
            jit_contender(f"jit(step) + {n_chunks} chunks", chunked, chunk_list)[0],
            multi_step_contender(f"multi_step(K={k}) + {n_chunks} chunks", chunked, chunk,
                                 k * n_chunks),
        ]
    return peers, contenders, check_line


def measure(peers: list[Contender], contenders: list[Contender], reps: int,
            slack: float = 2.0) -> list[str]:
    """Warm-up, then ``reps`` rounds; each round runs every contender once, in an order rotated
    from round to round so that no contender always follows the same neighbour.

    Torch thread counts ``slack`` times slower than the fastest one are dropped, first after a
    short probe, then after three rounds: multi-threaded OpenMP can be 10-100x slower when
    other processes share the cores, and timing it in full would take minutes without
    changing the reference. Drops ``peers`` in place; returns a note on each drop.
    """
    notes = []

    def drop(seconds, where):
        fastest = min(seconds.values())
        for c in [c for c in peers if seconds[c.name] > slack * fastest]:
            peers.remove(c)
            notes.append(f"{c.name} dropped: {seconds[c.name] / fastest:.0f}x slower {where}")

    probe = {c.name: [] for c in peers}
    for c in peers:
        c.probe()  # warm-up
    for _ in range(3):  # best of three, so that one burst of outside load decides nothing
        for c in peers:
            t0 = time.perf_counter()
            c.probe()
            probe[c.name].append(time.perf_counter() - t0)
    drop({name: min(t) for name, t in probe.items()}, "in a probe")
    for c in peers + contenders:
        c.run()
    for r in range(reps):
        if r == 3:
            drop({c.name: statistics.median(c.times) for c in peers}, "in 3 rounds")
        everyone = peers + contenders
        shift = r % len(everyone)
        for c in everyone[shift:] + everyone[:shift]:
            t0 = time.perf_counter()
            c.run()
            c.times.append(time.perf_counter() - t0)
    return notes


# ----------------------------------------------------------------------------- reporting


def hardware() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        cpu = (f"{fields['Model name'].strip()}, {fields['CPU(s)'].strip()} CPUs, "
               f"{fields['Architecture'].strip()}")
    except (OSError, subprocess.CalledProcessError, KeyError):
        cpu = platform.processor() or platform.machine()
    return f"{cpu}; {platform.platform()}; Python {platform.python_version()}"


def to_markdown(rows, meta) -> str:
    lines = [
        "# Sinusoid MAML meta-step speed: metajax vs torch.func",
        "",
        "MLP 1-40-40-1 (ReLU), MSE, 10 support + 10 query points per task, inner SGD lr 0.01, "
        "Adam 1e-3, second-order meta-gradient. Tasks/s = meta-batch x outer updates / "
        "wall time; median over repetitions that alternate the contenders in one process. "
        "`ratio` = metajax / torch.func (torch.func measured in the same repetitions). "
        "`compile s` = JAX lower + compile, excluded from the rates. The machine is shared "
        "with other jobs (load average below), so the rates move by 10-30% between runs; "
        "the ratios, measured in the same repetitions, move less.",
        "",
        "| config | metajax variant | metajax tasks/s | torch.func tasks/s | ratio | compile s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['config']} | {r['variant']} | {r['jax']:,.0f} | {r['torch']:,.0f} | "
                     f"{r['ratio']:.2f}x | {r['compile']:.1f} |")
    lines += ["", "Targets from the issue (best metajax variant / torch.func):", ""]
    lines += [f"- {t}" for t in meta["targets"]]
    lines += ["", "torch.func by thread count (tasks/s; the table uses the faster):", ""]
    lines += [f"- {t}" for t in meta["peers"]]
    lines += ["", "Checks (one update from identical weights and tasks):", ""]
    lines += [f"- {c}" for c in meta["checks"]]
    lines += [
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}",
        f"- hardware: {meta['hardware']}",
        f"- load average (1 min) at start / end: {meta['load']}",
        f"- versions: jax {jax.__version__}, torch {torch.__version__}, "
        f"optax {optax.__version__}, metajax {metajax.__version__}",
        f"- repetitions per config: {meta['reps']}",
        "",
        "Variants: `jit(step)` is `jax.jit(learner.step, donate_argnums=0)` called once per outer "
        "update on pre-sampled tasks (the tasks torch.func gets); `multi_step(K)` is "
        "`jax.jit(metajax.make_multi_step(learner.step, sampler, steps_per_call=K), "
        "donate_argnums=0)`, sampling inside the call; `+ n chunks` computes each outer update "
        "as n chunks of tasks whose meta-gradients `optax.MultiSteps` averages before the one "
        "Adam step (the same update, computed with a cache-sized working set).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=None, metavar="STEPSxMB",
                        help="configurations, e.g. 1x25 5x1000 (default: all four; "
                             "1x250 with --quick)")
    parser.add_argument("--reps", type=int, default=None,
                        help="timed repetitions per contender (default 21; 2 with --quick)")
    parser.add_argument("--chunk", type=int, default=125,
                        help="task chunk size of the chunked variants (0 disables them)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch intra-op threads (default: all cores)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test (< 30 s): one small config, few iterations; writes "
                             "no results unless --out")
    parser.add_argument("--out", type=Path, default=None,
                        help="markdown results file (default: benchmarks/results/"
                             "sinusoid_speed.md; none with --quick)")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip the one-step agreement check")
    args = parser.parse_args(argv)
    metajax.cpu.configure()  # first, as metajax run does
    reps = args.reps or (2 if args.quick else 21)
    if args.configs is None:
        configs = QUICK_CONFIGS if args.quick else CONFIGS
    else:
        configs = [tuple(int(v) for v in c.lower().split("x")) for c in args.configs]
    out = args.out if args.out is not None else (None if args.quick else RESULTS)

    torch.autograd.set_detect_anomaly(False)
    torch_threads = sorted({1, args.threads})
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"(threads {torch_threads}); {hardware()}")
    load = [os.getloadavg()[0]]
    rows, checks, targets, peer_rates = [], [], [], []
    print(f"{'config':<18}{'metajax variant':<34}{'metajax tasks/s':>16}"
          f"{'torch.func tasks/s':>20}{'ratio':>8}{'compile s':>11}")
    for inner_steps, meta_batch in configs:
        k = updates_per_rep(inner_steps, meta_batch, args.quick)
        peers, contenders, check_line = build_contenders(
            inner_steps, meta_batch, k, args.chunk, torch_threads, args.check)
        config = f"{inner_steps} step{'s' * (inner_steps > 1)}, MB {meta_batch}"
        if check_line:
            checks.append(f"{config}: {check_line}")
        dropped = measure(peers, contenders, reps)
        rate = {c.name: meta_batch * k / statistics.median(c.times) for c in peers + contenders}
        peer = max(peers, key=lambda c: rate[c.name])
        peer_rates.append(f"{config}: " + "; ".join(
            [f"{c.name} {rate[c.name]:,.0f}" for c in peers] + dropped))
        for c in contenders:
            row = {"config": config, "variant": c.name, "jax": rate[c.name],
                   "torch": rate[peer.name], "ratio": rate[c.name] / rate[peer.name],
                   "compile": c.compile_s}
            rows.append(row)
            print(f"{config:<18}{c.name:<34}{row['jax']:>16,.0f}{row['torch']:>20,.0f}"
                  f"{row['ratio']:>7.2f}x{row['compile']:>11.1f}", flush=True)
        if (inner_steps, meta_batch) in TARGETS:
            need = TARGETS[inner_steps, meta_batch]
            best = max(contenders, key=lambda c: rate[c.name])
            ratio, plain = (rate[c.name] / rate[peer.name] for c in (best, contenders[0]))
            targets.append(f"{config}: target >= {need}x; best `{best.name}` {ratio:.2f}x "
                           f"({'met' if ratio >= need else 'NOT met'}); plain `jit(step)` "
                           f"{plain:.2f}x ({'met' if plain >= need else 'NOT met'})")
    load.append(os.getloadavg()[0])
    for line in peer_rates + checks + targets:
        print(line)
    if out is not None:
        meta = {
            "command": " ".join(["python", *map(shlex.quote, sys.argv)]),
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "hardware": hardware(), "load": " / ".join(f"{v:.1f}" for v in load),
            "reps": reps, "checks": checks, "targets": targets, "peers": peer_rates,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(to_markdown(rows, meta))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
