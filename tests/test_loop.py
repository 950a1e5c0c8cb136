"""Tests for metajax.make_multi_step."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_all_close

import metajax

_sample = functools.partial(metajax.tasks.sinusoid, n_tasks=2, k_shot=3, n_query=4)


def _step(state: metajax.MetaState, tasks: metajax.TaskBatch):
    """A cheap stand-in for a learner's step whose result depends on the state and the tasks."""
    (xs, ys), (xq, yq) = tasks.support, tasks.query
    signal = jnp.mean(ys * xs) + jnp.mean(yq * xq)
    params = 0.5 * state.params + signal
    new = metajax.MetaState(params, state.opt_state + 1.0, state.step + 1)
    return new, {"loss": signal, "x0": xs[0, 0, 0]}


def test_multi_step_equals_manual_steps_with_fold_in_keys():
    k = 4
    state0 = metajax.MetaState(jnp.asarray(1.0), jnp.asarray(0.0), jnp.zeros((), jnp.int32))
    key = jax.random.PRNGKey(7)
    multi = jax.jit(metajax.make_multi_step(_step, _sample, steps_per_call=k))
    state, metrics = multi(state0, key)

    sample = jax.jit(_sample)
    manual, manual_metrics = state0, []
    for i in range(k):
        manual, m = _step(manual, sample(jax.random.fold_in(key, i)))
        manual_metrics.append(m)
    assert int(state.step) == int(manual.step) == k
    assert_trees_all_close(state, manual, rtol=1e-6, atol=1e-6)
    assert set(metrics) == {"loss", "x0"}
    for name, values in metrics.items():
        assert values.shape == (k,)
        np.testing.assert_allclose(np.asarray(values), [float(m[name]) for m in manual_metrics],
                                   rtol=1e-6, atol=1e-6)
    # Every step drew fresh tasks.
    assert len(set(np.asarray(metrics["x0"]).tolist())) == k

    # A second call with another key continues from the state on a different task stream.
    state2, metrics2 = multi(state, jax.random.PRNGKey(8))
    assert int(state2.step) == 2 * k
    assert not np.allclose(np.asarray(metrics2["x0"]), np.asarray(metrics["x0"]))


@pytest.mark.parametrize("steps_per_call", [0, -1, 2.0, None])
def test_bad_steps_per_call(steps_per_call):
    with pytest.raises(ValueError, match="`steps_per_call`"):
        metajax.make_multi_step(_step, _sample, steps_per_call=steps_per_call)


def _sample_from(key, table, n_tasks=2):
    """A sampler that reads its data from an array argument (like an image dataset)."""
    idx = jax.random.randint(key, (n_tasks, 3), 0, table.shape[0])
    x = table[idx][..., None]
    return metajax.TaskBatch((x, 2.0 * x), (x, 3.0 * x))


@pytest.mark.parametrize("unroll", [1, True])
def test_sample_args_are_program_arguments_not_constants(unroll):
    table = jnp.linspace(-1.0, 1.0, 4096)
    state0 = metajax.MetaState(jnp.asarray(1.0), jnp.asarray(0.0), jnp.zeros((), jnp.int32))
    key = jax.random.PRNGKey(3)
    closed = metajax.make_multi_step(_step, functools.partial(_sample_from, table=table),
                                     steps_per_call=3)
    passed = metajax.make_multi_step(_step, _sample_from, steps_per_call=3, unroll=unroll)
    assert_trees_all_close(jax.jit(passed)(state0, key, table), jax.jit(closed)(state0, key),
                           rtol=1e-6, atol=1e-6)
    # Closed over, the 4096 floats are a constant of the program; passed, a parameter.
    closed_hlo = jax.jit(closed).lower(state0, key).as_text()
    passed_hlo = jax.jit(passed).lower(state0, key, table).as_text()
    assert any("constant" in line and "tensor<4096xf32>" in line
               for line in closed_hlo.splitlines())
    assert not any("constant" in line and "tensor<4096xf32>" in line
                   for line in passed_hlo.splitlines())


@pytest.mark.parametrize("steps_per_call", [1, 3])
def test_full_unroll_leaves_no_loop_and_matches_scan(steps_per_call):
    """unroll=True traces the steps one by one: no loop around them, even for one step.

    (``lax.scan(..., length=1, unroll=True)`` keeps a one-trip while loop, which XLA:CPU runs
    as slowly as any loop: 5x for a Conv4 Reptile step.)
    """
    state0 = metajax.MetaState(jnp.asarray(1.0), jnp.asarray(0.0), jnp.zeros((), jnp.int32))
    key = jax.random.PRNGKey(5)
    scanned = metajax.make_multi_step(_step, _sample, steps_per_call=3)
    unrolled = metajax.make_multi_step(_step, _sample, steps_per_call=steps_per_call,
                                       unroll=True)

    def top_level(f):
        return {e.primitive.name for e in jax.make_jaxpr(f)(state0, key).jaxpr.eqns}

    assert "scan" in top_level(scanned)
    assert not top_level(unrolled) & {"scan", "while"}
    out = jax.jit(unrolled)(state0, key)
    ref = jax.jit(metajax.make_multi_step(_step, _sample, steps_per_call=steps_per_call))(
        state0, key)
    assert_trees_all_close(out, ref, rtol=1e-6, atol=1e-6)
    assert out[1]["loss"].shape == (steps_per_call,)


@pytest.mark.parametrize("unroll", [0, -2, 1.5, "yes", None])
def test_bad_unroll(unroll):
    with pytest.raises(ValueError, match="`unroll`"):
        metajax.make_multi_step(_step, _sample, steps_per_call=2, unroll=unroll)
