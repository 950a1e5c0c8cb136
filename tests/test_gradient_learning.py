"""Every gradient-based method of the zoo learns sinusoid regression within a small budget.

Each method meta-trains a 40-40 MLP for a few hundred outer steps (meta-batch 10, one compiled
call via ``metajax.make_multi_step``). The test compares the held-out post-adaptation MSE of the
meta-learned parameters with that of scratch: the same network at its random initialisation,
adapted identically (same steps, same test-time step sizes from ``adaptation``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax

MODEL = metajax.models.MLP((40, 40, 1))
LOSS = metajax.losses.mse(lambda p, x: MODEL.apply({"params": p}, x))


def _learners():
    """``name -> (learner, outer steps, adaptation steps evaluated, lr if no adaptation)``."""
    adam = optax.adam(1e-2)
    return {
        "fomaml": (metajax.fomaml(LOSS, adam, inner_steps=1, inner_lr=0.01), 300, 1, 0.01),
        "anil": (metajax.anil(LOSS, adam, inner_steps=1, inner_lr=0.01, head="dense_2"),
                 300, 1, None),
        "metasgd": (metajax.metasgd(LOSS, adam, init_lr=0.01), 300, 1, None),
        "mamlpp": (metajax.maml(LOSS, adam, inner_steps=2, inner_lr=0.01, per_step_lr=True,
                                multi_step_loss=True, msl_anneal_steps=150,
                                first_order_until=150), 300, 2, None),
        "reptile": (metajax.reptile(LOSS, inner_steps=10, inner_opt=optax.sgd(0.01),
                                    outer_step_size=1.0, total_steps=600), 600, 5, 0.01),
    }


HELD_OUT = metajax.tasks.sinusoid(metajax.tasks.split_key(0, "test"), 100)


@functools.cache
def _evaluator():
    """Mean held-out query loss after 0, 1, 2 and 5 SGD steps with per-parameter rates; one
    compiled program for every method (rates are always a full per-parameter pytree)."""
    return jax.jit(lambda p, lr: metajax.make_evaluator(
        LOSS, steps=(0, 1, 2, 5), lr=lr)(p, HELD_OUT)["loss"].mean(1))


@pytest.mark.parametrize("name", ["fomaml", "anil", "metasgd", "mamlpp", "reptile"])
def test_method_learns_sinusoid(name):
    learner, num_steps, eval_steps, lr = _learners()[name]
    params = MODEL.init(jax.random.PRNGKey(0), jnp.zeros((1, 1)))["params"]

    def pre_and_post_adaptation(meta):
        start, rates, inner_opt = metajax.adaptation_of(learner, meta, lr=lr)
        if inner_opt is not None:  # Reptile: the evaluation below adapts with SGD at `lr`
            rates = lr
        if jax.tree.structure(rates) != jax.tree.structure(start):
            rates = jax.tree.map(lambda _: rates, start)
        rates = jax.tree.map(lambda p, a: jnp.broadcast_to(jnp.asarray(a, p.dtype), p.shape),
                             start, rates)
        losses = np.asarray(_evaluator()(start, rates))
        return losses[0], losses[(0, 1, 2, 5).index(eval_steps)]

    state = learner.init(params)
    scratch_pre, scratch_post = pre_and_post_adaptation(state.params)
    sample = functools.partial(metajax.tasks.sinusoid, n_tasks=10)
    run = jax.jit(metajax.make_multi_step(learner.step, sample, steps_per_call=num_steps))
    state, metrics = run(state, metajax.tasks.split_key(0, "train"))
    pre, post = pre_and_post_adaptation(state.params)

    assert int(state.step) == num_steps
    assert np.all(np.isfinite(np.asarray(metrics["loss"])))
    # Well below scratch, adapted or not (predicting 0 everywhere scores about 4.2).
    assert post < 0.7 * min(scratch_pre, scratch_post), (name, post, scratch_pre, scratch_post)
    assert post < 0.9 * pre, (name, post, pre)  # adapting the meta-learned parameters helps
