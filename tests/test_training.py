"""The meta-training driver: chunking invariance, best-parameter selection, NaN guard."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from metajax.experiment import meta_train

LOSS = metajax.losses.mse(lambda p, x: x @ p["w"] + p["b"])
SAMPLE = functools.partial(metajax.tasks.linear_regression, n_tasks=4, k_shot=3, n_query=5,
                           dim=2, x_range=(-1.0, 1.0))
INIT = {"w": jnp.zeros((2, 1)), "b": jnp.zeros((1,))}


def _learner(inner_lr=0.1, outer_lr=0.05):
    return metajax.maml(LOSS, optax.sgd(outer_lr), inner_steps=1, inner_lr=inner_lr)


def _train(learner, **kw):
    defaults = dict(key=jax.random.PRNGKey(0), num_steps=12, tasks_per_step=4, progress=False)
    return meta_train(learner.step, learner.init(INIT), SAMPLE, **{**defaults, **kw})


def test_result_does_not_depend_on_chunking():
    learner = _learner()
    a = _train(learner, steps_per_call=12, log_every=12)
    b = _train(learner, steps_per_call=5, log_every=4)
    for x, y in zip(jax.tree.leaves(a.state.params), jax.tree.leaves(b.state.params),
                    strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
    assert int(a.state.step) == int(b.state.step) == 12
    assert [r["step"] for r in b.history] == [4, 8, 12]


def test_matches_manual_steps():
    learner = _learner()
    state = learner.init(INIT)
    key = jax.random.PRNGKey(0)
    for t in range(6):
        state, _ = learner.step(state, SAMPLE(jax.random.fold_in(key, t)))
    out = _train(learner, num_steps=6, steps_per_call=4, log_every=6)
    for x, y in zip(jax.tree.leaves(state.params), jax.tree.leaves(out.state.params),
                    strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_caller_params_survive_buffer_donation():
    learner = _learner()
    init = {"w": jnp.ones((2, 1)), "b": jnp.zeros((1,))}
    meta_train(learner.step, learner.init(init), SAMPLE, key=jax.random.PRNGKey(0), num_steps=3,
               tasks_per_step=4, progress=False)
    np.testing.assert_array_equal(init["w"], np.ones((2, 1)))  # would raise if donated


def test_best_params_are_those_with_best_validation_score():
    learner = _learner()
    scores = iter([3.0, 1.0, 2.0])
    seen = []

    def validate(params):
        seen.append(jax.tree.map(np.array, params))
        return {"loss": next(scores)}

    out = _train(learner, steps_per_call=4, log_every=4, validate=validate, val_every=4)
    assert out.best_step == 8
    for x, y in zip(jax.tree.leaves(out.best_params), jax.tree.leaves(seen[1]), strict=True):
        np.testing.assert_array_equal(x, y)
    assert [r.get("val_loss") for r in out.history] == [3.0, 1.0, 2.0]


def test_non_finite_loss_stops_with_step_and_advice():
    learner = _learner(inner_lr=1e6, outer_lr=1e6)
    with pytest.raises(FloatingPointError, match=r"Non-finite meta-training loss at step \d+.*"
                                                 r"inner learning rate"):
        _train(learner, num_steps=50, steps_per_call=10, log_every=10)


def test_sample_args_and_unroll_give_the_same_run():
    """Data passed as `sample_args` (a program argument) trains exactly as data closed over."""
    learner = _learner()
    xs = jnp.linspace(-1.0, 1.0, 64)

    def sample(key, table):
        idx = jax.random.randint(key, (4, 8), 0, table.shape[0])
        x = table[idx][..., None].repeat(2, axis=-1)
        y = x @ jnp.array([[1.0], [-2.0]]) + 0.5
        return metajax.TaskBatch((x[:, :3], y[:, :3]), (x[:, 3:], y[:, 3:]))

    a = meta_train(learner.step, learner.init(INIT), functools.partial(sample, table=xs),
                   key=jax.random.PRNGKey(0), num_steps=8, tasks_per_step=4, steps_per_call=4,
                   log_every=4, progress=False)
    b = meta_train(learner.step, learner.init(INIT), sample, sample_args=(xs,),
                   key=jax.random.PRNGKey(0), num_steps=8, tasks_per_step=4, steps_per_call=4,
                   unroll=True, log_every=4, progress=False)
    for x, y in zip(jax.tree.leaves(a.state.params), jax.tree.leaves(b.state.params),
                    strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
    assert [r["loss"] for r in a.history] == pytest.approx([r["loss"] for r in b.history],
                                                           rel=1e-6)


class _Clock:
    """``time.perf_counter`` plus a settable offset (fake seconds that tests add)."""

    def __init__(self):
        self.offset = 0.0

    def perf_counter(self):
        import time

        return time.perf_counter() + self.offset


def test_train_seconds_exclude_validation_and_continue_after_resume(tmp_path, monkeypatch):
    from metajax._src.experiment import training
    from metajax.experiment import Checkpointer

    clock = _Clock()
    monkeypatch.setattr(training, "time", clock)
    learner = _learner()

    def sample(key):  # traced once per compiled chunk: a compile "costs" 50 fake seconds
        clock.offset += 50.0
        return SAMPLE(key)

    def validate(params):  # 1000 fake seconds of validation, which must not count
        clock.offset += 1000.0
        return {"loss": 0.0}

    ckpt = Checkpointer(tmp_path / "ckpt", config_fingerprint="t")
    kw = dict(key=jax.random.PRNGKey(0), tasks_per_step=4, steps_per_call=4, log_every=4,
              validate=validate, val_every=4, checkpointer=ckpt, progress=False)
    first = meta_train(learner.step, learner.init(INIT), sample, num_steps=8, **kw)
    seconds = [r["train_seconds"] for r in first.history]
    assert 50.0 <= seconds[0] < seconds[1] < 100.0  # one compile, no validation time
    resumed = meta_train(learner.step, learner.init(INIT), sample, num_steps=12, **kw)
    assert [r["step"] for r in resumed.history] == [4, 8, 12]
    assert resumed.history[:2] == first.history
    # Continued from the checkpoint: the resumed run's own compile adds 50 more.
    assert seconds[1] + 50.0 <= resumed.history[2]["train_seconds"] < seconds[1] + 100.0
