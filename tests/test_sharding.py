"""The task axis sharded over 4 (simulated) devices gives the single-device result."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import functools, json
    import jax, jax.numpy as jnp, optax, metajax
    from metajax.experiment import meta_train
    from metajax._src.core.loop import make_multi_step
    assert jax.device_count() == 4, jax.devices()
    loss = metajax.losses.mse(lambda p, x: x @ p["w"] + p["b"])
    sample = functools.partial(metajax.tasks.linear_regression, n_tasks=8, k_shot=3, n_query=5,
                               dim=2, x_range=(-1.0, 1.0))
    learner = metajax.maml(loss, optax.adam(0.01), inner_steps=2, inner_lr=0.1)
    init = {"w": jnp.zeros((2, 1)), "b": jnp.zeros((1,))}
    kw = dict(key=jax.random.PRNGKey(0), num_steps=30, tasks_per_step=8, steps_per_call=10,
              log_every=10, progress=False)
    single = meta_train(learner.step, learner.init(init), sample, **kw)
    mesh = metajax.distributed.task_mesh()
    sharded = meta_train(learner.step, learner.init(init), sample, mesh=mesh, **kw)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
               zip(jax.tree.leaves(single.state.params), jax.tree.leaves(sharded.state.params)))
    tasks = jax.jit(metajax.distributed.shard_tasks(sample, mesh))(jax.random.PRNGKey(1))
    hlo = jax.jit(make_multi_step(learner.step, metajax.distributed.shard_tasks(sample, mesh),
                                  steps_per_call=1)).lower(sharded.state, kw["key"]).compile()
    try:
        sharded_sample = metajax.distributed.shard_tasks(functools.partial(sample, n_tasks=6), mesh)
        jax.jit(sharded_sample)(kw["key"])
        bad = "no error"
    except ValueError as err:
        bad = str(err)
    print(json.dumps({
        "diff": diff,
        "shards": len(tasks.support[0].addressable_shards),
        "shard_rows": tasks.support[0].addressable_shards[0].data.shape[0],
        "all_reduce": "all-reduce" in hlo.as_text(),
        "bad": bad,
        "loss_history": [r["loss"] for r in sharded.history],
        "single_history": [r["loss"] for r in single.history],
    }))
""")


def test_sharded_meta_training_equals_single_device():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    import json
    import os

    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["diff"] < 1e-5
    assert out["shards"] == 4 and out["shard_rows"] == 2  # 8 tasks split 2 per device
    assert out["all_reduce"]  # the meta-gradient mean is a cross-device collective
    assert "multiple of the number of devices" in out["bad"]
    for a, b in zip(out["loss_history"], out["single_history"], strict=True):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(b))
