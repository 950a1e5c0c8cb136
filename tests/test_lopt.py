"""Learned optimizers: exact reductions to Optax, references by hand, and the meta-gradient
estimators against finite differences and closed-form smoothed gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from metajax import lopt


def _run(tx, params, loss, steps):
    state, out = tx.init(params), []
    for _ in range(steps):
        g = jax.grad(loss)(params)
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
        out.append(params)
    return out


def _quadratic():
    fam = lopt.quadratic_family(dim=4)
    task = fam.sample(jax.random.PRNGKey(3))
    return fam, task, fam.init(jax.random.PRNGKey(4), task), lambda p: fam.loss(p, task, None)


def test_constant_adam_schedule_is_optax_adam():
    # in float64 exactly; in float32 optax's own inject_hyperparams(adam) differs from adam by
    # rounding (about 1e-6 after 6 steps)
    with jax.enable_x64(True):
        _, task, params, _ = _quadratic()
        task = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), task)
        params = jnp.asarray(params, jnp.float64)

        def loss(p):
            return jnp.sum((task["W"] @ p - task["y"]) ** 2)

        opt = lopt.adam_schedule(num_knots=1)
        theta = {"log_lr": jnp.log(jnp.full((1,), 0.05, jnp.float64))}
        got = _run(opt.opt_fn(theta, num_steps=6), params, loss, 6)
        want = _run(optax.adam(0.05, eps_root=1e-8), params, loss, 6)
        np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-12)


def test_adam_schedule_interpolates_its_knots():
    opt = lopt.adam_schedule(num_knots=3)
    theta = {"log_lr": jnp.log(jnp.array([0.1, 0.01, 0.001]))}
    tx = opt.opt_fn(theta, num_steps=8)
    state = tx.init(jnp.zeros(1))
    rates = []
    for _ in range(10):
        _, state = tx.update(jnp.ones(1), state)
        rates.append(float(state.hyperparams["learning_rate"]))
    # steps 0, 4, 8 sit on the knots; beyond the horizon the last knot holds
    assert rates[0] == pytest.approx(0.1, rel=1e-5)
    assert rates[4] == pytest.approx(0.01, rel=1e-5)
    assert rates[8] == rates[9] == pytest.approx(0.001, rel=1e-5)
    assert rates[2] == pytest.approx(math.exp((math.log(0.1) + math.log(0.01)) / 2), rel=1e-5)


def test_mlp_optimizer_with_a_zero_output_layer_is_sgd():
    _, _, params, loss = _quadratic()
    opt = lopt.mlp_optimizer(hidden=(8,), init_lr=0.02)
    theta = opt.init(jax.random.PRNGKey(0))
    theta["layers"][-1] = jax.tree.map(jnp.zeros_like, theta["layers"][-1])
    got = _run(opt.opt_fn(theta, num_steps=5), params, loss, 5)
    want = _run(optax.sgd(0.02), params, loss, 5)
    np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-6, atol=1e-7)


def _np_mlp_update(theta, g, p, momenta, v, count, num_steps, decays=(0.5, 0.9, 0.99, 0.999)):
    momenta = [d * m + (1 - d) * g for d, m in zip(decays, momenta, strict=True)]
    v = 0.999 * v + 0.001 * g**2
    feats = np.stack([g, p, *momenta, g / np.sqrt(v + 1e-12)], -1)
    feats = feats / np.sqrt(1e-5 + np.mean(feats**2, axis=0, keepdims=True))
    time = [count / num_steps] + [np.tanh(count / s - 1) for s in (10.0, 100.0, 1000.0)]
    x = np.concatenate([feats, np.tile(time, (len(g), 1))], -1)
    layers = [{k: np.asarray(a, np.float64) for k, a in layer.items()}
              for layer in theta["layers"]]
    for i, layer in enumerate(layers):
        x = x @ layer["w"] + layer["b"]
        if i < len(layers) - 1:
            x = np.maximum(x, 0)
    step = 1e-3 * x[:, 0] * np.exp(1e-3 * x[:, 1])
    return -(np.exp(float(theta["log_lr"])) * g + step), momenta, v


def test_mlp_optimizer_equals_a_numpy_reference():
    _, _, params, loss = _quadratic()
    opt = lopt.mlp_optimizer(hidden=(8, 8))
    theta = opt.init(jax.random.PRNGKey(7))
    theta["layers"][-1]["w"] = theta["layers"][-1]["w"] * 300.0  # a visible learned term
    tx = opt.opt_fn(theta, num_steps=20)
    state, p = tx.init(params), params
    p_np = np.asarray(params, np.float64)
    m_np, v_np = [np.zeros(4)] * 4, np.zeros(4)
    for t in range(3):
        g = jax.grad(loss)(p)
        u, state = tx.update(g, state, p)
        u_np, m_np, v_np = _np_mlp_update(theta, np.asarray(g, np.float64), p_np, m_np, v_np,
                                          t, 20)
        np.testing.assert_allclose(u, u_np, rtol=2e-4, atol=1e-6)
        p, p_np = optax.apply_updates(p, u), np.asarray(optax.apply_updates(p, u), np.float64)
    assert float(jnp.max(jnp.abs(u + jnp.exp(theta["log_lr"]) * g))) > 1e-4  # not plain SGD


def _np_lstm(theta, g, hidden):
    def sig(z):
        return 1 / (1 + np.exp(-z))

    big = np.abs(g) >= np.exp(-10.0)
    x = np.stack([np.where(big, np.log(np.abs(g) + 1e-38) / 10, -1.0),
                  np.where(big, np.sign(g), np.exp(10.0) * g)], -1)
    new = []
    for cell, (h, c) in zip(theta["cells"], hidden, strict=True):
        z = x @ np.asarray(cell["wx"]) + h @ np.asarray(cell["wh"]) + np.asarray(cell["b"])
        i, f, gg, o = np.split(z, 4, axis=-1)
        c = sig(f) * c + sig(i) * np.tanh(gg)
        x = sig(o) * np.tanh(c)
        new.append((x, c))
    out = x @ np.asarray(theta["out"]["w"]) + np.asarray(theta["out"]["b"])
    return 0.1 * out[:, 0], new


def test_lstm_optimizer_equals_a_numpy_reference_and_is_coordinatewise():
    opt = lopt.lstm_optimizer()
    theta = opt.init(jax.random.PRNGKey(2))
    tx = opt.opt_fn(theta, num_steps=10)
    grads = [jnp.array([0.3, -2.0, 1e-6, 0.0, -1e-3]), jnp.array([1.0, 0.5, -0.2, 3.0, 1e-5])]
    state = tx.init(jnp.zeros(5))
    hidden = [(np.zeros((5, 20)), np.zeros((5, 20)))] * 2
    for g in grads:
        u, state = tx.update(g, state)
        u_np, hidden = _np_lstm(theta, np.asarray(g, np.float64), hidden)
        np.testing.assert_allclose(u, u_np, rtol=1e-4, atol=1e-6)
    perm = jnp.array([3, 0, 4, 1, 2])
    state_p = tx.init(jnp.zeros(5))
    for g in grads:
        u_p, state_p = tx.update(g[perm], state_p)
    np.testing.assert_allclose(u_p, u[perm], rtol=1e-6)


def test_a_learned_optimizer_is_the_inner_optimizer_of_adapt():
    opt = lopt.mlp_optimizer(hidden=(8,))
    tx = opt.opt_fn(opt.init(jax.random.PRNGKey(0)), num_steps=3)
    fam, task, params, loss = _quadratic()
    adapted = metajax.adapt(lambda p, b: fam.loss(p, b, None), params, task, steps=3,
                            inner_opt=tx)
    np.testing.assert_allclose(adapted, _run(tx, params, loss, 3)[-1], rtol=1e-6)


def test_training_curves_equal_a_python_loop():
    fam = lopt.linear_regression_family(dim=3, n_points=6)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    curves = lopt.training_curves(optax.sgd(0.05), fam, keys, num_steps=4)
    for i in range(3):
        start = lopt.start_episode(fam, optax.sgd(0.05), keys[i])
        losses = [fam.loss(p, start.task, None) for p in
                  [start.params, *_run(optax.sgd(0.05), start.params,
                                       lambda p, t=start.task: fam.loss(p, t, None), 4)]]
        np.testing.assert_allclose(curves["train"][i], losses, rtol=1e-5)
        assert float(curves["optimum"][i]) <= float(curves["train"][i, -1])


# --- the estimators -------------------------------------------------------------------------

def _fd_check(estimator, theta, *, eps=1e-4, rtol=2e-3):
    with jax.enable_x64(True):
        theta = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), theta)
        state = estimator.init(theta, jax.random.PRNGKey(5))
        key = jax.random.PRNGKey(6)
        estimate = jax.jit(estimator.estimate)
        _, grad, _ = estimate(theta, state, key)
        leaves, treedef = jax.tree.flatten(theta)
        flat_grad = jax.tree.leaves(grad)
        for li in range(len(leaves)):
            for j in range(min(3, leaves[li].size)):
                def shifted(h, li=li, j=j):
                    new = [a.ravel().at[j].add(h).reshape(a.shape) if i == li else a
                           for i, a in enumerate(leaves)]
                    return float(estimate(treedef.unflatten(new), state, key)[2]["loss"])
                fd = (shifted(eps) - shifted(-eps)) / (2 * eps)
                got = float(flat_grad[li].ravel()[j])
                assert got == pytest.approx(fd, rel=rtol, abs=1e-7), (li, j)


@pytest.mark.parametrize("name", ["mlp", "lstm", "adam_schedule"])
def test_truncated_backprop_equals_finite_differences(name):
    opt = {"mlp": lambda: lopt.mlp_optimizer(hidden=(4,), init_lr=0.02),
           "lstm": lambda: lopt.lstm_optimizer(units=3),
           "adam_schedule": lambda: lopt.adam_schedule(num_knots=3, init_lr=0.05)}[name]()
    fam = lopt.quadratic_family(dim=3)
    est = lopt.truncated_backprop(opt, fam, num_steps=6, truncation=3, n_tasks=2)
    theta = opt.init(jax.random.PRNGKey(1))
    if name == "mlp":
        theta["layers"][-1]["w"] = theta["layers"][-1]["w"] * 50.0
    _fd_check(est, theta)


@pytest.mark.parametrize("name", ["mlp", "lstm", "adam_schedule"])
def test_maml_through_a_learned_optimizer_where_a_gradient_is_zero(name):
    # MAML's meta-gradient with respect to the initialisation, through the learned optimizer,
    # on a problem where one coordinate's gradient is exactly zero (a feature that is always 0):
    # finite (no 0 * inf from log|g| or sqrt(v) at 0) and equal to finite differences
    opt = {"mlp": lambda: lopt.mlp_optimizer(hidden=(4,), init_lr=0.05),
           "lstm": lambda: lopt.lstm_optimizer(units=3),
           "adam_schedule": lambda: lopt.adam_schedule(num_knots=2, init_lr=0.05)}[name]()
    rng = np.random.default_rng(0)
    x, y, w0 = rng.normal(size=(6, 3)), rng.normal(size=6), rng.normal(size=3)
    x[:, 1] = 0.0

    def meta_objective(dtype):
        theta = jax.tree.map(lambda a: jnp.asarray(a, dtype), opt.init(jax.random.PRNGKey(1)))
        tx = opt.opt_fn(theta, num_steps=3)
        xs, ys = jnp.asarray(x, dtype), jnp.asarray(y, dtype)

        def loss(w, batch):
            return jnp.mean((batch[0] @ w - batch[1]) ** 2)

        return lambda w: loss(metajax.adapt(loss, w, (xs[:4], ys[:4]), steps=3, inner_opt=tx),
                              (xs[4:], ys[4:]))

    # float32 (where float64 would hide a subnormal guard flushed to zero)
    assert np.all(np.isfinite(np.asarray(jax.grad(meta_objective(jnp.float32))(
        jnp.asarray(w0, jnp.float32)))))
    with jax.enable_x64(True):
        meta, w = meta_objective(jnp.float64), jnp.asarray(w0)
        grad = np.asarray(jax.grad(meta)(w))
        eps = 1e-6
        fd = [(meta(w.at[i].add(eps)) - meta(w.at[i].add(-eps))) / (2 * eps) for i in range(3)]
        np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-8)


# A one-dimensional problem with a closed form: SGD at the learned rate theta on
# f(x) = a x^2 / 2 from x = 1, so x_t = prod_s (1 - theta_s a) and every moment of the loss under
# Gaussian perturbations of theta is a polynomial in Gaussian moments.
A, STD = 1.0, 0.1
SGD_RATE = lopt.LearnedOptimizer(init=lambda key: jnp.array(0.3),
                                 opt_fn=lambda theta, *, num_steps: optax.sgd(theta))
ONE_D = lopt.TaskFamily(sample=lambda key: jnp.zeros(()), init=lambda key, task: jnp.array(1.0),
                        loss=lambda p, task, key: 0.5 * A * p**2)


def _moment(theta, n):
    """E[(1 - (theta + e) a)^n], e ~ N(0, STD^2)."""
    c = 1 - theta * A
    return sum(math.comb(n, j) * c ** (n - j) * (A * STD) ** j * _double_factorial(j - 1)
               for j in range(0, n + 1, 2))


def _double_factorial(k):
    return 1 if k <= 0 else k * _double_factorial(k - 2)


def _smoothed_truncation_loss(theta, k, trunc):
    """E[mean loss of truncation k] when each truncation has its own perturbation (PES)."""
    return 0.5 * A * _moment(theta, 2 * trunc) ** k * sum(
        _moment(theta, 2 * r) for r in range(trunc)) / trunc


def _smoothed_episode_loss(theta, steps):
    """E[mean loss of the episode] with one perturbation for the whole episode (full ES)."""
    return 0.5 * A * sum(_moment(theta, 2 * s) for s in range(steps)) / steps


def _estimates(estimator, n_rounds, batches=8):
    """Per-round gradient estimates of ``batches`` independent batches: [batches, n_rounds]."""
    theta = SGD_RATE.init(None)
    step = jax.jit(estimator.estimate)
    out = []
    for b in range(batches):
        state = estimator.init(theta, jax.random.PRNGKey(100 + b))
        row = []
        for t in range(n_rounds):
            state, grad, _ = step(theta, state, jax.random.PRNGKey(1000 * b + t))
            row.append(float(grad))
        out.append(row)
    return np.array(out)


def test_pes_is_unbiased_for_every_truncation_and_truncated_es_is_not():
    trunc, n_trunc = 3, 3
    kw = dict(num_steps=trunc * n_trunc, truncation=trunc, n_tasks=4000, std=STD, stagger=False)
    pes = _estimates(lopt.pes(SGD_RATE, ONE_D, **kw), n_trunc + 1)
    tes = _estimates(lopt.evolution_strategies(SGD_RATE, ONE_D, **kw), n_trunc + 1)
    exact = [float(jax.grad(_smoothed_truncation_loss)(0.3, k, trunc)) for k in range(n_trunc)]
    exact.append(exact[0])  # the fourth truncation begins a new episode
    for k in range(n_trunc + 1):
        mean, se = pes[:, k].mean(), pes[:, k].std(ddof=1) / np.sqrt(len(pes))
        assert abs(mean - exact[k]) < 4 * se + 1e-3 * abs(exact[k]), (k, mean, exact[k], se)
    # truncated ES sees only the last truncation's perturbation: biased from the second on
    mean, se = tes[:, 2].mean(), tes[:, 2].std(ddof=1) / np.sqrt(len(tes))
    assert abs(mean - exact[2]) > 8 * se


def test_full_es_is_unbiased_for_the_episode():
    steps = 6
    est = lopt.evolution_strategies(SGD_RATE, ONE_D, num_steps=steps, n_tasks=4000, std=STD)
    es = _estimates(est, 2)
    exact = float(jax.grad(_smoothed_episode_loss)(0.3, steps))
    mean, se = es.mean(), es.std(ddof=1) / np.sqrt(es.size)
    assert abs(mean - exact) < 4 * se, (mean, exact, se)


def test_jit_and_no_jit_estimates_agree():
    opt = lopt.mlp_optimizer(hidden=(4,))
    fam = lopt.linear_regression_family(dim=2, n_points=5)
    for est in (lopt.truncated_backprop(opt, fam, num_steps=2, truncation=1, n_tasks=2),
                lopt.pes(opt, fam, num_steps=2, truncation=1, n_tasks=2)):
        theta = opt.init(jax.random.PRNGKey(0))
        state = est.init(theta, jax.random.PRNGKey(1))
        a = est.estimate(theta, state, jax.random.PRNGKey(2))
        b = jax.jit(est.estimate)(theta, state, jax.random.PRNGKey(2))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-7)


def test_meta_training_lowers_the_held_out_loss():
    fam = lopt.quadratic_family(dim=5)
    opt = lopt.adam_schedule(num_knots=4, init_lr=1e-3)
    est = lopt.truncated_backprop(opt, fam, num_steps=20, truncation=10, n_tasks=8)
    trainer = lopt.meta_trainer(est, optax.adam(0.1), key=jax.random.PRNGKey(0))
    run = jax.jit(metajax.make_multi_step(trainer.step, lambda k: k, steps_per_call=60))
    state = trainer.init(opt.init(None))
    before = state.params
    state, metrics = run(state, jax.random.PRNGKey(1))
    keys = jax.random.split(jax.random.PRNGKey(99), 64)

    def held_out(theta):
        curves = lopt.training_curves(opt.opt_fn(theta, num_steps=20), fam, keys, num_steps=20)
        return float(curves["train"].mean())

    assert held_out(state.params) < 0.7 * held_out(before)
    assert float(metrics["nonfinite_tasks"].sum()) == 0


def test_bad_input_is_named():
    opt = lopt.mlp_optimizer(hidden=(4,))
    fam = lopt.quadratic_family(dim=3)
    with pytest.raises(ValueError, match="longer than the unroll"):
        lopt.truncated_backprop(opt, fam, num_steps=5, truncation=10, n_tasks=2)
    with pytest.raises(ValueError, match="must divide"):
        lopt.pes(opt, fam, num_steps=10, truncation=3, n_tasks=2)
    with pytest.raises(ValueError, match="`std` must be > 0"):
        lopt.pes(opt, fam, num_steps=10, truncation=5, n_tasks=2, std=0.0)
    with pytest.raises(ValueError, match="structure"):
        opt.opt_fn({"log_lr": jnp.zeros(())}, num_steps=10)
    theta = opt.init(jax.random.PRNGKey(0))
    theta["layers"][0]["w"] = jnp.zeros((3, 3))
    with pytest.raises(ValueError, match=r"has shape \(3, 3\)"):
        opt.opt_fn(theta, num_steps=10)
    with pytest.raises(ValueError, match="`num_steps`"):
        opt.opt_fn(opt.init(jax.random.PRNGKey(0)), num_steps=0)
    with pytest.raises(TypeError, match="`family`"):
        lopt.truncated_backprop(opt, "quadratics", num_steps=4, truncation=2, n_tasks=2)


def test_non_finite_inner_losses_are_left_out_counted_and_restarted():
    # SGD at rate 3 on a x^2 / 2 with a = 1 diverges geometrically; rate 0.1 converges
    fam = ONE_D._replace(init=lambda key, task: jnp.where(jax.random.uniform(key) < 0.5,
                                                         1.0, 1e30))
    est = lopt.truncated_backprop(SGD_RATE, fam, num_steps=8, truncation=4, n_tasks=16,
                                  stagger=False)
    theta = jnp.array(3.0)
    state = est.init(theta, jax.random.PRNGKey(0))
    state, grad, metrics = jax.jit(est.estimate)(theta, state, jax.random.PRNGKey(1))
    bad = int(metrics["nonfinite_tasks"])
    assert 0 < bad < 16 and bool(jnp.isfinite(grad)) and bool(jnp.isfinite(metrics["loss"]))
    # the diverged runs start new episodes at the next estimate
    _, _, metrics = jax.jit(est.estimate)(theta, state, jax.random.PRNGKey(2))
    assert int(metrics["episodes_started"]) >= bad
