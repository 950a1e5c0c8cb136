"""The CPU engine's task batching: every rewrite equals plain jax.vmap (values and gradients)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx
from helpers import assert_trees_all_close
from jax import lax

import metajax
import metajax.cpu
from metajax import losses, models
from metajax._src.core.outer import mean_task_gradient
from metajax._src.cpu.task_batching import lowering_counts

BATCHINGS = {"vmap": metajax.vmap_batching(), "engine": metajax.cpu.conv_batching()}


def _normal(seed, shape):
    return jax.random.normal(jax.random.PRNGKey(seed), shape)


def _both(fun, *args, in_axes=0):
    """``(jax.vmap result, task_vmap result under jit)``."""
    plain = jax.vmap(fun, in_axes=in_axes)(*args)
    fast = jax.jit(metajax.cpu.task_vmap(fun, in_axes))(*args)
    return plain, fast


NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("strides,padding,lhs_dil,rhs_dil", [
    ((1, 1), "SAME", (1, 1), (1, 1)),
    ((2, 2), "SAME", (1, 1), (1, 1)),
    ((1, 2), ((2, 0), (1, 1)), (1, 1), (2, 1)),
    ((1, 1), ((1, 1), (1, 1)), (2, 2), (1, 1)),  # transposed convolution
])
def test_per_task_convolution_equals_vmap(strides, padding, lhs_dil, rhs_dil):
    def conv(w, x):
        return lax.conv_general_dilated(x, w, strides, padding, lhs_dilation=lhs_dil,
                                        rhs_dilation=rhs_dil, dimension_numbers=NHWC)

    w, x = _normal(0, (3, 3, 3, 2, 4)), _normal(1, (3, 5, 9, 8, 2))
    assert_trees_all_close(*_both(conv, w, x), atol=1e-5)
    # and its gradient with respect to both operands (second order below)
    loss = lambda w, x: jnp.sum(jnp.sin(conv(w, x)))  # noqa: E731
    assert_trees_all_close(*_both(jax.grad(loss, argnums=(0, 1)), w, x), atol=1e-4)


@pytest.mark.parametrize("dims,lhs_shape,rhs_shape,padding", [
    # a weight gradient (batch <-> feature roles swapped) and its transpose (kernel larger
    # than the image), as they appear in the inner-loop gradient of a conv net
    (((3, 0, 1, 2), (3, 0, 1, 2), (2, 3, 0, 1)), (5, 9, 9, 3), (5, 9, 9, 4), ((1, 1), (1, 1))),
    (((2, 3, 0, 1), (0, 3, 1, 2), (3, 0, 1, 2)), (3, 3, 6, 4), (5, 9, 9, 4), ((7, 7), (6, 8))),
])
def test_non_canonical_convolutions_equal_vmap(dims, lhs_shape, rhs_shape, padding):
    dn = lax.ConvDimensionNumbers(*dims)

    def conv(a, b):
        return lax.conv_general_dilated(a, b, (1, 1), padding, dimension_numbers=dn)

    a, b = _normal(0, (2, *lhs_shape)), _normal(1, (2, *rhs_shape))
    plain, fast = _both(conv, a, b)
    assert_trees_all_close(plain, fast, atol=1e-4 * float(jnp.max(jnp.abs(plain))))


def test_shared_weights_fold_into_the_batch():
    conv = lambda w, x: lax.conv_general_dilated(x, w, (1, 1), "SAME",  # noqa: E731
                                                 dimension_numbers=NHWC)
    w, x = _normal(0, (3, 3, 2, 4)), _normal(1, (3, 5, 6, 6, 2))
    assert_trees_all_close(*_both(conv, w, x, in_axes=(None, 0)), atol=1e-5)
    assert metajax.cpu.per_task_weight_convs(conv, (None, 0), w, x) == 0
    assert metajax.cpu.per_task_weight_convs(conv, 0, jnp.stack([w] * 3), x) == 1


def test_max_pool_rules_equal_vmap_to_second_order():
    def net(w, x):
        y = nn.max_pool(lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC),
                        (2, 2), strides=(2, 2))
        return jnp.sum(y ** 2)

    def inner_then_outer(w, x):  # MAML-shaped: gradient of a function of a gradient
        return net(w - 0.1 * jax.grad(net)(w, x), x)

    w, x = _normal(0, (2, 3, 3, 2, 3)), _normal(1, (2, 4, 6, 6, 2))
    assert_trees_all_close(*_both(net, w, x), atol=1e-4)
    assert_trees_all_close(*_both(jax.grad(inner_then_outer), w, x), atol=1e-3)


def test_scan_and_remat_with_convolutions_inside():
    conv = lambda w, x: jnp.tanh(lax.conv_general_dilated(  # noqa: E731
        x, w, (1, 1), "SAME", dimension_numbers=NHWC))

    def scanned(w, x):
        def body(h, _):
            return conv(w, h), jnp.sum(h)
        return lax.scan(body, x, None, length=3)

    w, x = _normal(0, (2, 3, 3, 2, 2)), _normal(1, (2, 2, 5, 5, 2))
    assert_trees_all_close(*_both(scanned, w, x), atol=1e-5)
    rematted = lambda w, x: jax.checkpoint(conv)(w, x)  # noqa: E731
    assert_trees_all_close(*_both(jax.grad(lambda w, x: jnp.sum(rematted(w, x))), w, x),
                           atol=1e-4)


def test_pytree_in_axes_and_no_convolution():
    def fun(params, batch):
        return jnp.tanh(batch["x"] @ params["w"]) * params["s"]

    params = {"w": _normal(0, (3, 4, 2)), "s": jnp.ones(())}
    batch = {"x": _normal(1, (3, 5, 4))}
    plain = jax.vmap(fun, in_axes=({"w": 0, "s": None}, 0))(params, batch)
    fast = metajax.cpu.task_vmap(fun, ({"w": 0, "s": None}, 0))(params, batch)
    assert_trees_all_close(plain, fast, atol=1e-6)


def test_bad_task_batching_is_named():
    with pytest.raises(TypeError, match="task_batching"):
        metajax.maml(lambda p, b: 0.0, optax.sgd(0.1), inner_steps=1, inner_lr=0.1,
                     task_batching="conv_per_task")
    with pytest.raises(ValueError, match="task-axis"):
        metajax.cpu.task_vmap(jnp.add)(jnp.ones(3), jnp.ones(4))
    with pytest.raises(ValueError, match="task_group"):
        metajax.cpu.conv_batching(task_group=0)


def test_default_batching_is_the_engine_on_cpu():
    assert jax.default_backend() == "cpu"
    default = metajax.default_batching()
    assert default.mean_gradient.__module__ == "metajax._src.cpu.batching"
    assert metajax.vmap_batching().mean_gradient.__module__ == "metajax._src.core.batching"


# ------------------------------------------------------------------ meta-gradients


class UserNet(nn.Module):
    """A user's own Linen conv net (strided conv, batch norm, average pooling)."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.BatchNorm(use_running_average=False)(nn.Conv(4, (3, 3), strides=2)(x)))
        x = nn.Conv(3, (3, 3))(x)
        return nn.Dense(3)(x.mean(axis=(1, 2)))


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.norm = nnx.BatchNorm(4, use_running_average=False, rngs=rngs)
        self.head = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.max_pool(nnx.relu(self.norm(self.conv(x))), (2, 2), strides=(2, 2))
        return self.head(x.mean(axis=(1, 2)))


