"""Conv-net MAML meta-step speed: metajax against a PyTorch task loop and torch.func.vmap.

Omniglot 5-way 1-shot shapes (28x28x1, 15 query images per class), Conv4 (64 filters, batch
norm with batch statistics, ReLU, 2x2 max-pooling), meta-batch 32, one inner SGD step at
lr 0.4, outer Adam; second and first order. Random images: speed does not depend on pixels.

Every peer runs in its own fresh subprocess, one after another, in this one invocation
(peak memory is that subprocess's peak resident set; the thread count is the same for all):

Every metajax peer calls ``metajax.cpu.configure()`` first, as ``metajax run`` does.

* ``metajax conv4 <strategy>``: ``metajax.maml(..., task_batching=...)`` with
  ``metajax.models.Conv4``; ``conv_per_task`` is ``metajax.cpu.conv_batching()``, what the
  default (``auto``, ``task_batching=None``) resolves to on CPU; ``vmap`` is
  ``metajax.vmap_batching()``.
* ``metajax conv4 conv_per_task xla-defaults``: the same with ``METAJAX_KEEP_XLA_FLAGS=1``,
  i.e. XLA:CPU's default kernel libraries (convolutions in YNNPACK) instead of
  ``configure()``'s choice (convolutions in Eigen; see ``metajax/_src/cpu/xla_flags.py``).
* ``metajax conv4 conv_per_task malloc-defaults``: the same with ``METAJAX_KEEP_MALLOC=1``,
  i.e. glibc's default malloc settings instead of ``configure()``'s (per-call XLA scratch
  buffers then are fresh mappings, page-faulted in every call; see
  ``metajax/_src/cpu/heap.py``).
* ``torch loop heap-tuned``: the torch loop with metajax's malloc settings given to glibc
  (``GLIBC_TUNABLES``), to check that the PyTorch peer does not gain from them too.
* ``metajax user-linen``: a user's own Linen conv net (defined below, written the way a user
  would: ``nn.Conv``/``nn.BatchNorm``/``nn.max_pool``, different widths) with default settings.
* ``torch loop``: the usual PyTorch MAML, a Python loop over tasks, ``create_graph=True``.
* ``torch.func vmap``: ``torch.func.vmap`` of ``torch.func.grad`` over the tasks.
* ``metajax conv4 processes``: one single-threaded process per thread (``--threads``), each
  pinned to a core and meta-training on its share of the meta-batch
  (:func:`metajax.distributed.init_process`, :func:`metajax.distributed.process_step`; the
  learner averages its meta-gradients over the processes, an all-reduce over gloo).
* ``torch loop processes``: the PyTorch peer split the same way (one single-threaded process
  per core on its share of the tasks, gradients averaged with ``torch.distributed``
  ``all_reduce`` over gloo before Adam): what the same idea gives PyTorch.
* ``metajax conv4-unfused conv_per_task``: Conv4 with ``fuse_thin_blocks=False`` (its first
  block as separate convolution, batch-norm, ReLU and max-pool layers).

The metajax peers run with ``track_pre_adaptation=False``: the default also evaluates the query
loss before adaptation (one more forward pass per task), which the PyTorch peers do not do.

Printed per peer: tasks/s, ms per meta-step (median of ``--repeats`` after ``--warmup``
untimed calls), compile time (lowering and compiling), peak RSS, and ratios against the torch
loop.
``--profile`` adds the metajax meta-step's time by XLA operation kind.

    python benchmarks/conv_task_batching.py                  # full table (several minutes)
    python benchmarks/conv_task_batching.py --meta-batch 4 --peers "metajax conv4"
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from metajax._src.cpu import heap

PEERS = ("metajax conv4 conv_per_task", "metajax user-linen", "torch loop", "torch.func vmap",
         "metajax conv4 conv_per_task xla-defaults", "metajax conv4 conv_per_task malloc-defaults",
         "torch loop heap-tuned", "metajax conv4 vmap", "metajax conv4-unfused conv_per_task",
         "metajax conv4 processes", "torch loop processes")
# glibc malloc settings equal to metajax.cpu.configure()'s (metajax/_src/cpu/heap.py).
HEAP_TUNABLES = heap.glibc_tunables()
SUFFIX_ENV = {  # peer-name suffix: environment of that peer's subprocess
    "xla-defaults": {"METAJAX_KEEP_XLA_FLAGS": "1"},
    "malloc-defaults": {"METAJAX_KEEP_MALLOC": "1"},
    "heap-tuned": {"GLIBC_TUNABLES": HEAP_TUNABLES},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--meta-batch", type=int, default=32)
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--n-way", type=int, default=5)
    p.add_argument("--k-shot", type=int, default=1)
    p.add_argument("--n-query", type=int, default=15)
    p.add_argument("--inner-lr", type=float, default=0.4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed calls before the timed ones (metajax's heap grows to hold the "
                        "buffers in flight over the first calls; more with 2+ threads)")
    p.add_argument("--orders", default="second,first")
    p.add_argument("--peers", default=",".join(PEERS[:7]),
                   help=f"comma-separated subset of {PEERS}; 'metajax conv4 vmap' (plain "
                        "jax.vmap) takes minutes per step at meta-batch 32: add it with "
                        "--vmap-meta-batch")
    p.add_argument("--vmap-meta-batch", type=int, default=2,
                   help="meta-batch for the plain-vmap peer (tasks/s is per task)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--cpus", default="",
                   help="pin every peer to these CPUs with taskset (e.g. '0'); sets --threads "
                        "to their number. PyTorch's OpenMP threads collapse (up to 30x in "
                        "second order) when another process shares the cores; pinning to a "
                        "core of one's own avoids that")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--json", default="", help="also write the rows to this JSON file")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--order", default="second", help=argparse.SUPPRESS)
    p.add_argument("--process-id", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- metajax


def _jax_data(args, n_tasks):
    import jax
    import jax.numpy as jnp

    import metajax
    n_s, n_q = args.n_way * args.k_shot, args.n_way * args.n_query
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    support = (jax.random.normal(k1, (n_tasks, n_s, 28, 28, 1)),
               jnp.tile(jnp.repeat(jnp.arange(args.n_way), args.k_shot), (n_tasks, 1)))
    query = (jax.random.normal(k2, (n_tasks, n_q, 28, 28, 1)),
             jnp.tile(jnp.repeat(jnp.arange(args.n_way), args.n_query), (n_tasks, 1)))
    return metajax.TaskBatch(support, query)


def user_linen_net(n_way: int):
    """A conv net as a user would write it (not metajax's Conv4)."""
    import flax.linen as nn

    class UserConvNet(nn.Module):
        @nn.compact
        def __call__(self, x):
            for width in (32, 64, 64, 64):
                x = nn.Conv(width, (3, 3))(x)
                x = nn.BatchNorm(use_running_average=False)(x)
                x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
            return nn.Dense(n_way)(x.reshape(x.shape[0], -1))

    return UserConvNet()


def run_metajax(args, model_name: str, strategy: str):
    import jax
    import optax

    import metajax
    import metajax.cpu
    from metajax import losses, models

    metajax.cpu.configure()  # first: the CPU tuning metajax run applies too
    mesh = None
    if strategy == "processes":  # before anything computes: pins, one thread, gloo
        mesh = metajax.distributed.init_process(args.process_id, args.threads,
                                                coordinator=f"localhost:{args.port}")
        strategy = "auto"
    n_tasks = args.vmap_meta_batch if strategy == "vmap" else args.meta_batch
    tasks = _jax_data(args, n_tasks)
    if model_name.startswith("conv4"):  # conv4-unfused: first block as separate layers
        model = models.Conv4(n_way=args.n_way, features=args.features,
                             fuse_thin_blocks=model_name == "conv4")
    else:
        model = user_linen_net(args.n_way)
    variables = model.init(jax.random.PRNGKey(1), tasks.support[0][0])
    loss_fn = losses.cross_entropy(models.linen_apply(model, variables))
    batching = {"auto": None, "vmap": metajax.vmap_batching(),
                "conv_per_task": metajax.cpu.conv_batching()}[strategy]
    learner = metajax.maml(loss_fn, optax.adam(1e-3), inner_steps=1, inner_lr=args.inner_lr,
                           first_order=args.order == "first", has_aux=True,
                           track_pre_adaptation=False, task_batching=batching,
                           axis_name="tasks" if mesh is not None else None)
    state = learner.init(variables["params"])
    step = jax.jit(learner.step)
    if mesh is not None:  # each process its share of the tasks, the state replicated
        step = jax.jit(metajax.distributed.process_step(learner.step, mesh))
        state = metajax.distributed.to_global(state, mesh)
        tasks = metajax.distributed.to_global(tasks, mesh, share=True)
    t0 = time.perf_counter()
    compiled = step.lower(state, tasks).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        jax.block_until_ready(compiled(state, tasks))
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(state, tasks))
        times.append(time.perf_counter() - t0)
    profile = _profile(compiled, state, tasks) if args.profile else None
    return n_tasks, times, compile_s, profile


