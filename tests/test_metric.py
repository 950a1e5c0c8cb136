"""Metric-based and closed-form-head learners: heads against numpy, gradients, errors.

Covers ProtoNet, MatchingNet, R2-D2, MetaOptNet (SVM head), the Baseline/Baseline++ fine-tuned
head and ``evaluate_episodes``. Numerical checks run in float64 (``x64`` fixture). That each
method learns the synthetic few-shot problem is tested end to end, through its experiment, in
``test_cli_fewshot.py``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from metajax._src.metric.metaoptnet import project_dual_row

N_WAY = 3


def _episode(seed=0, n_way=N_WAY, k_shot=2, n_query=4, dim=5):
    """A small numpy episode: raw features, shuffled labels, every class present."""
    rng = np.random.default_rng(seed)
    ys = rng.permutation(np.repeat(np.arange(n_way), k_shot))
    yq = rng.permutation(np.repeat(np.arange(n_way), n_query // n_way + 1))[:n_query]
    centres = 2.0 * rng.normal(size=(n_way, dim))
    xs = centres[ys] + rng.normal(size=(len(ys), dim))
    xq = centres[yq] + rng.normal(size=(len(yq), dim))
    return xs, ys.astype(np.int32), xq, yq.astype(np.int32)


def _linear_embed(w, x):
    return x @ w


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_protonet(w, xs, ys, xq, yq, n_way=N_WAY):
    es, eq = xs @ w, xq @ w
    protos = np.stack([es[ys == c].mean(0) for c in range(n_way)])
    logits = -np.array([[np.sum((q - p) ** 2) for p in protos] for q in eq])
    return logits, -np.mean(_np_log_softmax(logits)[np.arange(len(yq)), yq])


def _np_matchingnet(w, xs, ys, xq, yq, n_way=N_WAY, scale=1.0):
    es, eq = xs @ w, xq @ w
    cos = np.array([[q @ s / (np.linalg.norm(q) * np.linalg.norm(s)) for s in es] for q in eq])
    att = np.exp(scale * cos)
    att /= att.sum(1, keepdims=True)
    probs = np.stack([att[:, ys == c].sum(1) for c in range(n_way)], axis=1)
    return probs, -np.mean(np.log(probs[np.arange(len(yq)), yq]))


def _fd_grad(f, params, eps=1e-6):
    """Central finite differences of a scalar ``f`` (jitted once) over every coordinate."""
    from jax.flatten_util import ravel_pytree

    flat, unravel = ravel_pytree(params)
    flat_f = jax.jit(lambda v: f(unravel(v)))
    grad = np.zeros(flat.size)
    for i in range(flat.size):
        e = np.zeros(flat.size)
        e[i] = eps
        grad[i] = (float(flat_f(flat + e)) - float(flat_f(flat - e))) / (2 * eps)
    return unravel(jnp.asarray(grad))


# --- ProtoNet and MatchingNet against numpy -----------------------------------------------------


def test_protonet_logits_and_loss_match_numpy(x64):
    xs, ys, xq, yq = _episode(0)
    w = np.random.default_rng(1).normal(size=(5, 4))
    logits = metajax.prototypical_logits(jnp.asarray(xs @ w), jnp.asarray(ys),
                                         jnp.asarray(xq @ w), N_WAY)
    ref_logits, ref_loss = _np_protonet(w, xs, ys, xq, yq)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-10)
    fn = metajax.protonet_loss(_linear_embed, n_way=N_WAY)
    loss, metrics = fn({"embed": jnp.asarray(w), "head": {}}, (xs, ys), (xq, yq))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-10, atol=1e-14)
    assert float(metrics["accuracy"]) == np.mean(ref_logits.argmax(1) == yq)


def test_protonet_step_loss_is_the_mean_of_per_task_numpy_losses(x64):
    episodes = [_episode(s) for s in (2, 3, 4)]
    tasks = metajax.TaskBatch(
        support=(jnp.asarray(np.stack([e[0] for e in episodes])),
                 jnp.asarray(np.stack([e[1] for e in episodes]))),
        query=(jnp.asarray(np.stack([e[2] for e in episodes])),
               jnp.asarray(np.stack([e[3] for e in episodes]))))
    w = np.random.default_rng(5).normal(size=(5, 4))
    learner = metajax.protonet(_linear_embed, optax.sgd(0.1), n_way=N_WAY)
    state = learner.init(jnp.asarray(w))
    assert set(state.params) == {"embed", "head"} and state.params["head"] == {}
    new, metrics = jax.jit(learner.step)(state, tasks)
    expected = np.mean([_np_protonet(w, *e)[1] for e in episodes])
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-10)
    assert int(new.step) == 1 and not np.allclose(new.params["embed"], w)


def test_matchingnet_probabilities_and_loss_match_numpy(x64):
    xs, ys, xq, yq = _episode(6)
    w = np.random.default_rng(7).normal(size=(5, 4))
    for scale in (1.0, 5.0):
        logp = metajax.matching_logits(jnp.asarray(xs @ w), jnp.asarray(ys), jnp.asarray(xq @ w),
                                       N_WAY, scale=scale)
        ref_probs, ref_loss = _np_matchingnet(w, xs, ys, xq, yq, scale=scale)
        np.testing.assert_allclose(np.exp(logp), ref_probs, rtol=1e-8)
        fn = metajax.matchingnet_loss(_linear_embed, n_way=N_WAY, scale=scale)
        loss, _ = fn({"embed": jnp.asarray(w), "head": {}}, (xs, ys), (xq, yq))
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-8)


# --- R2-D2 ---------------------------------------------------------------------------------------


def test_r2d2_ridge_head_matches_numpy_primal_solve(x64):
    xs, ys, xq, _ = _episode(8, k_shot=2, dim=5)  # 6 support examples
    rng = np.random.default_rng(9)
    for e_dim in (4, 9):  # fewer and more features than support examples
        w = rng.normal(size=(5, e_dim))
        x, lam = xs @ w, 0.7
        y = np.eye(N_WAY)[ys]
        ref = np.linalg.solve(x.T @ x + lam * np.eye(e_dim), x.T @ y)
        got = metajax.ridge_weights(jnp.asarray(x), jnp.asarray(ys), N_WAY, lam=lam)
        np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-10)
        logits = metajax.r2d2_logits(jnp.asarray(x), jnp.asarray(ys), jnp.asarray(xq @ w), N_WAY,
                                     lam=lam, scale=2.0, bias=0.5)
        np.testing.assert_allclose(logits, 2.0 * (xq @ w) @ ref + 0.5, rtol=1e-8)


def test_r2d2_gradient_matches_finite_differences(x64):
    xs, ys, xq, yq = _episode(10)
    fn = metajax.r2d2_loss(_linear_embed, n_way=N_WAY, learn_lam=True)
    params = {"embed": jnp.asarray(0.5 * np.random.default_rng(11).normal(size=(5, 3))),
              "head": metajax.r2d2_head_init(lam=0.5, scale=1.5)}
    loss = lambda p: fn(p, (xs, ys), (xq, yq))[0]  # noqa: E731
    grad = jax.jit(jax.grad(loss))(params)
    fd = _fd_grad(loss, params)
    for (path, g), f in zip(jax.tree_util.tree_leaves_with_path(grad), jax.tree.leaves(fd),
                            strict=True):
        np.testing.assert_allclose(g, f, rtol=1e-5, atol=1e-8, err_msg=jax.tree_util.keystr(path))
    assert abs(float(grad["head"]["log_lam"])) > 1e-6  # the ridge term is really learned
    assert abs(float(grad["head"]["bias"])) < 1e-12  # a shared offset cancels in the softmax


# --- MetaOptNet (SVM head) -------------------------------------------------------------------


def _np_project(v, upper, iters=60):
    """Reference projection onto {a <= upper, sum a = 0} by bisection on theta (rows of v)."""
    lo = (v - upper).min(-1) - 1.0
    hi = v.max(-1) + 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        s = np.minimum(v - mid[:, None], upper).sum(-1)
        lo, hi = np.where(s > 0, mid, lo), np.where(s > 0, hi, mid)
    return np.minimum(v - ((lo + hi) / 2)[:, None], upper)


def _np_svm(x, y, n_way, c, iters=1000):
    """Reference Crammer-Singer dual solver: plain projected gradient, many iterations."""
    k, onehot = x @ x.T, np.eye(n_way)[y]
    step = 1.0 / np.linalg.eigvalsh(k)[-1]
    alpha = np.zeros_like(onehot)
    for _ in range(iters):
        alpha = _np_project(alpha - step * (k @ alpha - onehot), c * onehot)
    return alpha


def test_dual_projection_matches_bisection_reference(x64):
    rng = np.random.default_rng(12)
    v = 2.0 * rng.normal(size=(20, 5))
    upper = 0.3 * np.eye(5)[rng.integers(0, 5, size=20)]
    got = np.asarray(jax.vmap(project_dual_row)(jnp.asarray(v), jnp.asarray(upper)))
    np.testing.assert_allclose(got, _np_project(v, upper), atol=1e-10)
    np.testing.assert_allclose(got.sum(-1), 0.0, atol=1e-10)
    assert np.all(got <= upper + 1e-12)


def test_svm_head_on_separable_problem_matches_reference_and_margins(x64):
    rng = np.random.default_rng(13)
    centres = np.array([[4.0, 0.0], [-2.0, 3.5], [-2.0, -3.5]])
    ys = np.repeat(np.arange(3), 3).astype(np.int32)
    xs = centres[ys] + 0.5 * rng.normal(size=(9, 2))
    xq = centres[np.arange(3).repeat(4)] + 0.5 * rng.normal(size=(12, 2))
    c = 100.0  # effectively hard margin: no slack needed on separable data
    alpha = np.asarray(jax.jit(functools.partial(metajax.svm_dual, n_way=3, C=c, iters=1000))(
        jnp.asarray(xs), jnp.asarray(ys)))
    w = xs.T @ alpha  # [2, 3]
    # Feasible dual point, zero duality gap: the primal W is the SVM optimum.
    assert np.all(alpha <= c * np.eye(3)[ys] + 1e-9)
    np.testing.assert_allclose(alpha.sum(1), 0.0, atol=1e-9)
    scores = xs @ w
    margins = scores[np.arange(9), ys][:, None] - scores
    slack = np.max(1.0 - np.eye(3)[ys] - margins, axis=1)
    primal = 0.5 * np.sum(w**2) + c * np.sum(slack)
    dual = np.sum(alpha[np.arange(9), ys]) - 0.5 * np.sum(w**2)
    assert primal - dual < 1e-6 * max(primal, 1.0)
    # Hard-margin constraints hold: every support point separated by a margin >= 1.
    other = margins + np.eye(3)[ys] * 1e9
    assert other.min() > 1.0 - 1e-6
    # Same classifier (primal W is unique) as the independent numpy reference solver.
    w_ref = xs.T @ _np_svm(xs, ys, 3, c)
    np.testing.assert_allclose(w, w_ref, atol=1e-5)
    logits = metajax.svm_logits(jnp.asarray(xs), jnp.asarray(ys), jnp.asarray(xq), 3, C=c,
                                iters=1000)
    np.testing.assert_allclose(logits, xq @ w_ref, atol=1e-4)
    assert np.all(np.argmax(logits, 1) == np.arange(3).repeat(4))


def test_svm_soft_margin_respects_box_and_gradient_matches_fd(x64):
    xs, ys, xq, yq = _episode(14, k_shot=3)  # overlapping classes: the C box is active
    fn = metajax.metaoptnet_loss(_linear_embed, n_way=N_WAY, C=0.02, dual_iters=15)
    params = {"embed": jnp.asarray(0.7 * np.random.default_rng(15).normal(size=(5, 3))),
              "head": {"scale": jnp.asarray(2.0)}}
    alpha = metajax.svm_dual(jnp.asarray(xs @ params["embed"]), jnp.asarray(ys), N_WAY, C=0.02,
                             iters=15)
    at_box = np.asarray(alpha)[np.arange(len(ys)), ys] > 0.02 - 1e-12
    assert at_box.any() and not at_box.all()  # some examples need slack, some do not
    loss = lambda p: fn(p, (xs, ys), (xq, yq))[0]  # noqa: E731
    grad = jax.jit(jax.grad(loss))(params)
    fd = _fd_grad(loss, params, eps=1e-7)
    for g, f in zip(jax.tree.leaves(grad), jax.tree.leaves(fd), strict=True):
        np.testing.assert_allclose(g, f, rtol=1e-4, atol=1e-7)
    assert np.abs(np.asarray(grad["embed"])).max() > 1e-3


# --- Baseline / Baseline++ and evaluation -----------------------------------------------------


def test_finetune_heads_fit_support_and_beat_chance():
    tasks = metajax.tasks.gaussian_classes(jax.random.PRNGKey(0), 40, n_way=5, k_shot=5,
                                           n_query=5, dim=8, n_informative=4, nuisance_std=0.5)
    identity = lambda p, x: x  # noqa: E731
    for head in ("linear", "cosine"):
        fn = metajax.finetune_head(identity, n_way=5, key=jax.random.PRNGKey(1), head=head,
                                   steps=30, lr=0.1)
        evaluate = jax.jit(metajax.make_episode_evaluator(fn))  # support, query: same shapes
        query = np.asarray(evaluate(None, tasks)["accuracy"])
        support = evaluate(None, metajax.TaskBatch(tasks.support, tasks.support))
        assert query.shape == (40,) and query.mean() > 0.5  # chance: 0.2
        assert support["accuracy"].mean() > query.mean()  # it fits the support set


def test_evaluate_episodes_equals_per_task_calls():
    tasks = metajax.tasks.gaussian_classes(jax.random.PRNGKey(2), 5, n_way=5, k_shot=1,
                                           n_query=3, dim=8, n_informative=4)
    fn = metajax.protonet_loss(_linear_embed, n_way=5)
    params = {"embed": jnp.eye(8)[:, :6], "head": {}}
    out = metajax.evaluate_episodes(fn, params, tasks)
    chunked = metajax.evaluate_episodes(fn, params, tasks, chunk_size=2)
    for t in range(5):
        one = jax.tree.map(lambda a, t=t: a[t], tasks)
        loss, metrics = jax.jit(fn)(params, one.support, one.query)
        np.testing.assert_allclose(out["loss"][t], loss, rtol=1e-5)
        np.testing.assert_allclose(chunked["accuracy"][t], metrics["accuracy"])
    assert metajax.mean_ci95(out["accuracy"]).n == 5


# --- Errors name the offending argument -------------------------------------------------------


@pytest.mark.parametrize("build, name", [
    (lambda: metajax.protonet(_linear_embed, optax.sgd(0.1), n_way=1), "n_way"),
    (lambda: metajax.protonet_loss(_linear_embed, n_way=5, distance="cosine"), "distance"),
    (lambda: metajax.matchingnet(_linear_embed, optax.sgd(0.1), n_way=3, scale=0.0), "scale"),
    (lambda: metajax.r2d2(_linear_embed, optax.sgd(0.1), n_way=3, lam=-1.0), "lam"),
    (lambda: metajax.metaoptnet(_linear_embed, optax.sgd(0.1), n_way=3, C=0.0), "C"),
    (lambda: metajax.metaoptnet(_linear_embed, optax.sgd(0.1), n_way=3, dual_iters=0),
     "dual_iters"),
    (lambda: metajax.finetune_head(_linear_embed, n_way=3, key=jax.random.PRNGKey(0),
                                   head="svm"), "head"),
])
def test_bad_options_are_named(build, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        build()


def test_bad_episodes_are_named():
    s, q = jnp.zeros((6, 4)), jnp.zeros((5, 4))
    labels = jnp.array([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="`support_labels`.*shape"):
        metajax.prototypical_logits(s, labels[:5], q, 3)
    with pytest.raises(ValueError, match=r"`support_labels` must lie in \[0, n_way\)"):
        metajax.prototypical_logits(s, labels.at[0].set(3), q, 3)
    with pytest.raises(ValueError, match=r"`support_labels` has no example of class\(es\) \[2\]"):
        metajax.matching_logits(s, labels.at[2].set(0).at[5].set(1), q, 3)
    with pytest.raises(ValueError, match="`query_emb` has embedding size 3"):
        metajax.r2d2_logits(s, labels, jnp.zeros((5, 3)), 3, lam=1.0)
    with pytest.raises(ValueError, match="`support_emb` has 6 examples, fewer than `n_way`"):
        metajax.svm_dual(s, labels, 7, C=1.0, iters=2)
    with pytest.raises(ValueError, match="integer"):
        metajax.prototypical_logits(s, labels.astype(jnp.float32), q, 3)
    # Through a learner: one label per example, checked at trace time on each task's split.
    learner = metajax.protonet(_linear_embed, optax.sgd(0.1), n_way=3)
    bad = metajax.TaskBatch((jnp.zeros((2, 6, 4)), jnp.zeros((2, 5), jnp.int32)),
                            (jnp.zeros((2, 5, 4)), jnp.zeros((2, 5), jnp.int32)))
    with pytest.raises(ValueError, match="`support` must hold x"):
        learner.step(learner.init(jnp.eye(4)), bad)
