"""conv_bn_relu_pool equals conv -> transductive batch norm -> ReLU -> max-pool, to 2nd order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_all_close
from jax import lax

from metajax import models
from metajax._src.cpu.conv_block import conv_bn_relu_pool, same_patches


def _reference(x, kernel, bias, scale, offset, epsilon=1e-5):
    """The unfused layers, written as Flax's nn.Conv / nn.BatchNorm / nn.relu / nn.max_pool."""
    u = lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                 precision=lax.Precision.HIGHEST) + bias
    mean = u.mean((0, 1, 2))
    var = jnp.maximum(0.0, (u * u).mean((0, 1, 2)) - mean ** 2)
    z = jax.nn.relu((u - mean) * (scale * lax.rsqrt(var + epsilon)) + offset)
    return lax.reduce_window(z, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"), mean, var


def _operands(x_shape, kernel_size, features=5, dtype=jnp.float64, seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 5)
    # Integer-valued inputs: many exactly equal values in a pooling window (ties).
    x = jnp.round(jax.random.normal(k[0], x_shape, dtype))
    kernel = 0.5 * jax.random.normal(k[1], (*kernel_size, x_shape[-1], features), dtype)
    bias, scale, offset = (jax.random.normal(key, (features,), dtype) for key in k[2:])
    return x, kernel, bias, scale, offset


CASES = [  # (x shape, kernel size)
    ((6, 10, 12, 1), (3, 3)),  # Conv4 on Omniglot, smaller
    ((3, 7, 9, 3), (3, 3)),    # odd sizes: the pool drops the last row and column
    ((4, 6, 6, 2), (1, 1)),
    ((2, 8, 8, 1), (5, 5)),
    ((2, 6, 8, 1), (2, 2)),    # even kernel: "SAME" pads one more at the bottom / right
]


@pytest.fixture(autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("x_shape,kernel_size", CASES)
def test_values_and_statistics_equal_the_unfused_layers(x_shape, kernel_size):
    ops = _operands(x_shape, kernel_size)
    expected = _reference(*ops)
    assert_trees_all_close(conv_bn_relu_pool(*ops), expected, rtol=1e-10, atol=1e-10)
    assert_trees_all_close(jax.jit(conv_bn_relu_pool)(*ops), expected, rtol=1e-10, atol=1e-10)


def test_same_patches_times_the_kernel_is_the_convolution():
    x, kernel, *_ = _operands((2, 5, 6, 3), (3, 2))
    conv = lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
    got = same_patches(x, (3, 2)) @ kernel.reshape(-1, kernel.shape[-1])
    assert_trees_all_close(got, conv, rtol=1e-12, atol=1e-12)


def _loss(block, x):
    n, h, w, _ = x.shape
    g = jax.random.normal(jax.random.PRNGKey(7), (n, h // 2, w // 2, 5), x.dtype)

    def loss(kernel, bias, scale, offset, x=x):
        y, mean, var = block(x, kernel, bias, scale, offset)
        return jnp.sum(y * g) + jnp.sum(jnp.tanh(y)) + jnp.sum(mean * var)

    return loss


@pytest.mark.parametrize("x_shape", [(6, 10, 12, 1),
                                     pytest.param((3, 7, 9, 3), marks=pytest.mark.slow)])
def test_gradients_equal_the_unfused_layers_to_second_order(x_shape):
    x, *params = _operands(x_shape, (3, 3))
    fused, reference = _loss(conv_bn_relu_pool, x), _loss(_reference, x)
    argnums = (0, 1, 2, 3, 4)  # every parameter and the input
    assert_trees_all_close(jax.grad(fused, argnums)(*params, x),
                           jax.grad(reference, argnums)(*params, x), rtol=1e-9, atol=1e-9)

    def second(loss):  # a MAML-like objective: the gradient norm at moved parameters
        def outer(*p):
            grads = jax.grad(loss, argnums)(*(1.1 * q for q in p), x)
            return sum(jnp.sum(t ** 2) for t in grads)
        return outer

    got = jax.jit(jax.grad(second(fused), (0, 1, 2, 3)))(*params)
    expected = jax.grad(second(reference), (0, 1, 2, 3))(*params)
    size = max(float(jnp.max(jnp.abs(e))) for e in expected)
    # The convolution bias is cancelled by the normalisation: exactly 0 here, round-off there.
    assert_trees_all_close(got, expected, rtol=0, atol=1e-10 * size)


def test_ties_go_to_the_first_maximum():
    x = jnp.zeros((1, 2, 2, 1))  # one window, four equal values
    kernel, bias = jnp.ones((3, 3, 1, 1)), jnp.zeros(1)
    one = jnp.ones(1)
    grad = jax.grad(lambda x: conv_bn_relu_pool(x, kernel, bias, one, one)[0].sum())(x)
    expected = jax.grad(lambda x: _reference(x, kernel, bias, one, one)[0].sum())(x)
    assert_trees_all_close(grad, expected, rtol=0, atol=1e-12)
    # Batch norm of a constant map is 0 (+ offset 1): the whole cotangent reaches the first
    # position and, through the kernel, the input; an average over ties would differ.
    y, *_ = conv_bn_relu_pool(x, kernel, bias, one, one)
    assert float(y.squeeze()) == 1.0


@pytest.mark.parametrize("bad,match", [
    (dict(x=jnp.ones((4, 4, 1))), "`x` must be"),
    (dict(kernel=jnp.ones((3, 3, 2, 4))), "`kernel` must be"),
    (dict(scale=jnp.ones(3)), "`scale` must have shape"),
    (dict(x=jnp.ones((2, 1, 4, 1))), "at least 2x2"),
])
def test_bad_shapes_name_the_argument(bad, match):
    args = dict(x=jnp.ones((2, 4, 4, 1)), kernel=jnp.ones((3, 3, 1, 4)), bias=jnp.zeros(4),
                scale=jnp.ones(4), offset=jnp.zeros(4))
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        conv_bn_relu_pool(**args)


@pytest.mark.parametrize("channels", [1, pytest.param(3, marks=pytest.mark.slow)])
def test_conv4_fused_equals_unfused(channels):
    """Same variables (names, initial values), outputs, gradients and running statistics."""
    with jax.enable_x64(False):
        x = jnp.round(jax.random.normal(jax.random.PRNGKey(0), (6, 16, 16, channels)))
        fused = models.Conv4(n_way=3, features=8)
        unfused = models.Conv4(n_way=3, features=8, fuse_thin_blocks=False)
        variables = fused.init(jax.random.PRNGKey(1), x)
        assert_trees_all_close(variables, unfused.init(jax.random.PRNGKey(1), x), 0, 0)

        def run(model):
            def loss(params):
                out, state = model.apply({**variables, "params": params}, x,
                                         mutable=["batch_stats"])
                return jnp.sum(jnp.sin(out)), state
            return jax.jit(jax.grad(loss, has_aux=True))(variables["params"])

        assert_trees_all_close(run(fused), run(unfused), rtol=2e-4, atol=2e-5)
        _, stats = run(fused)
        moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                             stats["batch_stats"]["norm_0"],
                             variables["batch_stats"]["norm_0"])
        assert moved["mean"] > 0 and moved["var"] > 0  # running statistics were updated