def _profile(compiled, state, tasks, top: int = 14):
    """Time of one meta-step by XLA operation kind (fusion names without their numbers)."""
    import collections
    import glob
    import re
    import tempfile

    import jax
    from jax.profiler import ProfileData

    with tempfile.TemporaryDirectory() as logdir:
        with jax.profiler.trace(logdir):
            jax.block_until_ready(compiled(state, tasks))
        (path,) = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
        data = ProfileData.from_file(path)
    by_kind, counts = collections.Counter(), collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):
                continue
            for event in line.events:
                if event.name.startswith(("ThunkExecutor", "end:")):
                    continue
                kind = re.sub(r"\.\d+$", "", event.name)
                by_kind[kind] += event.duration_ns / 1e6
                counts[kind] += 1
    total = sum(by_kind.values())
    return [{"op": k, "ms": round(v, 1), "share": round(v / total, 3), "count": counts[k]}
            for k, v in by_kind.most_common(top)]


# ----------------------------------------------------------------------------- torch


def _torch_params(args, torch):
    g = torch.Generator().manual_seed(0)
    params, c_in = [], 1
    for _ in range(4):
        w = torch.randn(args.features, c_in, 3, 3, generator=g) * (2 / (9 * c_in)) ** 0.5
        params += [w, torch.zeros(args.features), torch.ones(args.features),
                   torch.zeros(args.features)]
        c_in = args.features
    params += [torch.randn(args.n_way, args.features, generator=g) * 0.01,
               torch.zeros(args.n_way)]
    return [p.requires_grad_() for p in params]


