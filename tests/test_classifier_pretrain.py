"""Global-label classifier pre-training (Chen et al.'s Baseline): learns, is keyed, checks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from metajax.experiment import classifier_learner, minibatch_sampler, pretrain_classifier

LOSS = metajax.losses.cross_entropy(lambda p, x: x @ p["w"] + p["b"])
INIT = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}


def _blobs():
    """Three well-separated Gaussian classes in 4-D (96 examples)."""
    centres = 3.0 * jnp.eye(3, 4)
    labels = jnp.repeat(jnp.arange(3, dtype=jnp.int32), 32)
    noise = 0.5 * jax.random.normal(jax.random.PRNGKey(0), (96, 4))
    return centres[labels] + noise, labels


def _train(key=1, **kw):
    x, y = _blobs()
    options = dict(key=jax.random.PRNGKey(key), num_steps=60, batch_size=16,
                   optimizer=optax.adam(0.1), has_aux=True, steps_per_call=20, log_every=20)
    return pretrain_classifier(LOSS, INIT, x, y, **{**options, **kw})


def test_loss_decreases_and_accuracy_is_high_on_separable_data():
    out = _train()
    losses = [r["loss"] for r in out.history]
    assert [r["step"] for r in out.history] == [20, 40, 60]
    assert losses[-1] < 0.5 * losses[0] and losses[0] < np.log(3.0)
    x, y = _blobs()
    _, metrics = LOSS(out.state.params, (x, y))
    assert float(metrics["accuracy"]) > 0.97
    assert all(r["train_seconds"] > 0 for r in out.history)


def test_is_a_deterministic_function_of_the_key():
    a, b, c = _train(key=1), _train(key=1), _train(key=2)
    for x, y in zip(jax.tree.leaves(a.state.params), jax.tree.leaves(b.state.params),
                    strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a.state.params["w"], c.state.params["w"])


def test_transform_is_applied_to_each_minibatch():
    sample = minibatch_sampler(5, transform=lambda key, x: -x)
    x, y = sample(jax.random.PRNGKey(0), jnp.arange(8.0)[:, None], jnp.arange(8))
    np.testing.assert_array_equal(np.asarray(x[:, 0]), -np.asarray(y, np.float32))
    state, metrics = classifier_learner(LOSS, optax.sgd(1.0), has_aux=True).step(
        metajax.MetaState(INIT, optax.sgd(1.0).init(INIT), jnp.zeros((), jnp.int32)),
        (jnp.eye(3, 4), jnp.arange(3)))
    assert int(state.step) == 1 and float(metrics["accuracy"]) == pytest.approx(1 / 3)


@pytest.mark.parametrize("kw, match", [
    ({"num_steps": 0}, "`num_steps` must be an int >= 1; got 0"),
    ({"batch_size": 2.5}, "`batch_size` must be an int >= 1; got 2.5"),
    ({"labels": jnp.zeros((96,))}, "`labels` must be a 1-D integer array"),
    ({"labels": jnp.zeros((95,), jnp.int32)}, "same number .* got 96 inputs and 95 labels"),
    ({"labels": -jnp.ones((96,), jnp.int32)}, "`labels` must be class indices >= 0"),
])
def test_bad_arguments_are_named(kw, match):
    x, y = _blobs()
    args = {"inputs": x, "labels": y, "num_steps": 5, "batch_size": 4, **kw}
    with pytest.raises(ValueError, match=match):
        pretrain_classifier(LOSS, INIT, args.pop("inputs"), args.pop("labels"),
                            key=jax.random.PRNGKey(0), **args)
