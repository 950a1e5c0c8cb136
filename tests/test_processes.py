"""Two single-threaded processes, each on half the tasks, give the one-process meta-step."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_all_close

import metajax

pytestmark = pytest.mark.slow  # real multi-process runs

SETUP = """
import jax, jax.numpy as jnp, optax
import metajax
from metajax import losses, models

def setup(outer_opt, axis_name=None):
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    n, way = 4, 2
    support = (jax.random.normal(k1, (n, 2, 16, 16, 1)), jnp.tile(jnp.arange(way), (n, 1)))
    query = (jax.random.normal(k2, (n, 6, 16, 16, 1)), jnp.tile(jnp.arange(way), (n, 3)))
    model = models.Conv4(n_way=way, features=4)
    variables = model.init(jax.random.PRNGKey(1), support[0][0])
    loss = losses.cross_entropy(models.linen_apply(model, variables))
    learner = metajax.maml(loss, outer_opt, inner_steps=1, inner_lr=0.4, has_aux=True,
                           track_pre_adaptation=False, axis_name=axis_name)
    return learner, learner.init(variables["params"]), metajax.TaskBatch(support, query)
"""

WORKER = SETUP + """
import json, sys
process_id, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
mesh = metajax.distributed.init_process(process_id, 2, coordinator=f"localhost:{port}")
learner, state, tasks = setup(optax.sgd(0.5), axis_name="tasks")
tasks_host = tasks
step = jax.jit(metajax.distributed.process_step(learner.step, mesh))
state = metajax.distributed.to_global(state, mesh)
tasks = metajax.distributed.to_global(tasks, mesh, share=True)
for _ in range(2):
    state, metrics = step(state, tasks)
params = metajax.distributed.local_value(state.params)
from metajax._src.core.chunking import map_task_chunks
many = metajax.TaskBatch(jnp.arange(7.0)[:, None], jnp.arange(7)[:, None])
chunks = {str(c): map_task_chunks(lambda t: {"a": t.support[None, :, 0] * 2,
                                              "b": t.query[None, :, 0] + 1},
                                  many, chunk_size=c, out_axis=1)
          for c in (None, 1, 2, 3, 4, 7, 9)}
chunks = {c: {"a": o["a"].tolist(), "b": o["b"].tolist()} for c, o in chunks.items()}
try:
    metajax.distributed.to_global(jax.tree.map(lambda x: x[:3], tasks_host), mesh, share=True)
    bad = ""
except ValueError as e:
    bad = str(e)
split = metajax.distributed.task_split(4)
try:
    metajax.distributed.task_split(3)
    split_bad = ""
except ValueError as e:
    split_bad = str(e)
json.dump({"params": jax.tree.map(lambda x: x.tolist(), params),
           "loss": float(metajax.distributed.local_value(metrics["loss"])),
           "drift": float(metajax.distributed.local_value(metrics["replica_drift"])),
           "bad": bad, "chunks": chunks, "split_bad": split_bad,
           "split": [split["shard_map"], split["mesh"].shape["tasks"]],
           "local_rows": int(tasks.query[0].addressable_data(0).shape[0]),
           "threads": len(__import__("os").sched_getaffinity(0))},
          open(out, "w"))
"""


TRAIN_SETUP = """
import functools, jax, jax.numpy as jnp, optax
import metajax
from metajax._src.experiment.training import meta_train

def own_learner(loss, outer_opt):
    # A learner of one's own: plain gradient of the mean query loss, no averaging.
    def init(p):
        return metajax.MetaState(p, outer_opt.init(p), jnp.zeros((), jnp.int32))
    def step(state, tasks):
        mean = lambda p: jnp.mean(jax.vmap(loss, (None, 0))(p, tasks.query))
        value, grads = jax.value_and_grad(mean)(state.params)
        updates, opt_state = outer_opt.update(grads, state.opt_state)
        return metajax.MetaState(optax.apply_updates(state.params, updates), opt_state,
                                 state.step + 1), {"loss": value}
    return metajax.MetaLearner(init, step)