def _torch_forward(params, x, F):
    for i in range(4):
        w, b, gamma, beta = params[4 * i:4 * i + 4]
        x = F.conv2d(x, w, b, padding=1)
        x = F.batch_norm(x, None, None, gamma, beta, training=True)
        x = F.max_pool2d(F.relu(x), 2)
    return F.linear(x.flatten(1), params[-2], params[-1])


def _torch_data(args, torch, n_tasks):
    g = torch.Generator().manual_seed(0)
    n_s, n_q = args.n_way * args.k_shot, args.n_way * args.n_query
    xs = torch.randn(n_tasks, n_s, 1, 28, 28, generator=g)
    xq = torch.randn(n_tasks, n_q, 1, 28, 28, generator=g)
    ys = torch.arange(args.n_way).repeat_interleave(args.k_shot).repeat(n_tasks, 1)
    yq = torch.arange(args.n_way).repeat_interleave(args.n_query).repeat(n_tasks, 1)
    return xs, ys, xq, yq


def run_torch(args, variant: str):
    import torch
    import torch.nn.functional as F

    share, rank = args.meta_batch, 0
    if variant == "processes":  # one single-threaded process per core, gradients all-reduced
        import torch.distributed as dist

        rank = args.process_id
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[rank % args.threads]})
        dist.init_process_group("gloo", init_method=f"tcp://localhost:{args.port}", rank=rank,
                                world_size=args.threads)
        share = args.meta_batch // args.threads
    torch.set_num_threads(1 if variant == "processes" else args.threads)
    # Denormal second-order terms otherwise slow the PyTorch peers down by up to 30x on x86;
    # XLA:CPU flushes denormals to zero by default, so this keeps the comparison fair.
    torch.set_flush_denormal(True)
    params = _torch_params(args, torch)
    opt = torch.optim.Adam(params, lr=1e-3)
    xs, ys, xq, yq = (a[rank * share:(rank + 1) * share]
                      for a in _torch_data(args, torch, args.meta_batch))
    second = args.order == "second"

    def loop_step():
        opt.zero_grad()
        for t in range(share):
            loss = F.cross_entropy(_torch_forward(params, xs[t], F), ys[t])
            grads = torch.autograd.grad(loss, params, create_graph=second)
            fast = [p - args.inner_lr * g for p, g in zip(params, grads, strict=True)]
            query_loss = F.cross_entropy(_torch_forward(fast, xq[t], F), yq[t])
            (query_loss / args.meta_batch).backward()
        if share < args.meta_batch:  # sum of the processes' shares of the mean
            for p in params:
                dist.all_reduce(p.grad)
        opt.step()

    from torch.func import grad, vmap

    def task_loss(ps, x_s, y_s, x_q, y_q):
        inner = grad(lambda p: F.cross_entropy(_torch_forward(p, x_s, F), y_s))(ps)
        if not second:
            inner = [g.detach() for g in inner]
        fast = [p - args.inner_lr * g for p, g in zip(ps, inner, strict=True)]
        return F.cross_entropy(_torch_forward(fast, x_q, F), y_q)

    meta_grad = vmap(grad(task_loss), in_dims=(None, 0, 0, 0, 0))

    def vmap_step():
        opt.zero_grad()
        grads = meta_grad([p.detach() for p in params], xs, ys, xq, yq)
        for p, g in zip(params, grads, strict=True):
            p.grad = g.mean(0)
        opt.step()

    step = vmap_step if variant == "vmap" else loop_step
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    if variant == "processes":
        dist.barrier()
    return args.meta_batch, times, 0.0, None


