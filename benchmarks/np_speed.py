"""CNP training speed: metajax against a PyTorch CNP of the same size, in one invocation.

Both sides train DeepMind's notebook CNP (encoder [128]x4 on (x, y), mean over the context,
decoder [128, 128, 2] on (r, x), std = 0.1 + 0.9 softplus, Adam 1e-4) on the same GP batches
(batch 64, 3-10 context points padded to 10 with a mask, targets = the context plus 2-10 more,
padded to 20), with the same masked-mean NLL. Contenders, interleaved in every repetition
(the rotating order cancels drift on a shared machine); the median rate is reported:

* ``metajax jit(step)``: ``jax.jit(neural_process(...).step)`` on pre-sampled batches;
* ``metajax multi_step``: ``make_multi_step`` with ``--steps-per-call`` steps per call, batches
  sampled on the device inside the call;
* ``torch``: an ``nn.Module`` CNP with fused Adam, on the same pre-sampled batches, with all
  threads and with one (the faster is the reference for the ratio).

Usage:
    python benchmarks/np_speed.py                  # writes benchmarks/results/np_speed.md
    python benchmarks/np_speed.py --quick          # a smoke test; writes nothing
    python benchmarks/np_speed.py --cpu-configure  # with metajax.cpu.configure() first
"""

from __future__ import annotations

import argparse
import datetime
import functools
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

import metajax
from metajax import models

RESULTS = Path(__file__).resolve().parent / "results"


def batches(n: int, batch: int):
    sample = jax.jit(functools.partial(metajax.tasks.gp_curves, n_tasks=batch))
    return [sample(jax.random.PRNGKey(i)) for i in range(n)]