def train(outer_opt, mesh=None, kind="maml", on_record=None):
    model = metajax.models.MLP(features=(16, 16, 1))
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1)))["params"]
    loss = lambda p, batch: jnp.mean((model.apply({"params": p}, batch[0]) - batch[1]) ** 2)
    axis = None if mesh is None else "tasks"  # the learners average over the processes
    learner = {"maml": lambda: metajax.maml(loss, outer_opt, inner_steps=1, inner_lr=0.01,
                                            axis_name=axis),
               "reptile": lambda: metajax.reptile(loss, outer_opt, inner_steps=2, inner_lr=0.01,
                                                  axis_name=axis),
               "own": lambda: own_learner(loss, outer_opt)}[kind]()
    sample = functools.partial(metajax.tasks.sinusoid, n_tasks=4)
    val = functools.partial(metajax.tasks.sinusoid, n_tasks=8)(jax.random.PRNGKey(9))
    validate = lambda p: {"loss": float(loss(p, val.query))}
    return meta_train(learner.step, learner.init(params), sample, key=jax.random.PRNGKey(3),
                      num_steps=12, tasks_per_step=4, steps_per_call=3, log_every=6,
                      validate=validate, val_every=6, progress=False, mesh=mesh,
                      shard_map=mesh is not None, on_record=on_record)
"""

TRAIN_WORKER = TRAIN_SETUP + """
import json, sys
process_id, port, out, kinds = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
mesh = metajax.distributed.init_process(process_id, 2, coordinator=f"localhost:{port}")
records = {}
def ctrl_c_on_process_1(record):  # Ctrl-C that reaches process 1 only, after step 6
    if process_id == 1 and record["step"] == 6:
        import os, signal
        os.kill(os.getpid(), signal.SIGINT)

from metajax._src.experiment.training import Interrupted

for kind in kinds:  # "maml", "reptile", "own"; "+" chains mean_across before the optimizer
    base = kind.rstrip("+")                  # "stop": maml, Ctrl-C on process 1 only
    outer = (optax.chain(metajax.distributed.mean_across(), optax.sgd(0.05))
             if kind.endswith("+") else optax.sgd(0.05))
    try:
        result = train(outer, mesh, "maml" if base == "stop" else base,
                       ctrl_c_on_process_1 if base == "stop" else None)
        records[kind] = {"params": jax.tree.map(lambda x: x.tolist(), result.state.params),
                         "history": result.history, "step": int(result.state.step)}
    except (RuntimeError, Interrupted) as err:
        records[kind] = {"error": str(err)}
json.dump(records, open(out, "w"))
"""


def _arrays(tree):
    """JSON (nested lists) back to numpy arrays."""
    return jax.tree.map(np.asarray, tree, is_leaf=lambda x: isinstance(x, list))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_two(tmp, source, *extra):
    """Runs ``source`` as two processes (ids 0 and 1); returns their JSON records."""
    script = tmp / "worker.py"
    script.write_text(source)
    port = str(_free_port())
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, str(script), str(i), port, str(tmp / f"{i}.json"),
                               *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    return [json.loads((tmp / f"{i}.json").read_text()) for i in range(2)]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    return _run_two(tmp_path_factory.mktemp("processes"), WORKER)


@pytest.fixture(scope="module")
def two_process_training(tmp_path_factory):
    return _run_two(tmp_path_factory.mktemp("training"), TRAIN_WORKER,
                    "maml", "maml+", "reptile", "own", "own+", "stop")


@pytest.mark.parametrize("kind", ["maml", "maml+", "reptile", "own+"])
def test_meta_train_over_two_processes_equals_one_process(two_process_training, kind):
    """metajax's learners average over the processes by themselves (``maml``, ``reptile``);
    chaining mean_across as well changes nothing (``maml+``); one's own learner needs it
    (``own+``)."""
    namespace = {}
    exec(textwrap.dedent(TRAIN_SETUP), namespace)
    expected = namespace["train"](optax.sgd(0.05), kind=kind.rstrip("+"))
    initial = namespace["train"](optax.sgd(0.0), kind=kind.rstrip("+")).state.params
    moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(
        jax.tree.leaves(expected.state.params), jax.tree.leaves(initial), strict=True))
    assert moved > 1e-3  # not a vacuous comparison
    for run in (r[kind] for r in two_process_training):
        assert run["step"] == 12
        assert_trees_all_close(_arrays(run["params"]),
                               jax.tree.map(np.asarray, expected.state.params),
                               rtol=1e-4, atol=1e-6)
        assert [r["step"] for r in run["history"]] == [r["step"] for r in expected.history]
        for got, want in zip(run["history"], expected.history, strict=True):
            assert abs(got["loss"] - want["loss"]) < 1e-4 * abs(want["loss"])
            assert abs(got["val_loss"] - want["val_loss"]) < 1e-4 * abs(want["val_loss"])


def test_meta_train_refuses_processes_that_do_not_average(two_process_training):
    assert all("mean_across" in run["own"].get("error", "") for run in two_process_training)


def test_ctrl_c_on_one_process_stops_all_at_the_same_step(two_process_training):
    """The processes decide together after every chunk: one stopping alone would leave the
    other waiting for it in the next chunk's collectives (the test would hang)."""
    assert [run["stop"].get("error") for run in two_process_training] == \
        ["Interrupted at step 9."] * 2