# ----------------------------------------------------------------------------- driver


def worker(args):
    peer = args.worker
    if peer.startswith("metajax"):
        _, model_name, *rest = peer.split()
        rest = [r for r in rest if r not in SUFFIX_ENV]
        n_tasks, times, compile_s, profile = run_metajax(args, model_name,
                                                         rest[0] if rest else "auto")
    else:
        variant = "vmap" if "vmap" in peer else "processes" if "processes" in peer else "loop"
        n_tasks, times, compile_s, profile = run_torch(args, variant)
    times.sort()
    step_s = times[len(times) // 2]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peer": peer, "order": args.order, "meta_batch": n_tasks,
                      "ms_per_step": 1e3 * step_s, "tasks_per_s": n_tasks / step_s,
                      "compile_s": max(compile_s, 0.0), "peak_rss_mib": peak_mib,
                      "profile": profile}), flush=True)
    if "processes" in peer:  # skip teardown: gloo can abort ("terminate called ...") at exit
        os._exit(0)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_peer(cmd, env, processes: int):
    """Runs a peer's worker (``processes`` of them side by side for the processes peers) and
    returns its row (the group's: slowest step, summed peak memory) or the error text."""
    if processes > 1:
        port = str(_free_port())
        cmds = [[*cmd, "--process-id", str(i), "--port", port] for i in range(processes)]
    else:
        cmds = [cmd]
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for c in cmds]
    outs = [p.communicate() for p in procs]
    if any(p.returncode for p in procs):
        return "\n".join(err[-2000:] for _, err in outs)
    rows = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    row = max(rows, key=lambda r: r["ms_per_step"])
    row["tasks_per_s"] = row["meta_batch"] * 1e3 / row["ms_per_step"]
    row["peak_rss_mib"] = sum(r["peak_rss_mib"] for r in rows)
    return row


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    if args.cpus:
        args.threads = len(args.cpus.split(","))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise SystemExit(f"--peers: unknown {unknown}; choose from {PEERS}")
    rows = []
    print(f"# Conv4 MAML meta-step, {args.n_way}-way {args.k_shot}-shot, {args.n_query} query "
          f"per class, meta-batch {args.meta_batch}, {args.features} filters, "
          f"{args.threads} threads")
    for order in args.orders.split(","):
        for peer in peers:
            cmd = [sys.executable, __file__, "--worker", peer, "--order", order,
                   "--threads", str(args.threads),
                   *[a for a in (argv if argv is not None else sys.argv[1:])]]
            if args.cpus:
                cmd = ["taskset", "-c", args.cpus, *cmd]
            peer_env = dict(env, **SUFFIX_ENV.get(peer.split()[-1], {}))
            row = _run_peer(cmd, peer_env, args.threads if "processes" in peer else 1)
            if isinstance(row, str):
                print(f"{peer} ({order} order) failed:\n{row}")
                continue
            rows.append(row)
            print(f"{order:6s} {peer:42s} {row['tasks_per_s']:7.2f} tasks/s "
                  f"{row['ms_per_step']:9.0f} ms/step  compile {row['compile_s']:5.1f} s  "
                  f"peak {row['peak_rss_mib']:6.0f} MiB", flush=True)
            if row["profile"]:
                for item in row["profile"]:
                    print(f"{'':8s}{item['ms']:8.1f} ms {100 * item['share']:5.1f}% "
                          f"{item['count']:5d}x {item['op']}")
    print("\n| order | peer | tasks/s | ms/step | compile s | peak MiB | vs torch loop |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        ref = next((r for r in rows if r["order"] == row["order"] and r["peer"] == "torch loop"),
                   None)
        ratio = f"{row['tasks_per_s'] / ref['tasks_per_s']:.2f}x" if ref else "-"
        print(f"| {row['order']} | {row['peer']} (MB {row['meta_batch']}) | "
              f"{row['tasks_per_s']:.2f} | {row['ms_per_step']:.0f} | {row['compile_s']:.1f} | "
              f"{row['peak_rss_mib']:.0f} | {ratio} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
