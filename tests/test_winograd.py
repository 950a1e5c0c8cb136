"""Winograd F(2x2, 3x3) convolutions equal direct ones, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_all_close
from jax import lax

from metajax._src.cpu.winograd import conv_winograd, winograd_applies

CASES = [  # (lhs layout, rhs layout, lhs shape, padding)
    (("NHWC", "HWIO", "NHWC"), (3, 14, 14, 16), ((1, 1), (1, 1))),  # Conv4's middle layers
    (("NHWC", "HWIO", "NHWC"), (2, 7, 9, 8), ((1, 1), (1, 1))),  # odd sizes: partial tiles
    (("NHWC", "HWIO", "NHWC"), (2, 10, 8, 8), ((0, 0), (2, 1))),  # VALID / asymmetric
    (("NHWC", "HWIO", "NHWC"), (2, 9, 9, 8), ((-1, 2), (1, 0))),  # negative padding crops
    (("NCHW", "OIHW", "NCHW"), (2, 8, 6, 7), ((1, 1), (1, 1))),
    (("CHWN", "IHWO", "NWHC"), (8, 6, 5, 3), ((1, 1), (1, 1))),  # batch/feature swapped
]


def _operands(spec, lhs_shape, features=9, seed=0):
    dn = lax.conv_dimension_numbers(lhs_shape, (1,) * 4, spec)
    channels = lhs_shape[dn.lhs_spec[1]]
    rhs_shape = [0] * 4
    for axis, size in zip(dn.rhs_spec, (features, channels, 3, 3), strict=True):
        rhs_shape[axis] = size
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    x, w = jax.random.normal(k1, lhs_shape), jax.random.normal(k2, tuple(rhs_shape))
    return x, w, lax.conv_dimension_numbers(lhs_shape, w.shape, spec)


def _direct(x, w, padding, dn):
    return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dn)


def _winograd(x, w, padding, dn):
    return conv_winograd(x, w, padding=padding, dimension_numbers=dn)


def _winograd_backward(x, w, padding, dn):
    """Differentiated by the Winograd-domain backward pass (the custom VJP)."""
    return conv_winograd(x, w, padding=padding, dimension_numbers=dn, winograd_backward=True)


@pytest.mark.parametrize("spec,lhs_shape,padding", CASES)
def test_winograd_equals_the_direct_convolution(spec, lhs_shape, padding):
    x, w, dn = _operands(spec, lhs_shape)
    expected = _direct(x, w, padding, dn)
    got = jax.jit(_winograd, static_argnums=(2, 3))(x, w, padding, dn)
    assert got.shape == expected.shape
    scale = float(jnp.max(jnp.abs(expected)))
    assert_trees_all_close(got, expected, rtol=0, atol=1e-5 * scale)
    if (spec, lhs_shape, padding) == CASES[0]:  # not jitted: the same (op by op is slow)
        assert_trees_all_close(_winograd(x, w, padding, dn), got, rtol=0, atol=1e-5 * scale)


def test_a_wrong_transform_would_be_caught():
    """The comparison above is sharp: a 3x3 convolution with one flipped tap differs."""
    x, w, dn = _operands(*CASES[0][:2])
    padding = CASES[0][2]
    flipped = w.at[0, 0].multiply(-1.0)
    error = jnp.max(jnp.abs(_winograd(x, flipped, padding, dn) - _direct(x, w, padding, dn)))
    assert error > 1e-2 * float(jnp.max(jnp.abs(_direct(x, w, padding, dn))))


def _gradients(conv, x, w, padding, dn, cotangent):
    """First-order gradients of a nonlinear loss, and the gradient of their squared norm."""
    def loss(x, w):
        return jnp.sum(jnp.tanh(conv(x, w, padding, dn)) * cotangent.astype(x.dtype))

    def grad_norm(x, w):
        return sum(jnp.sum(g ** 2) for g in jax.grad(loss, argnums=(0, 1))(x, w))

    return jax.grad(loss, argnums=(0, 1))(x, w), jax.grad(grad_norm, argnums=(0, 1))(x, w)


@pytest.mark.parametrize("winograd", [_winograd, _winograd_backward])
@pytest.mark.parametrize("spec,lhs_shape,padding",
                         CASES[1:2] + [pytest.param(*CASES[-1], marks=pytest.mark.slow)])
def test_winograd_gradients_to_second_order(spec, lhs_shape, padding, winograd):
    x, w, dn = _operands(spec, lhs_shape)
    cotangent = jax.random.normal(jax.random.PRNGKey(3), _direct(x, w, padding, dn).shape)
    # In float64 the algorithm is exact: equal to the direct convolution to 1e-12.
    gradients = jax.jit(_gradients, static_argnums=(0, 3, 4))
    with jax.enable_x64(True):
        x64, w64 = x.astype(jnp.float64), w.astype(jnp.float64)
        exact = [jax.tree.map(np.asarray, gradients(conv, x64, w64, padding, dn, cotangent))
                 for conv in (_direct, winograd)]
    scale = max(np.max(np.abs(g)) for g in jax.tree.leaves(exact[0]))
    assert_trees_all_close(exact[1], exact[0], rtol=0, atol=1e-12 * scale)
    # In float32 both are float rounding away from the float64 result (measured: about
    # 1e-6 of the largest entry for each; second order amplifies rounding on small entries).
    got = gradients(winograd, x, w, padding, dn, cotangent)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(exact[0]), strict=True):
        assert_trees_all_close(g, e.astype(np.float32), rtol=0, atol=2e-5 * np.max(np.abs(e)))


def test_which_convolutions_qualify():
    x, w, dn = _operands(*CASES[0][:2])

    def params(**kw):
        return dict(dict(dimension_numbers=dn, window_strides=(1, 1), lhs_dilation=(1, 1),
                         rhs_dilation=(1, 1), feature_group_count=1, batch_group_count=1,
                         padding=((1, 1), (1, 1)), preferred_element_type=None), **kw)

    assert winograd_applies(params(), x, w)
    assert not winograd_applies(params(window_strides=(2, 2)), x, w)
    assert not winograd_applies(params(rhs_dilation=(2, 1)), x, w)
    assert not winograd_applies(params(lhs_dilation=(2, 2)), x, w)
    assert not winograd_applies(params(feature_group_count=2), x, w[:, :, :8])
    assert not winograd_applies(params(), x[..., :4], w[:, :, :4])  # few input channels
    assert not winograd_applies(params(), x, w[..., :4])  # few output channels
    assert not winograd_applies(params(), x[:, :3, :3], w)  # output smaller than 4x4
    assert not winograd_applies(params(), x, jnp.ones((5, 5, 16, 9)))  # not 3x3
    assert not winograd_applies(params(), x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