def torch_cnp(torch, params):
    nn = torch.nn

    def mlp(sizes, p):
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            lin = nn.Linear(a, b)
            with torch.no_grad():
                lin.weight.copy_(torch.tensor(np.asarray(p[f"dense_{i}"]["kernel"]).T))
                lin.bias.copy_(torch.tensor(np.asarray(p[f"dense_{i}"]["bias"])))
            layers += [lin, nn.ReLU()]
        return nn.Sequential(*layers[:-1])

    class CNP(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = mlp([2, 128, 128, 128, 128], params["deterministic"])
            self.decoder = mlp([129, 128, 128, 2], params["decoder"])

        def forward(self, xc, yc, mc, xt):
            h = self.encoder(torch.cat([xc, yc], -1)) * mc[..., None]
            r = h.sum(1) / mc.sum(1, keepdim=True).clamp(min=1)
            out = self.decoder(torch.cat([r[:, None].expand(-1, xt.shape[1], -1), xt], -1))
            mean, raw = out.chunk(2, -1)
            return mean, 0.1 + 0.9 * torch.nn.functional.softplus(raw)

    return CNP()


def torch_step(torch, model, opt):
    def step(xc, yc, mc, xt, yt, mt):
        mean, std = model(xc, yc, mc, xt)
        lp = torch.distributions.Normal(mean, std).log_prob(yt).sum(-1)
        loss = -((lp * mt).sum(1) / mt.sum(1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200, help="outer steps per repetition")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--steps-per-call", type=int, default=100)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cpu-configure", action="store_true",
                        help="call metajax.cpu.configure() first (it slows this MLP workload)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.reps, args.steps_per_call = 20, 3, 10
    if args.cpu_configure:
        metajax.cpu.configure()
    import torch

    model = models.cnp()
    apply = models.process_apply(model)
    data = batches(args.steps, args.batch)
    params = models.init_process(model, jax.random.PRNGKey(0), data[0])
    learner = metajax.neural_process(metajax.conditional_nll(apply), optax.adam(1e-4),
                                     key=jax.random.PRNGKey(1))
    step = jax.jit(learner.step, donate_argnums=0)
    sample = functools.partial(metajax.tasks.gp_curves, n_tasks=args.batch)
    multi = jax.jit(metajax.make_multi_step(learner.step, sample,
                                            steps_per_call=args.steps_per_call),
                    donate_argnums=0)
    def fresh():  # the steps donate their state: give each its own copy of the weights
        return learner.init(jax.tree.map(jnp.copy, params))

    t0 = time.perf_counter()
    jax.block_until_ready(step(fresh(), data[0]))
    compile_s = time.perf_counter() - t0
    holder = {"a": fresh(), "b": fresh()}

    def run_step():
        s = holder["a"]
        for d in data:
            s, m = step(s, d)
        jax.block_until_ready(s)
        holder["a"] = s

    def run_multi():
        s = holder["b"]
        for i in range(args.steps // args.steps_per_call):
            s, m = multi(s, jax.random.PRNGKey(i))
        jax.block_until_ready(s)
        holder["b"] = s

    tdata = [tuple(torch.tensor(np.asarray(a)).float() for a in (
        d.support.x, d.support.y, d.support.mask, d.query.x, d.query.y, d.query.mask))
        for d in data]
    net = torch_cnp(torch, params)
    tstep = torch_step(torch, net, torch.optim.Adam(net.parameters(), lr=1e-4, fused=True))
    threads = torch.get_num_threads()

    def run_torch(n_threads):
        def run():
            torch.set_num_threads(n_threads)
            for d in tdata:
                tstep(*d)
            torch.set_num_threads(threads)
        return run

    # one-step check: both sides compute the same loss from the same weights and batch
    jl = float(metajax.conditional_nll(apply)(params, jax.tree.map(lambda a: a[0], data[0]),
                                               None)[0])
    with torch.no_grad():
        mean, std = torch_cnp(torch, params)(*(a[:1] for a in tdata[0][:4]))
        lp = torch.distributions.Normal(mean, std).log_prob(tdata[0][4][:1]).sum(-1)
        tl = float(-((lp * tdata[0][5][:1]).sum(1) / tdata[0][5][:1].sum(1)).mean())
    contenders = {"metajax jit(step)": run_step,
                  f"metajax multi_step(K={args.steps_per_call})": run_multi,
                  f"torch ({threads} threads)": run_torch(threads), "torch (1 thread)":
                  run_torch(1)}
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
    rows = [(k, v, v / torch_best) for k, v in rates.items()]
    print(json.dumps({"rates": rates, "loss_check": [jl, tl], "compile_s": compile_s}))
    if args.quick:
        return
    import flax

    md = [
        "# CNP training speed: metajax against PyTorch (batch 64, DeepMind's notebook CNP)", "",
        f"Date {datetime.date.today().isoformat()}; {platform.machine()}, {os.cpu_count()} CPU "
        f"cores; Python {platform.python_version()}, jax {jax.__version__}, flax "
        f"{flax.__version__}, optax {optax.__version__}, torch {torch.__version__}.", "",
        f"Command: `python benchmarks/np_speed.py{' --cpu-configure' * args.cpu_configure}` "
        f"({args.steps} steps per repetition, "
        f"{args.reps} repetitions, median; contenders interleaved). Same weights, batches and "
        f"masked NLL on both sides (one-task loss check: metajax {jl:.6f}, torch {tl:.6f}); "
        f"metajax compile {compile_s:.1f} s, excluded.", "",
        "| contender | steps/s | vs the faster torch |", "|---|---:|---:|"]
    md += [f"| {k} | {v:.0f} | {ratio:.2f}x |" for k, v, ratio in rows]
    (RESULTS / "np_speed.md").write_text("\n".join(md) + "\n")
    (RESULTS / "np_speed.json").write_text(json.dumps(
        {"rates": rates, "compile_s": compile_s, "loss_check": [jl, tl],
         "cpu_configure": args.cpu_configure, "steps": args.steps, "reps": args.reps,
         "batch": args.batch}, indent=2))
    print("\n".join(md))


if __name__ == "__main__":
    main()
