"""with_winograd_convs: 3x3 convolutions (Winograd) and small-output ones (patch products)
replaced before differentiation, same values and gradients (to second order) as the direct
convolutions, backward passes without convolutions."""

import jax
import jax.numpy as jnp
import pytest
from helpers import assert_trees_all_close
from jax import lax

from metajax import losses, models
from metajax._src.cpu.winograd_rewrite import with_winograd_convs


def _conv(x, w, stride=1):
    return lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _normal(seed, shape):
    return jax.random.normal(jax.random.PRNGKey(seed), shape)


def _conv4():
    model = models.Conv4(n_way=3, features=8)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))
    return losses.cross_entropy(models.linen_apply(model, variables)), variables["params"]


def _maml_objective(loss_fn):
    """One inner SGD step on the support set, then the query loss: second order."""
    def objective(params, support, query):
        grads = jax.grad(lambda p: loss_fn(p, support)[0])(params)
        adapted = jax.tree.map(lambda p, g: p - 0.3 * g, params, grads)
        return loss_fn(adapted, query)[0]

    return objective


def _primitives(fun, *args) -> list[str]:
    names = []

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            names.append(eqn.primitive.name)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                visit(sub)

    visit(jax.make_jaxpr(fun)(*args).jaxpr)
    return names


@pytest.mark.slow
def test_conv4_maml_gradient_equals_the_direct_one():
    loss_fn, params = _conv4()
    labels = jnp.tile(jnp.arange(3), 2)
    support, query = (_normal(1, (6, 16, 16, 1)), labels), (_normal(2, (6, 16, 16, 1)), labels)
    objective = _maml_objective(loss_fn)
    stats: dict = {}
    rewritten = with_winograd_convs(objective, stats)
    direct = jax.jit(jax.grad(objective))(params, support, query)
    got = jax.jit(jax.grad(rewritten))(params, support, query)
    # Layers 2 and 3 (8x8 and 4x4, 8 channels): their forward passes on support and query,
    # and the support pass's input gradients. Layer 4 (2x2 output) is a patch product: its
    # forward passes, the support pass's input gradient and its weight gradient (a 2x2
    # window, 3x3 output). Layer 1 (one input channel) stays direct, as do the other weight
    # gradients (a window as large as the feature map). Counted once per trace.
    assert stats["winograd_convs"] == 6
    assert stats["patch_convs"] == 4
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(direct))
    assert scale > 1e-3
    assert_trees_all_close(got, direct, rtol=1e-4, atol=2e-5 * scale)
    assert_trees_all_close(jax.grad(rewritten)(params, support, query), got, rtol=1e-4,
                           atol=2e-5 * scale)  # jit and not agree (to float rounding)
    assert_trees_all_close(rewritten(params, support, query), objective(params, support, query),
                           rtol=1e-5, atol=1e-6)


def test_winograd_layers_differentiate_without_convolutions():
    x, w = _normal(0, (2, 8, 8, 8)), _normal(1, (3, 3, 8, 8))
    loss = lambda x, w: jnp.sum(jnp.tanh(_conv(x, w)))  # noqa: E731
    assert _primitives(jax.grad(loss, argnums=(0, 1)), x, w).count("conv_general_dilated") == 3
    names = _primitives(jax.grad(with_winograd_convs(loss), argnums=(0, 1)), x, w)
    assert "conv_general_dilated" not in names
    assert "dot_general" in names


def test_nested_calls_and_checkpoints_are_rewritten_others_kept():
    x, w1, w2 = _normal(0, (2, 8, 8, 8)), _normal(1, (3, 3, 8, 8)), _normal(2, (3, 3, 8, 8))

    def fun(x, w1, w2):
        y = jax.jit(_conv)(x, w1)  # a nested call: inlined and rewritten
        y = jax.checkpoint(lambda y: _conv(jnp.tanh(y), w2))(y)  # rewritten inside
        y = _conv(y, w2, stride=2)  # stride 2: not Winograd's
        return jnp.sum(y ** 2)

    stats: dict = {}
    rewritten = with_winograd_convs(fun, stats)
    grads = jax.jit(jax.grad(rewritten, argnums=(1, 2)))(x, w1, w2)
    assert stats["winograd_convs"] == 2
    direct = jax.grad(fun, argnums=(1, 2))(x, w1, w2)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(direct))
    assert_trees_all_close(grads, direct, rtol=1e-4, atol=1e-5 * scale)
    names = _primitives(rewritten, x, w1, w2)
    assert {"checkpoint", "remat2"} & set(names)  # still checkpointed


@pytest.mark.parametrize("channels", [1, 4])
def test_convolutions_with_few_channels_stay_direct(channels):
    x, w = _normal(0, (2, 8, 8, channels)), _normal(1, (3, 3, channels, 8))
    stats: dict = {}
    rewritten = with_winograd_convs(lambda x, w: _conv(x, w), stats)
    assert_trees_all_close(rewritten(x, w), _conv(x, w))
    assert stats.get("winograd_convs", 0) == 0
    assert "conv_general_dilated" in _primitives(rewritten, x, w)