def test_chunks_are_shared_out_and_gathered_over_the_processes(two_process_run):
    from metajax._src.core.chunking import map_task_chunks

    many = metajax.TaskBatch(jnp.arange(7.0)[:, None], jnp.arange(7)[:, None])
    for chunk, got in two_process_run[0]["chunks"].items():
        want = map_task_chunks(lambda t: {"a": t.support[None, :, 0] * 2,
                                          "b": t.query[None, :, 0] + 1},
                               many, chunk_size=None if chunk == "None" else int(chunk),
                               out_axis=1)
        np.testing.assert_array_equal(got["a"], [np.arange(7.0) * 2], err_msg=chunk)
        np.testing.assert_array_equal(got["b"], [np.arange(7) + 1], err_msg=chunk)
        np.testing.assert_array_equal(want["b"], [np.arange(7) + 1], err_msg=chunk)
        assert two_process_run[1]["chunks"][chunk] == got  # every process has all outputs


def test_two_processes_equal_one_process_on_the_whole_meta_batch(two_process_run):
    namespace = {}
    exec(textwrap.dedent(SETUP), namespace)
    learner, state, tasks = namespace["setup"](optax.sgd(0.5))
    step = jax.jit(learner.step)
    for _ in range(2):
        state, metrics = step(state, tasks)
    expected = jax.tree.map(np.asarray, state.params)
    for run in two_process_run:
        assert run["local_rows"] == 2  # each process holds half of the 4 tasks
        assert run["threads"] == 1  # pinned to one core
        assert run["drift"] == 0.0
        got = _arrays(run["params"])
        assert_trees_all_close(got, expected, rtol=1e-4, atol=1e-5)
        assert abs(run["loss"] - float(metrics["loss"])) < 1e-4
    # The two processes hold bit-identical parameters.
    assert_trees_all_close(_arrays(two_process_run[0]["params"]),
                           _arrays(two_process_run[1]["params"]), 0, 0)
    # Not a vacuous comparison: two steps moved the parameters. (SGD: with Adam, the
    # pre-batch-norm conv biases, whose gradients are round-off, would move by round-off
    # amplified to the learning rate.)
    initial = namespace["setup"](optax.sgd(0.5))[1].params
    moved = max(float(np.max(np.abs(a - np.asarray(b)))) for a, b in zip(
        jax.tree.leaves(expected), jax.tree.leaves(initial), strict=True))
    assert moved > 1e-3
    assert "multiple of the number of devices" in two_process_run[0]["bad"]
    # Across CPU processes, meta_train's options split the meta-batch under shard_map.
    assert two_process_run[0]["split"] == [True, 2]
    assert "meta-batch (3 tasks) must be a multiple" in two_process_run[0]["split_bad"]


def test_mean_across_averages_over_the_axis():
    mesh = jax.make_mesh((1,), ("tasks",))
    tx = metajax.distributed.mean_across()
    updates = {"w": jnp.arange(3.0)}
    out = jax.shard_map(lambda u: tx.update(u, tx.init(u))[0], mesh=mesh,
                        in_specs=jax.sharding.PartitionSpec(),
                        out_specs=jax.sharding.PartitionSpec())(updates)
    assert_trees_all_close(out, updates)
    with pytest.raises(NameError):
        tx.update(updates, tx.init(updates))  # outside shard_map: no axis to average over