def _linen(model, size=8):
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((3, size, size, 1)))
    return models.linen_apply(model, variables), variables["params"]


def _nnx():
    graphdef, params, rest = nnx.split(NNXNet(nnx.Rngs(0)), nnx.Param, ...)
    return models.nnx_apply(graphdef, rest), params


MODELS = {
    "conv4": lambda: _linen(models.Conv4(n_way=3, features=4), size=16),
    # 8 filters: the 8x8 and 4x4 layers qualify for Winograd's F(2x2, 3x3)
    "conv4_winograd": lambda: _linen(models.Conv4(n_way=3, features=8), size=16),
    "user_linen": lambda: _linen(UserNet()),
    "nnx": _nnx,
}


def _tasks(n_tasks=3, size=8):
    labels = jnp.tile(jnp.arange(3), (n_tasks, 2))
    return metajax.TaskBatch((_normal(1, (n_tasks, 6, size, size, 1)), labels),
                             (_normal(2, (n_tasks, 6, size, size, 1)), labels))


@pytest.mark.parametrize("model", [pytest.param("conv4", marks=pytest.mark.slow),
                                   pytest.param("conv4_winograd", marks=pytest.mark.slow),
                                   "nnx", "user_linen"])
@pytest.mark.parametrize("first_order", [
    pytest.param(False, marks=pytest.mark.slow, id="False"), True])
def test_maml_meta_gradient_equals_vmap(model, first_order):
    apply, params = MODELS[model]()
    loss_fn = losses.cross_entropy(apply)
    tasks = _tasks(size=16 if model.startswith("conv4") else 8)
    grads = {}
    for strategy, batching in BATCHINGS.items():
        learner = metajax.maml(loss_fn, optax.sgd(1.0),
                               inner_steps=1 if model.startswith("conv4") else 2,
                               inner_lr=0.3,
                               first_order=first_order, has_aux=True, task_batching=batching)
        state = learner.init(params)
        new_state, metrics = jax.jit(learner.step)(state, tasks)
        grads[strategy] = jax.tree.map(lambda a, b: a - b, state.params, new_state.params)
    counts = lowering_counts(lambda p, s: jax.grad(lambda p: loss_fn(p, s)[0])(p), (0, 0),
                             jax.tree.map(lambda p: jnp.stack([p] * 3), params), tasks.support)
    assert counts["per_task_convs"] > 0
    assert (counts.get("winograd_convs", 0) > 0) == (model == "conv4_winograd")
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads["vmap"]))
    assert scale > 1e-3  # a real gradient, not zeros
    assert_trees_all_close(grads["vmap"], grads["engine"], rtol=1e-4, atol=1e-5 * scale)


