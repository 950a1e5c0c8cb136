"""GPU figures in one command: MAML step speed against PyTorch, and a paper-scale Omniglot run.

Three parts, each written to ``--out`` as it finishes (``gpu.json`` and ``gpu.md``):

1. **Sinusoid MAML step** (MLP 1-40-40-1, 10 + 10 points per task, inner SGD lr 0.01, Adam
   1e-3, exact second order): outer updates per second of ``jax.jit(metajax.maml(...).step)``
   and of a ``torch.func`` step (``functional_call`` + ``grad`` + ``vmap`` over tasks) on the same
   device, for 1 and 5 inner steps at meta-batch 25, 1000 and 10000.
2. **Conv4 MAML, 5-way 1-shot, meta-batch 32** (28x28 inputs, 15 queries per class, 64
   filters, batch norm, one inner step of 0.4), second and first order: updates per second,
   compile time and peak device memory, against the PyTorch task loop (``autograd.grad`` with
   ``create_graph``, one task after another) and ``torch.func`` (``vmap`` over tasks).
3. **omniglot_maml at the paper's configuration** (64 filters, meta-batch 32, one query per
   class in training, 60k outer steps or as many as fit in ``--omniglot-minutes``, 100 steps per
   compiled call, evaluation on the device): test accuracy with its 95% CI. Needs the Omniglot
   zips (``--data`` or ``$METAJAX_DATA``); skipped, and said so, without them.

Contenders alternate within every repetition and the median rate is reported. On a machine
without PyTorch the PyTorch columns say so. ``--tiny`` shrinks everything to a seconds-long
CPU check of the script itself (its test runs it so).

Usage (on the GPU machine, metajax installed with ``pip install --no-deps -e .``):
    python benchmarks/gpu_suite.py --out "$OUT" --data shared/data
    python benchmarks/gpu_suite.py --out /tmp/gpu --tiny
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import metajax
from metajax import models, tasks


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def versions() -> dict:
    torch = _torch()
    import flax

    out = {"python": platform.python_version(), "jax": jax.__version__,
           "flax": flax.__version__, "optax": optax.__version__, "metajax": metajax.__version__,
           "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend()}
    if torch is not None:
        out["torch"] = torch.__version__
        out["torch_device"] = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                               else "cpu")
    return out


def _median_rate(fns: dict, reps: int, updates: int) -> dict:
    """Interleaved repetitions of each ``fn()`` (which runs ``updates`` updates and blocks)."""
    times = {k: [] for k in fns}
    for r in range(reps):
        order = list(fns)[r % len(fns):] + list(fns)[:r % len(fns)]
        for k in order:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return {k: updates / statistics.median(v) for k, v in times.items()}


def _peak_jax_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


# --- 1. sinusoid -----------------------------------------------------------------------------

def sinusoid_part(tiny: bool) -> list[dict]:
    batches = (4, 16) if tiny else (25, 1000, 10000)
    rows = []
    for inner_steps in (1, 5):
        for mb in batches:
            rows.append(_sinusoid_row(inner_steps, mb, tiny))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _sinusoid_row(inner_steps: int, mb: int, tiny: bool) -> dict:
    model = models.MLP(features=(40, 40, 1))
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1)))["params"]
    loss_fn = metajax.losses.mse(lambda p, x: model.apply({"params": p}, x))
    learner = metajax.maml(loss_fn, optax.adam(1e-3), inner_steps=inner_steps, inner_lr=0.01)
    batch = tasks.sinusoid(jax.random.PRNGKey(1), mb, k_shot=10, n_query=10)
    step = jax.jit(learner.step, donate_argnums=0)
    t0 = time.perf_counter()
    compiled = step.lower(learner.init(params), batch).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": learner.init(params)}
    n = 3 if tiny else 20

    def run_jax():
        s = holder["state"]
        for _ in range(n):
            s, _ = compiled(s, batch)
        jax.block_until_ready(s)
        holder["state"] = s

    fns = {"metajax": run_jax}
    torch = _torch()
    if torch is not None:
        fns["torch.func"] = _torch_sinusoid(torch, params, batch, inner_steps, n)
    for f in fns.values():
        f()  # warm-up
    rates = _median_rate(fns, 3 if tiny else 7, n)
    return {"part": "sinusoid", "inner_steps": inner_steps, "meta_batch": mb,
            "compile_s": compile_s, "updates_per_s": rates,
            "ratio_vs_torch_func": rates["metajax"] / rates["torch.func"]
            if "torch.func" in rates else None}


def _torch_sinusoid(torch, params, batch, inner_steps, n):
    from torch.func import functional_call, grad, vmap

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    net = torch.nn.Sequential(torch.nn.Linear(1, 40), torch.nn.ReLU(), torch.nn.Linear(40, 40),
                              torch.nn.ReLU(), torch.nn.Linear(40, 1)).to(dev)
    with torch.no_grad():
        for i, layer in enumerate((net[0], net[2], net[4])):
            layer.weight.copy_(torch.tensor(np.asarray(params[f"dense_{i}"]["kernel"]).T))
            layer.bias.copy_(torch.tensor(np.asarray(params[f"dense_{i}"]["bias"])))
    names = [k for k, _ in net.named_parameters()]
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    (xs, ys), (xq, yq) = (tuple(torch.tensor(np.asarray(a), device=dev) for a in part)
                          for part in batch)

    def loss(p, x, y):
        return torch.mean((functional_call(net, dict(zip(names, p, strict=True)), (x,)) - y) ** 2)

    def task_loss(p, xs, ys, xq, yq):
        for _ in range(inner_steps):
            g = grad(loss)(p, xs, ys)
            p = tuple(a - 0.01 * b for a, b in zip(p, g, strict=True))
        return loss(p, xq, yq)

    def meta_loss(p):
        return vmap(task_loss, in_dims=(None, 0, 0, 0, 0))(p, xs, ys, xq, yq).mean()

    def run():
        for _ in range(n):
            p = tuple(net.parameters())
            g = grad(meta_loss)(p)
            for a, b in zip(p, g, strict=True):
                a.grad = b
            opt.step()
        if dev == "cuda":
            torch.cuda.synchronize()

    return run


# --- 2. Conv4 --------------------------------------------------------------------------------

def conv4_part(tiny: bool) -> list[dict]:
    rows = []
    for first_order in (False, True):
        rows.append(_conv4_row(first_order, tiny))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _episodes(key, mb, n_way, size):
    kx, ky = jax.random.split(key)
    xs = jax.random.normal(kx, (mb, n_way, size, size, 1))
    xq = jax.random.normal(ky, (mb, n_way * 15, size, size, 1))
    ys = jnp.broadcast_to(jnp.arange(n_way), (mb, n_way))
    yq = jnp.broadcast_to(jnp.repeat(jnp.arange(n_way), 15), (mb, n_way * 15))
    return metajax.TaskBatch((xs, ys), (xq, yq))


def _conv4_row(first_order: bool, tiny: bool) -> dict:
    mb, width, size = (2, 8, 28) if tiny else (32, 64, 28)
    net = models.Conv4(n_way=5, features=width)
    variables = net.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 1)))
    apply = models.linen_apply(net, variables)
    loss_fn = metajax.losses.cross_entropy(apply)
    learner = metajax.maml(loss_fn, optax.adam(1e-3), inner_steps=1, inner_lr=0.4,
                           first_order=first_order, has_aux=True)
    batch = _episodes(jax.random.PRNGKey(1), mb, 5, size)
    params = variables["params"]
    step = jax.jit(learner.step, donate_argnums=0)
    t0 = time.perf_counter()
    compiled = step.lower(learner.init(params), batch).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": learner.init(params)}
    n = 2 if tiny else 20

    def run_jax():
        s = holder["state"]
        for _ in range(n):
            s, _ = compiled(s, batch)
        jax.block_until_ready(s)
        holder["state"] = s

    fns = {"metajax": run_jax}
    torch = _torch()
    if torch is not None:
        fns["torch loop"] = _torch_conv4(torch, batch, width, first_order, n, loop=True)
        fns["torch.func"] = _torch_conv4(torch, batch, width, first_order, n, loop=False)
    for f in fns.values():
        f()
    peak = {"metajax": _peak_jax_bytes()}
    rates = _median_rate(fns, 3 if tiny else 5, n)
    if torch is not None and torch.cuda.is_available():
        peak["torch"] = int(torch.cuda.max_memory_allocated())
    return {"part": "conv4", "first_order": first_order, "meta_batch": mb, "features": width,
            "compile_s": compile_s, "updates_per_s": rates, "peak_bytes": peak,
            "ratios": {k: rates["metajax"] / v for k, v in rates.items() if k != "metajax"}}


def _torch_conv4(torch, batch, width, first_order, n, *, loop):
    import torch.nn.functional as F
    from torch.func import grad, vmap

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    shapes = []
    c_in = 1
    for _ in range(4):
        shapes += [(width, c_in, 3, 3), (width,), (width,), (width,)]
        c_in = width
    feat = width * (28 // 16) ** 2 if width else 0
    shapes += [(5, feat), (5,)]
    params = [(torch.randn(s, generator=g) * 0.1).to(dev).requires_grad_() for s in shapes]
    opt = torch.optim.Adam(params, lr=1e-3)
    (xs, ys), (xq, yq) = (tuple(torch.tensor(np.asarray(a), device=dev) for a in part)
                          for part in batch)
    xs, xq = xs.permute(0, 1, 4, 2, 3), xq.permute(0, 1, 4, 2, 3)
    ys, yq = ys.long(), yq.long()

    def forward(p, x):
        for b in range(4):
            w, bias, gamma, beta = p[4 * b:4 * b + 4]
            x = F.conv2d(x, w, bias, padding=1)
            x = F.batch_norm(x, None, None, gamma, beta, training=True)
            x = F.max_pool2d(F.relu(x), 2)
        return x.flatten(1) @ p[-2].T + p[-1]

    def loss(p, x, y):
        return F.cross_entropy(forward(p, x), y)

    def task_loss(p, xs, ys, xq, yq):
        if loop:
            gr = torch.autograd.grad(loss(p, xs, ys), p, create_graph=not first_order)
        else:
            gr = grad(loss)(p, xs, ys)
            if first_order:
                gr = [a.detach() for a in gr]
        return loss([a - 0.4 * b for a, b in zip(p, gr, strict=True)], xq, yq)

    def run():
        for _ in range(n):
            opt.zero_grad()
            if loop:
                for t in range(xs.shape[0]):
                    (task_loss(params, xs[t], ys[t], xq[t], yq[t]) / xs.shape[0]).backward()
            else:
                gr = grad(lambda p: vmap(task_loss, in_dims=(None, 0, 0, 0, 0))(
                    p, xs, ys, xq, yq).mean())(params)
                for a, b in zip(params, gr, strict=True):
                    a.grad = b
            opt.step()
        if dev == "cuda":
            torch.cuda.synchronize()

    return run


# --- 3. omniglot_maml ------------------------------------------------------------------------

def omniglot_part(out: Path, data: str | None, minutes: float, tiny: bool) -> dict:
    root = data or os.environ.get("METAJAX_DATA", "")
    if not root or not (Path(root) / "omniglot" / "images_background.zip").exists():
        return {"part": "omniglot", "skipped": f"no Omniglot zips under {root or '(unset)'}"}
    paper = ["features=64", "meta_batch=32", "n_query=1", "unroll=false", "eval_chunk=100",
             "cross_domain=false", "strided=true"]
    if tiny:
        paper = ["features=8", "meta_batch=2", "n_query=1", "cross_domain=false",
                 "test_tasks=20", "val_tasks=10", "pretrain_steps=10"]

    def run(name, steps, extra):
        cmd = [sys.executable, "-m", "metajax.cli", "run", "omniglot_maml", "--no-progress",
               "--overwrite",
               "--out", str(out / name), "--set", f"data_root={root}",
               "--set", f"num_steps={steps}"]
        for o in paper + extra:
            cmd += ["--set", o]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        return time.perf_counter() - t0, json.loads((out / name / "summary.json").read_text())

    probe_steps = 20 if tiny else 400
    calls = ["steps_per_call=10", "log_every=10", "val_every=20"] if tiny else \
        ["steps_per_call=100", "log_every=100", "val_every=400", "pretrain_steps=400"]
    run("omniglot_probe", probe_steps, calls)
    records = [json.loads(line) for line in
               (out / "omniglot_probe" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r.get("method") == "maml"][-1]  # after compilation
    rate = last["tasks_per_s"] / (2 if tiny else 32)
    steps = 40 if tiny else int(min(60_000, rate * minutes * 60) // 100 * 100)
    long = (["steps_per_call=10", "log_every=10", "val_every=20"] if tiny else
            ["steps_per_call=100", "log_every=500", f"val_every={max(500, steps // 10)}",
             f"pretrain_steps={steps}"])
    wall, summary = run("omniglot_maml", steps, long)
    return {"part": "omniglot", "num_steps": steps, "steps_per_s": rate, "wall_s": wall,
            "results": summary["results"], "config": paper + long}


# --- report ----------------------------------------------------------------------------------

def to_markdown(report: dict) -> str:
    v = report["versions"]
    lines = [f"# GPU figures ({v['device']})", "",
             f"Date {report['date']}; {v['backend']} device {v['device']}; "
             + ", ".join(f"{k} {v[k]}" for k in ("python", "jax", "flax", "optax", "torch")
                         if k in v) + ".", "",
             f"Command: `{report['command']}`", "", "## Sinusoid MAML step (updates/s)", "",
             "| inner steps | meta-batch | metajax | torch.func | ratio | compile |",
             "|---|---|---|---|---|---|"]
    for r in report.get("sinusoid", []):
        u = r["updates_per_s"]
        ratio = f"{r['ratio_vs_torch_func']:.2f}x" if r["ratio_vs_torch_func"] else "–"
        lines.append(f"| {r['inner_steps']} | {r['meta_batch']} | {u['metajax']:.1f} | "
                     f"{u.get('torch.func', float('nan')):.1f} | {ratio} | "
                     f"{r['compile_s']:.1f} s |")
    lines += ["", "## Conv4 MAML, 5-way 1-shot (updates/s)", "",
              "| order | metajax | torch loop | torch.func | compile | peak memory (metajax / "
              "torch) |", "|---|---|---|---|---|---|"]
    for r in report.get("conv4", []):
        u, p = r["updates_per_s"], r["peak_bytes"]
        mem = " / ".join(f"{b / 2**30:.2f} GiB" if b else "–"
                         for b in (p.get("metajax"), p.get("torch")))
        lines.append(f"| {'first' if r['first_order'] else 'second'} | {u['metajax']:.2f} | "
                     f"{u.get('torch loop', float('nan')):.2f} | "
                     f"{u.get('torch.func', float('nan')):.2f} | {r['compile_s']:.1f} s | "
                     f"{mem} |")
    om = report.get("omniglot")
    lines += ["", "## omniglot_maml, paper configuration", ""]
    if om is None or "skipped" in om:
        lines.append(f"Skipped: {om['skipped'] if om else 'not run'}.")
    else:
        lines.append(f"{om['num_steps']} outer steps ({om['steps_per_s']:.1f} steps/s), "
                     f"{om['wall_s'] / 60:.1f} min in all; `--set " + " --set ".join(om["config"])
                     + "`.")
        steps = list(dict.fromkeys(k for row in om["results"].values() for k in row))
        lines += ["", "| method | " + " | ".join(f"{k} steps" for k in steps) + " |",
                  "|---" * (1 + len(steps)) + "|"]
        for m, row in om["results"].items():
            lines.append(f"| {m} | " + " | ".join(
                f"{row[k]['mean'] * 100:.1f} ± {row[k]['ci95'] * 100:.1f}%" if k in row else "–"
                for k in steps) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", default=None, help="directory holding omniglot/")
    parser.add_argument("--omniglot-minutes", type=float, default=5.0)
    parser.add_argument("--parts", nargs="+", default=["sinusoid", "conv4", "omniglot"],
                        choices=["sinusoid", "conv4", "omniglot"])
    parser.add_argument("--tiny", action="store_true", help="a seconds-long CPU check")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"date": time.strftime("%Y-%m-%d"), "versions": versions(),
              "command": "python benchmarks/gpu_suite.py " + " ".join(argv or sys.argv[1:])}

    def save():
        (args.out / "gpu.json").write_text(json.dumps(report, indent=2))
        (args.out / "gpu.md").write_text(to_markdown(report))

    if "sinusoid" in args.parts:
        report["sinusoid"] = sinusoid_part(args.tiny)
        save()
    if "conv4" in args.parts:
        report["conv4"] = conv4_part(args.tiny)
        save()
    if "omniglot" in args.parts:
        report["omniglot"] = omniglot_part(args.out, args.data, args.omniglot_minutes, args.tiny)
    save()
    print(f"wrote {args.out / 'gpu.md'}")


if __name__ == "__main__":
    main()
