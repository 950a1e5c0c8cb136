"""Conv4 / ResNet12 output shapes, transductive batch norm, and a jitted MAML step on Conv4."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from metajax import losses, models


def _shapes(model, shape):
    """Parameter and output shapes via ``jax.eval_shape`` (traced, never compiled)."""
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    out = jax.eval_shape(lambda v, x: models.linen_apply(model, v)(v["params"], x), variables, x)
    return variables, out.shape


@pytest.mark.parametrize(
    "kwargs, shape, embedding",
    [
        (dict(features=8), (3, 28, 28, 1), 8),                # 28 -> 14 -> 7 -> 3 -> 1
        (dict(features=4), (3, 84, 84, 3), 4 * 5 * 5),        # 84 -> 42 -> 21 -> 10 -> 5
        (dict(features=8, strided=True), (3, 28, 28, 1), 8),  # spatial mean (MAML Omniglot)
    ],
)
def test_conv4_shapes(kwargs, shape, embedding):
    variables, logits = _shapes(models.Conv4(n_way=5, **kwargs), shape)
    assert logits == (3, 5)
    params = variables["params"]
    assert set(params) == {"conv_0", "conv_1", "conv_2", "conv_3", "norm_0", "norm_1",
                           "norm_2", "norm_3", "head"}
    assert params["conv_0"]["kernel"].shape == (3, 3, shape[-1], kwargs["features"])
    assert params["head"]["kernel"].shape == (embedding, 5)
    assert "batch_stats" in variables
    embed_vars, embed = _shapes(models.Conv4(head=False, **kwargs), shape)
    assert embed == (3, embedding) and "head" not in embed_vars["params"]


def test_resnet12_shapes():
    variables, logits = _shapes(models.ResNet12(n_way=3, widths=(4, 4, 8, 8)), (2, 16, 16, 3))
    assert logits == (2, 3)
    assert set(variables["params"]) == {"block_0", "block_1", "block_2", "block_3", "head"}
    block = variables["params"]["block_1"]
    assert {"conv_0", "conv_1", "conv_2", "shortcut_conv", "shortcut_norm"} <= set(block)
    assert block["conv_0"]["kernel"].shape == (3, 3, 4, 4)
    _, embed = _shapes(models.ResNet12(widths=(4, 4, 8, 8), head=False), (5, 16, 16, 3))
    assert embed == (5, 8)
    _, default = _shapes(models.ResNet12(head=False), (2, 84, 84, 3))
    assert default == (2, 640)


@pytest.fixture(scope="module")
def tiny_conv4():
    """A Conv4 and variables of the right shapes, filled with numpy (no init to compile)."""
    model = models.Conv4(n_way=2, features=4)
    shapes, _ = _shapes(model, (2, 28, 28, 1))
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "kernel" in name:
            fan_in = int(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(0, fan_in ** -0.5, leaf.shape), jnp.float32)
        one = "scale" in name or "var" in name
        return jnp.full(leaf.shape, 1.0 if one else 0.0, jnp.float32)

    return model, jax.tree_util.tree_map_with_path(fill, shapes)


def test_linen_apply_uses_batch_statistics_transductively(tiny_conv4):
    model, variables = tiny_conv4
    apply = jax.jit(models.linen_apply(model, variables))
    x = jax.random.uniform(jax.random.PRNGKey(2), (4, 28, 28, 1))
    alone = apply(variables["params"], x[:2])
    together = apply(variables["params"], x)
    # Same first two inputs, different batch companions: different batch-norm statistics.
    assert together.shape == (4, 2)
    assert not np.allclose(alone, together[:2])
    np.testing.assert_array_equal(apply(variables["params"], x), together)  # no leaked state


def test_maml_step_with_conv4_under_jit(tiny_conv4):
    model, variables = tiny_conv4
    loss_fn = losses.cross_entropy(models.linen_apply(model, variables))
    learner = metajax.maml(loss_fn, optax.adam(1e-3), inner_steps=1, inner_lr=0.4, has_aux=True)
    rng = np.random.default_rng(1)
    x = rng.random((2, 2, 28, 28, 1), np.float32)  # 2 tasks, 2-way 1-shot
    y = np.array([[0, 1], [1, 0]], np.int32)
    tasks = metajax.TaskBatch(support=(x, y), query=(x[:, ::-1], y[:, ::-1]))
    state = learner.init(variables["params"])
    new_state, metrics = jax.jit(learner.step)(state, tasks)
    assert sorted(metrics) == ["accuracy", "loss", "pre_accuracy", "pre_loss"]
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0
    assert int(new_state.step) == 1
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), state.params,
                         new_state.params)
    assert max(jax.tree.leaves(moved)) > 0.0
