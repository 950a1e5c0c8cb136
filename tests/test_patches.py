"""conv_patches: small convolutions as one patch-matrix product, equal to the direct ones."""

import jax
import jax.numpy as jnp
import pytest
from helpers import assert_trees_all_close
from jax import lax

from metajax._src.cpu.patches import conv_patches, patches_apply
from metajax._src.cpu.winograd_rewrite import with_winograd_convs

CASES = [  # (layouts, lhs shape, kernel shape (spatial), padding)
    (("NHWC", "HWIO", "NHWC"), (4, 3, 3, 16), (3, 3), ((1, 1), (1, 1))),  # Conv4 block 4
    (("NHWC", "HWIO", "NHWC"), (2, 2, 2, 8), (3, 3), ((1, 1), (1, 1))),
    (("NHWC", "HWIO", "NHWC"), (2, 4, 3, 8), (3, 2), ((0, 0), (1, 0))),  # VALID-ish, 2x2 out
    (("NHWC", "HWIO", "NHWC"), (2, 5, 5, 8), (3, 3), ((-1, 0), (0, -1))),  # negative: crops
    (("NCHW", "OIHW", "NCHW"), (2, 8, 3, 3), (3, 3), ((1, 1), (1, 1))),
    (("CHWN", "IHWO", "NWHC"), (8, 3, 3, 2), (2, 2), ((1, 0), (0, 1))),  # as weight gradients
]


def _operands(spec, lhs_shape, kernel, features=5, dtype=jnp.float32):
    dn = lax.conv_dimension_numbers(lhs_shape, (1,) * 4, spec)
    channels = lhs_shape[dn.lhs_spec[1]]
    rhs_shape = [0] * 4
    for axis, size in zip(dn.rhs_spec, (features, channels, *kernel), strict=True):
        rhs_shape[axis] = size
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(k1, lhs_shape, dtype)
    w = jax.random.normal(k2, tuple(rhs_shape), dtype)
    return x, w, lax.conv_dimension_numbers(lhs_shape, w.shape, spec)


def _direct(x, w, padding, dn):
    return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dn,
                                    precision=lax.Precision.HIGHEST)


def _patches(x, w, padding, dn):
    return conv_patches(x, w, padding=padding, dimension_numbers=dn)


@pytest.mark.parametrize("spec,lhs_shape,kernel,padding", CASES)
def test_patches_equal_the_direct_convolution(spec, lhs_shape, kernel, padding):
    x, w, dn = _operands(spec, lhs_shape, kernel)
    expected = _direct(x, w, padding, dn)
    got = jax.jit(_patches, static_argnums=(2, 3))(x, w, padding, dn)
    assert got.shape == expected.shape
    scale = float(jnp.max(jnp.abs(expected)))
    assert_trees_all_close(got, expected, rtol=0, atol=1e-5 * scale)
    assert_trees_all_close(_patches(x, w, padding, dn), got, rtol=0, atol=1e-5 * scale)


def test_a_wrong_patch_order_would_be_caught():
    spec, lhs_shape, kernel, padding = CASES[0]
    x, w, dn = _operands(spec, lhs_shape, kernel)
    swapped = w.at[0, 1].set(w[1, 0]).at[1, 0].set(w[0, 1])  # taps (0, 1) and (1, 0)
    error = jnp.max(jnp.abs(_patches(x, swapped, padding, dn) - _direct(x, w, padding, dn)))
    assert error > 1e-2 * float(jnp.max(jnp.abs(_direct(x, w, padding, dn))))


@pytest.mark.parametrize("spec,lhs_shape,kernel,padding",
                         [CASES[0], pytest.param(*CASES[-1], marks=pytest.mark.slow)])
def test_patch_gradients_to_second_order_are_exact_in_float64(spec, lhs_shape, kernel,
                                                              padding):
    with jax.enable_x64(True):
        x, w, dn = _operands(spec, lhs_shape, kernel, dtype=jnp.float64)
        cotangent = jax.random.normal(jax.random.PRNGKey(3), _direct(x, w, padding, dn).shape,
                                      jnp.float64)

        def grads(conv):
            def loss(x, w):
                return jnp.sum(jnp.tanh(conv(x, w, padding, dn)) * cotangent)

            def grad_norm(x, w):
                return sum(jnp.sum(g ** 2) for g in jax.grad(loss, argnums=(0, 1))(x, w))

            return jax.grad(loss, argnums=(0, 1))(x, w), jax.grad(grad_norm, argnums=(0, 1))(x, w)

        assert_trees_all_close(grads(_patches), grads(_direct), rtol=1e-11, atol=1e-11)


def test_which_convolutions_qualify():
    x, w, dn = _operands(*CASES[0][:3])
    params = dict(window_strides=(1, 1), padding=((1, 1), (1, 1)), lhs_dilation=(1, 1),
                  rhs_dilation=(1, 1), dimension_numbers=dn, feature_group_count=1,
                  batch_group_count=1, precision=None, preferred_element_type=None)
    assert patches_apply(params, x, w)
    assert not patches_apply(dict(params, window_strides=(2, 2)), x, w)
    assert not patches_apply(dict(params, feature_group_count=2), x, w)
    assert not patches_apply(params, x.astype(jnp.int32), w.astype(jnp.int32))
    big = jnp.zeros((4, 5, 5, 16))  # a 5x5 output: Winograd's or XLA's
    assert not patches_apply(params, big, w)
    wide = jnp.zeros((5, 5, 16, 5))  # a 5x5 kernel
    assert not patches_apply(dict(params, padding=((2, 2), (2, 2))), x, wide)


def test_rewrite_leaves_no_convolution_in_a_small_layer_and_its_gradients():
    x, w = _operands(*CASES[0][:3])[:2]

    def loss(x, w):
        y = lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(jnp.tanh(y))

    stats: dict = {}
    rewritten = with_winograd_convs(loss, stats)
    grads = jax.jit(jax.grad(rewritten, argnums=(0, 1)))(x, w)
    assert stats["patch_convs"] == 1
    expected = jax.grad(loss, argnums=(0, 1))(x, w)
    scale = max(float(jnp.max(jnp.abs(g))) for g in expected)
    assert_trees_all_close(grads, expected, rtol=1e-4, atol=1e-5 * scale)
    jaxpr = jax.make_jaxpr(jax.grad(rewritten, argnums=(0, 1)))(x, w)
    assert "conv_general_dilated" not in str(jaxpr)
    assert_trees_all_close(rewritten(x, w), loss(x, w), rtol=1e-5, atol=1e-5)