def test_jit_and_no_jit_agree():
    apply, params = MODELS["user_linen"]()
    loss_fn = losses.cross_entropy(apply)

    def task_objective(p, s, q):  # one inner step: per-task weights in the query pass
        g = jax.grad(lambda p: loss_fn(p, s)[0])(p)
        return loss_fn(jax.tree.map(lambda a, b: a - 0.3 * b, p, g), q)

    meta_grad = mean_task_gradient(
        lambda p, s, q: (task_objective(p, s, q)[0], {}), task_batching=BATCHINGS["engine"])
    tasks = _tasks()
    assert_trees_all_close(meta_grad(params, tasks)[0], jax.jit(meta_grad)(params, tasks)[0],
                           atol=1e-6)


def test_task_groups_equal_one_group_and_vmap():
    apply, params = MODELS["user_linen"]()
    loss_fn = losses.cross_entropy(apply)

    def task_objective(p, s, q):
        g = jax.grad(lambda p: loss_fn(p, s)[0])(p)
        loss, aux = loss_fn(jax.tree.map(lambda a, b: a - 0.3 * b, p, g), q)
        return loss, aux

    tasks = _tasks(n_tasks=5)  # groups of 2: 2 + 2 + 1 tasks
    out = {group: jax.jit(metajax.cpu.conv_batching(task_group=group).mean_gradient(
        task_objective))(params, tasks) for group in (2, None)}
    reference = jax.jit(metajax.vmap_batching().mean_gradient(task_objective))(params, tasks)
    for grads, metrics in out.values():
        assert_trees_all_close(grads, reference[0], rtol=1e-4, atol=1e-6)
        assert_trees_all_close(metrics, reference[1], rtol=1e-5, atol=1e-6)


def test_evaluator_equals_vmap_in_chunks():
    apply, params = MODELS["user_linen"]()
    loss_fn = losses.cross_entropy(apply)
    tasks = _tasks(n_tasks=5)
    out = {}
    for strategy, chunk in (("vmap", None), ("engine", 2)):
        fn = metajax.make_evaluator(loss_fn, steps=(0, 2), lr=0.3, has_aux=True,
                                    chunk_size=chunk, task_batching=BATCHINGS[strategy])
        out[strategy] = jax.jit(fn)(params, tasks)
    assert out["vmap"]["accuracy"].shape == (2, 5)
    assert_trees_all_close(out["vmap"], out["engine"], atol=1e-5)


@pytest.mark.parametrize("rows,cols,k,ties_at_least", [
    (4, 6, 2, 20), (5, 7, 2, 20),  # 5x7: a remainder no window covers
    # 289 elements per window: the first-maximum index is int32, not int8
    pytest.param(17, 17, 17, 10, marks=pytest.mark.slow),
])
def test_max_pool_ties_go_to_the_first_maximum_as_in_vmap(rows, cols, k, ties_at_least):
    """With exact ties (ReLU zeros, quantized values) the pool's gradient must go to the
    element XLA picks, in the backward pass and in its transpose (second order)."""
    def pooled(y):
        return nn.max_pool(y, (k, k), strides=(k, k))

    def scatter(y, s):  # the pool's vjp: select_and_scatter_add
        return jax.vjp(pooled, y)[1](s)[0]

    def gather(y, c):  # scatter's transpose in its source: select_and_gather_add
        return jax.grad(lambda s: jnp.sum(scatter(y, s) * c))(pooled(y))

    levels = 2 if k == 2 else 0.5  # coarser values for large windows: ties at the maximum
    y = jnp.round(jax.nn.relu(_normal(0, (3, 2, rows, cols, 5))) * levels) / levels
    s, c = _normal(1, (3, 2, rows // k, cols // k, 5)), _normal(2, y.shape)
    covered = y[:, :, :rows // k * k, :cols // k * k]
    window = covered.reshape(3, 2, rows // k, k, cols // k, k, 5)  # [.., row, k, col, k, ..]
    ties = jnp.sum(window == jnp.max(window, axis=(3, 5), keepdims=True), axis=(3, 5)) > 1
    assert int(jnp.sum(ties)) >= ties_at_least  # the data really holds ties
    assert_trees_all_close(*_both(pooled, y), atol=0)
    assert_trees_all_close(*_both(scatter, y, s), atol=0)
    assert_trees_all_close(*_both(gather, y, c), atol=0)