def _collectives(fun, *args):
    """The psum equations (``lax.pmean`` is a psum and a division) of ``fun``'s jaxpr with an
    axis ``"tasks"`` of 2 devices."""
    jaxpr = jax.make_jaxpr(fun, axis_env=[("tasks", 2)])(*args)
    return [e for e in jaxpr.eqns if e.primitive.name.startswith("psum")]


def test_tree_pmean_is_one_collective_per_dtype_and_equals_pmean():
    """Across CPU processes each collective costs milliseconds (a gloo all-reduce of its own),
    so a parameter tree is averaged in one per dtype, with lax.pmean's values and shapes."""
    tree = {"w": jnp.arange(24.0).reshape(2, 3, 4), "b": jnp.arange(6.0).reshape(2, 3),
            "s": jnp.arange(2.0), "n": jnp.arange(8, dtype=jnp.int32).reshape(2, 2, 2),
            "h": jnp.arange(10.0, dtype=jnp.bfloat16).reshape(2, 5)}
    got = jax.vmap(lambda t: metajax.tree_pmean(t, "tasks"), axis_name="tasks")(tree)
    want = jax.vmap(lambda t: jax.lax.pmean(t, "tasks"), axis_name="tasks")(tree)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), got) == \
        jax.tree.map(lambda x: (x.shape, x.dtype), want)
    assert_trees_all_close(jax.tree.map(lambda x: np.asarray(x, np.float32), got),
                           jax.tree.map(lambda x: np.asarray(x, np.float32), want))
    one = jax.tree.map(lambda x: x[0], tree)
    assert len(_collectives(lambda t: metajax.tree_pmean(t, "tasks"), one)) == 3
    assert len(_collectives(lambda t: jax.lax.pmean(t, "tasks"), one)) == 5  # one per leaf
    tx = metajax.distributed.mean_across()
    assert len(_collectives(lambda t: tx.update(t, tx.init(t))[0],
                            jax.tree.map(lambda x: x.astype(jnp.float32), one))) == 1


def _all_eqns(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if isinstance(inner, jax.extend.core.Jaxpr):
                    yield from _all_eqns(inner)


def test_a_maml_step_over_processes_averages_in_one_collective_each():
    """Under process_step a Conv4 MAML step averages its 18 parameter gradients in one psum,
    its metrics in another, and takes the parameter drift in one pmax."""
    from metajax._src.distributed.processes import process_step_body

    namespace = {}
    exec(textwrap.dedent(SETUP), namespace)
    learner, state, tasks = namespace["setup"](optax.sgd(0.5), axis_name="tasks")
    assert len(jax.tree.leaves(state.params)) == 18
    jaxpr = jax.make_jaxpr(process_step_body(learner.step), axis_env=[("tasks", 2)])(
        state, tasks).jaxpr
    names = [e.primitive.name for e in _all_eqns(jaxpr)]
    assert names.count("psum") + names.count("psum_invariant") == 2, names
    assert names.count("pmax") == 1


def test_init_process_checks_its_arguments_and_the_backend():
    with pytest.raises(ValueError, match="process_id"):
        metajax.distributed.init_process(2, 2)
    with pytest.raises(ValueError, match="num_processes"):
        metajax.distributed.init_process(0, 0)
    jnp.zeros(1).block_until_ready()  # the backend exists now
    with pytest.raises(RuntimeError, match="before JAX computes anything"):
        metajax.distributed.init_process(0, 2)


def test_meta_train_shard_map_needs_a_mesh():
    from metajax._src.experiment.training import meta_train

    learner = metajax.maml(lambda w, b: jnp.mean((b[0] * w - b[1]) ** 2), optax.sgd(0.1),
                           inner_steps=1, inner_lr=0.01)
    with pytest.raises(ValueError, match="needs a `mesh`"):
        meta_train(learner.step, learner.init(jnp.zeros((1, 1))), metajax.tasks.linear_regression,
                   key=jax.random.PRNGKey(0), num_steps=1, tasks_per_step=1, shard_map=True)
