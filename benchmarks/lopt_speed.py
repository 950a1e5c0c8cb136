"""Learned-optimizer outer-training speed: metajax against PyTorch, in one invocation.

Both sides meta-train the same per-parameter MLP learned optimizer (``lopt.mlp_optimizer``
with hidden (32, 32): 11 features per coordinate, a direction and a log-magnitude out, a
learned nominal SGD rate) on random 10-D quadratics by truncated backpropagation: 16 tasks,
episodes of 100 inner steps, truncations of 20 (second order: the inner gradients are
differentiated through), meta-loss = mean log training loss over the truncation, the
meta-gradient clipped to global norm 1 and applied by Adam 1e-3. A finished episode starts on
a new task. One outer step = one truncation of every task.

Contenders, interleaved in every repetition (the rotating order cancels drift on a shared
machine); the median rate is reported:

* ``metajax jit(step)``: ``jax.jit(lopt.meta_trainer(...).step)``, one call per outer step;
* ``metajax scan(K)``: ``K`` outer steps per call under ``lax.scan``;
* ``torch``: the same computation written for PyTorch with the tasks as a batch dimension
  (the strongest form: no Python loop over tasks), ``torch.autograd.grad(create_graph=True)``
  for the inner gradients and ``torch.optim.Adam``, with all threads and with one (the faster
  is the reference for the ratio).

Before timing, both sides compute one truncation's meta-loss and meta-gradient from the same
meta-parameters and the same tasks; their agreement is printed and recorded.

Usage:
    python benchmarks/lopt_speed.py          # writes benchmarks/results/lopt_speed.md/.json
    python benchmarks/lopt_speed.py --quick  # a smoke test; writes nothing
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax import lopt

RESULTS = Path(__file__).resolve().parent / "results"
DECAYS = (0.5, 0.9, 0.99, 0.999)
TIME_SCALES = (10.0, 100.0, 1000.0)


def torch_trainer(torch, theta, *, n_tasks, dim, num_steps, truncation, lr, clip):
    """The PyTorch peer: state and one outer step (a truncation of every task)."""
    layers = [(torch.tensor(np.asarray(layer["w"])).requires_grad_(),
               torch.tensor(np.asarray(layer["b"])).requires_grad_()) for layer in theta["layers"]]
    log_lr = torch.tensor(np.asarray(theta["log_lr"])).requires_grad_()
    meta_params = [log_lr] + [t for wb in layers for t in wb]
    outer = torch.optim.Adam(meta_params, lr=lr)

    def sample(n):
        return (torch.randn(n, dim, dim), torch.randn(n, dim), torch.randn(n, dim))

    def fresh(n):
        w, y, p = sample(n)
        zeros = torch.zeros(n, dim)
        return {"W": w, "y": y, "p": p, "m": [zeros.clone() for _ in DECAYS],
                "v": zeros.clone(), "t": torch.zeros(n)}

    def inner(state):
        w, y, p, ms, v, t = (state[k] for k in ("W", "y", "p", "m", "v", "t"))
        losses = []
        for _ in range(truncation):
            loss = ((torch.einsum("tij,tj->ti", w, p) - y) ** 2).sum(-1)
            g, = torch.autograd.grad(loss.sum(), p, create_graph=True)
            losses.append(loss)
            ms = [d * m + (1 - d) * g for d, m in zip(DECAYS, ms, strict=True)]
            v = 0.999 * v + 0.001 * g**2
            x = torch.stack([g, p, *ms, g * torch.rsqrt(v + 1e-12)], -1)
            x = x * torch.rsqrt(1e-5 + (x**2).mean(1, keepdim=True))
            times = torch.stack([t / num_steps] + [torch.tanh(t / s - 1) for s in TIME_SCALES],
                                -1)
            h = torch.cat([x, times[:, None].expand(-1, dim, -1)], -1)
            for i, (lw, lb) in enumerate(layers):
                h = h @ lw + lb
                if i < len(layers) - 1:
                    h = torch.relu(h)
            step = 1e-3 * h[..., 0] * torch.exp(1e-3 * h[..., 1])
            p = p - (torch.exp(log_lr) * g + step)
            t = t + 1
        losses = torch.stack(losses, -1)
        meta_loss = torch.log(losses + 1e-8).mean(-1).mean()
        return meta_loss, {"W": w, "y": y, "p": p, "m": ms, "v": v, "t": t}

    def detach(state):
        return {k: ([m.detach() for m in v] if k == "m" else v.detach()) for k, v in
                state.items()}

    def step(state):
        done = state["t"] >= num_steps
        if bool(done.any()):
            new = fresh(state["t"].shape[0])
            state = {k: ([torch.where(done[:, None], a, b) for a, b in zip(new[k], v,
                                                                             strict=True)]
                         if k == "m" else torch.where(done.view(-1, *[1] * (v.ndim - 1)),
                                                      new[k], v))
                     for k, v in state.items()}
        state["p"] = state["p"].detach().requires_grad_()
        meta_loss, new = inner(state)
        outer.zero_grad(set_to_none=True)
        meta_loss.backward()
        torch.nn.utils.clip_grad_norm_(meta_params, clip)
        outer.step()
        return detach(new), meta_loss

    def staggered():
        state = fresh(n_tasks)
        state["t"] = truncation * torch.randint(0, num_steps // truncation, (n_tasks,)).float()
        return state

    return {"step": step, "staggered": staggered, "inner": inner, "meta_params": meta_params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-tasks", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100, help="outer steps per repetition")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--steps-per-call", type=int, default=50)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.reps, args.steps_per_call = 10, 2, 5
    if args.steps % args.steps_per_call:
        parser.error("--steps must be a multiple of --steps-per-call")
    import torch

    dim, num_steps, truncation, lr, clip = 10, 100, 20, 1e-3, 1.0
    opt = lopt.mlp_optimizer(hidden=(32, 32))
    family = lopt.quadratic_family(dim=dim)
    meta_loss = lambda losses: jnp.mean(jnp.log(losses + 1e-8))  # noqa: E731
    theta = opt.init(jax.random.PRNGKey(0))
    outer = optax.chain(optax.clip_by_global_norm(clip), optax.adam(lr))

    def trainer(stagger):
        est = lopt.truncated_backprop(opt, family, num_steps=num_steps, truncation=truncation,
                                      n_tasks=args.n_tasks, meta_loss=meta_loss,
                                      stagger=stagger)
        return est, lopt.meta_trainer(est, outer, key=jax.random.PRNGKey(1))

    # agreement check: one truncation from the same theta and tasks, no stagger
    est, _ = trainer(False)
    runs = est.init(theta, jax.random.PRNGKey(2))
    _, jgrad, jm = jax.jit(est.estimate)(theta, runs, jax.random.PRNGKey(3))
    peer = torch_trainer(torch, theta, n_tasks=args.n_tasks, dim=dim, num_steps=num_steps,
                         truncation=truncation, lr=lr, clip=clip)
    zeros = torch.zeros(args.n_tasks, dim)
    tstate = {"W": torch.tensor(np.asarray(runs.task["W"])),
              "y": torch.tensor(np.asarray(runs.task["y"])),
              "p": torch.tensor(np.asarray(runs.params)).requires_grad_(),
              "m": [zeros.clone() for _ in DECAYS], "v": zeros.clone(),
              "t": torch.zeros(args.n_tasks)}
    tloss, _ = peer["inner"](tstate)
    tgrads = torch.autograd.grad(tloss, peer["meta_params"])
    jflat = [jgrad["log_lr"]] + [a for layer in jgrad["layers"] for a in (layer["w"], layer["b"])]
    rel = max(float(np.abs(np.asarray(a) - b.numpy()).max() / (np.abs(b.numpy()).max() + 1e-12))
              for a, b in zip(jflat, tgrads, strict=True))
    check = {"meta_loss": [float(jm["loss"]), float(tloss.detach())], "grad_max_rel_diff": rel}
    print(json.dumps(check))

    _, jtrainer = trainer(True)
    step = jax.jit(jtrainer.step, donate_argnums=0)

    def scanned(state, key):
        keys = jax.random.split(key, args.steps_per_call)
        return jax.lax.scan(jtrainer.step, state, keys)

    scan = jax.jit(scanned, donate_argnums=0)

    def fresh():  # the steps donate their state: give each its own copy of theta
        return jtrainer.init(jax.tree.map(jnp.copy, theta))

    t0 = time.perf_counter()
    jax.block_until_ready(step(fresh(), jax.random.PRNGKey(0)))
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(scan(fresh(), jax.random.PRNGKey(0)))
    holder = {"a": fresh(), "b": fresh(), "t": peer["staggered"]()}
    keys = list(jax.random.split(jax.random.PRNGKey(4), args.steps))

    def run_step():
        s = holder["a"]
        for k in keys:
            s, _ = step(s, k)
        holder["a"] = jax.block_until_ready(s)

    def run_scan():
        s = holder["b"]
        for k in keys[: args.steps // args.steps_per_call]:
            s, _ = scan(s, k)
        holder["b"] = jax.block_until_ready(s)

    threads = torch.get_num_threads()

    def run_torch(n_threads):
        def run():
            torch.set_num_threads(n_threads)
            s = holder["t"]
            for _ in range(args.steps):
                s, _ = peer["step"](s)
            holder["t"] = s
            torch.set_num_threads(threads)
        return run

    contenders = {"metajax jit(step)": run_step,
                  f"metajax scan(K={args.steps_per_call})": run_scan,
                  f"torch ({threads} threads)": run_torch(threads),
                  "torch (1 thread)": run_torch(1)}
    for f in contenders.values():
        f()  # warm-up
    times = {k: [] for k in contenders}
    for r in range(args.reps):
        names = list(contenders)
        for k in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            contenders[k]()
            times[k].append(time.perf_counter() - t)
    rates = {k: args.steps / statistics.median(v) for k, v in times.items()}
    torch_best = max(v for k, v in rates.items() if k.startswith("torch"))
    print(json.dumps({"rates": rates, "check": check, "compile_s": compile_s}))
    if args.quick:
        return
    import flax

    md = [
        "# Learned-optimizer outer training speed: metajax against PyTorch", "",
        f"Date {datetime.date.today().isoformat()}; {platform.machine()}, {os.cpu_count()} CPU "
        f"cores; Python {platform.python_version()}, jax {jax.__version__}, flax "
        f"{flax.__version__}, optax {optax.__version__}, torch {torch.__version__}.", "",
        f"Command: `python benchmarks/lopt_speed.py` ({args.steps} outer steps per "
        f"repetition, {args.reps} repetitions, median; contenders interleaved). Setup: the "
        f"MLP learned optimizer (hidden 32, 32) meta-trained by truncated backprop on 10-D "
        f"quadratics, {args.n_tasks} tasks, 100-step episodes, truncation 20, second order, "
        f"mean-log meta-loss, clip 1, Adam 1e-3; one outer step = one truncation of every "
        f"task. The torch peer batches the tasks as a tensor dimension. Agreement on one "
        f"truncation from the same meta-parameters and tasks: meta-loss metajax "
        f"{check['meta_loss'][0]:.6f}, torch {check['meta_loss'][1]:.6f}; meta-gradient "
        f"largest relative difference {check['grad_max_rel_diff']:.1e}. metajax compile "
        f"{compile_s:.1f} s, excluded.", "",
        "| contender | outer steps/s | vs the faster torch |", "|---|---:|---:|"]
    md += [f"| {k} | {v:.0f} | {v / torch_best:.2f}x |" for k, v in rates.items()]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lopt_speed.md").write_text("\n".join(md) + "\n")
    (RESULTS / "lopt_speed.json").write_text(json.dumps(
        {"rates": rates, "compile_s": compile_s, "check": check, "steps": args.steps,
         "reps": args.reps, "n_tasks": args.n_tasks, "steps_per_call": args.steps_per_call},
        indent=2))
    print("\n".join(md))


if __name__ == "__main__":
    main()
