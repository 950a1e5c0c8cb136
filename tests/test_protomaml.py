"""ProtoMAML: the prototype head, its equivalence to ProtoNet, and the exact meta-gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax


def embed(w, x):
    return jnp.tanh(x @ w)


def episode(seed=0, n_way=3, k_shot=2, n_query=4, dim=5):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_way, dim))
    ys, yq = np.repeat(np.arange(n_way), k_shot), np.repeat(np.arange(n_way), n_query)
    xs = means[ys] + 0.5 * rng.normal(size=(ys.size, dim))
    xq = means[yq] + 0.5 * rng.normal(size=(yq.size, dim))
    return (xs, ys), (xq, yq), rng.normal(size=(dim, 4)) * 0.5


def test_prototype_head_gives_protonet_logits_up_to_a_constant_per_query():
    (xs, ys), (xq, yq), w = episode()
    s_emb, q_emb = embed(w, jnp.asarray(xs)), embed(w, jnp.asarray(xq))
    head = metajax.prototype_head(s_emb, jnp.asarray(ys), 3)
    linear = q_emb @ head["w"].T + head["b"]
    proto = metajax.prototypical_logits(s_emb, jnp.asarray(ys), q_emb, 3)
    shift = np.asarray(linear - proto)
    np.testing.assert_allclose(shift, np.broadcast_to(np.sum(np.asarray(q_emb) ** 2, -1)[:, None],
                                                      shift.shape), rtol=1e-5, atol=1e-5)
    # hence, before any step, ProtoMAML is a prototypical network: the same loss
    tiny = metajax.protomaml_loss(embed, n_way=3, inner_steps=1, inner_lr=1e-12)
    proto_loss = metajax.protonet_loss(embed, n_way=3)
    params = {"embed": jnp.asarray(w, jnp.float32), "head": {}}
    support, query = (jnp.asarray(xs), jnp.asarray(ys)), (jnp.asarray(xq), jnp.asarray(yq))
    np.testing.assert_allclose(float(tiny(params, support, query)[0]),
                               float(proto_loss(params, support, query)[0]), rtol=1e-5)


@pytest.mark.parametrize("steps", [1, 3])
def test_meta_gradient_equals_finite_differences(x64, steps):
    (xs, ys), (xq, yq), w = episode(seed=1)
    support, query = (jnp.asarray(xs), jnp.asarray(ys)), (jnp.asarray(xq), jnp.asarray(yq))
    fn = metajax.protomaml_loss(embed, n_way=3, inner_steps=steps, inner_lr=0.3)

    def f(w):
        return fn({"embed": w, "head": {}}, support, query)[0]

    w = jnp.asarray(w)
    grad = np.asarray(jax.grad(f)(w))
    eps, fd = 1e-6, np.zeros_like(grad)
    for i in np.ndindex(grad.shape):
        fd[i] = (f(w.at[i].add(eps)) - f(w.at[i].add(-eps))) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)
    # first order drops the inner loop's second derivatives, not the prototypes' path
    fo = metajax.protomaml_loss(embed, n_way=3, inner_steps=steps, inner_lr=0.3,
                                first_order=True)
    g_fo = np.asarray(jax.grad(lambda w: fo({"embed": w, "head": {}}, support, query)[0])(w))
    assert np.all(np.isfinite(g_fo)) and not np.allclose(g_fo, grad, rtol=1e-3)
    small = metajax.protomaml_loss(embed, n_way=3, inner_steps=steps, inner_lr=1e-9,
                                   first_order=True)
    g_small = jax.grad(lambda w: small({"embed": w, "head": {}}, support, query)[0])(w)
    proto = metajax.protonet_loss(embed, n_way=3)
    g_proto = jax.grad(lambda w: proto({"embed": w, "head": {}}, support, query)[0])(w)
    np.testing.assert_allclose(np.asarray(g_small), np.asarray(g_proto), rtol=1e-6, atol=1e-9)


def test_step_learns_and_jit_equals_eager():
    learner = metajax.protomaml(embed, optax.adam(1e-2), n_way=3, inner_steps=2, inner_lr=0.2)
    tasks = metajax.tasks.gaussian_classes(jax.random.PRNGKey(0), 8, n_way=3, k_shot=2,
                                           n_query=4, dim=5, n_informative=3)
    w0 = jnp.asarray(episode()[2], jnp.float32)
    eager, m_eager = learner.step(learner.init(w0), tasks)
    jitted, m_jit = jax.jit(learner.step)(learner.init(w0), tasks)
    np.testing.assert_allclose(np.asarray(eager.params["embed"]),
                               np.asarray(jitted.params["embed"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(m_eager["loss"]), float(m_jit["loss"]), rtol=1e-5)
    step, state = jax.jit(learner.step), learner.init(w0)
    first = None
    for i in range(60):
        batch = metajax.tasks.gaussian_classes(jax.random.PRNGKey(i), 8, n_way=3, k_shot=2,
                                               n_query=4, dim=5, n_informative=3)
        state, metrics = step(state, batch)
        first = metrics["loss"] if first is None else first
    assert metrics["loss"] < first


@pytest.mark.parametrize("kwargs,message", [
    ({"n_way": 1}, "`n_way` must be an int >= 2"),
    ({"inner_steps": 0}, "inner_steps"),
    ({"inner_lr": -0.1}, "`inner_lr` must be a finite scalar > 0"),
])
def test_bad_options_are_named(kwargs, message):
    options = {"n_way": 3, "inner_steps": 1, "inner_lr": 0.1, **kwargs}
    with pytest.raises(ValueError, match=message):
        metajax.protomaml(embed, optax.adam(1e-3), **options)
