"""MetaOptNet (Lee et al., 2019): a differentiable multi-class (Crammer-Singer) SVM head.

The SVM on the support embeddings ``x_n`` with labels ``y_n`` is

    min_W  1/2 sum_k ||w_k||^2 + C sum_n xi_n
    s.t.   w_{y_n} . x_n - w_k . x_n >= 1 - delta(y_n, k) - xi_n    for all n, k.

Its dual, over ``alpha [n, n_way]`` with ``w_k = sum_n alpha_{n,k} x_n`` and ``K = X X^T``, is

    min_alpha  f(alpha) = 1/2 sum_k alpha_{:,k}^T K alpha_{:,k} - sum_n alpha_{n, y_n}
    s.t.       alpha_n <= C e_{y_n}  (elementwise),   sum_k alpha_{n,k} = 0    for every n.

MetaOptNet differentiates through a QP solver. Here the dual is solved by a fixed number of
FISTA iterations (accelerated projected gradient, step ``1 / lambda_max(K)``) with an exact,
piecewise-linear projection onto each example's constraint set. The iterations (and the step
size) are unrolled and differentiated, so the gradient of the query loss is the exact
derivative of the computed solution with respect to the embeddings, almost everywhere (the
projection's active set is locally constant), even before the solver has converged.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax._src.core.checks import check_int
from metajax._src.core.types import MetaLearner, Params
from metajax._src.metric.learner import (
    EmbedFn,
    TaskLossFn,
    check_episode,
    check_positive,
    head_task_loss,
    metric_learner,
)


def project_dual_row(v: jax.Array, upper: jax.Array) -> jax.Array:
    """Euclidean projection of ``v [m]`` onto ``{a : a <= upper, sum(a) = 0}``.

    The projection is ``a = min(v - theta, upper)`` for the ``theta`` at which ``a`` sums to
    zero. ``g(theta) = sum_k min(v_k - theta, upper_k)`` is decreasing, so coordinate ``k`` is
    *free* (below its cap) exactly when ``g(v_k - upper_k) > 0``; given the free set, ``theta``
    has a closed form. The free set is computed without gradient (it is locally constant) and
    ``theta`` is differentiable in ``v``. Requires ``sum(upper) > 0``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> a = jax.jit(project_dual_row)(jnp.array([1.0, 1.0, -2.0]), jnp.array([0.5, 0.0, 0.0]))
        >>> [round(float(v), 4) for v in a]
        [0.5, 0.0, -0.5]
    """
    breaks = v - upper
    g_at_breaks = jnp.sum(jnp.minimum(v[None, :] - breaks[:, None], upper[None, :]), axis=1)
    free = jax.lax.stop_gradient(g_at_breaks > 0)
    n_free = jnp.maximum(jnp.sum(free), 1)
    theta = (jnp.sum(jnp.where(free, v, 0.0)) + jnp.sum(jnp.where(free, 0.0, upper))) / n_free
    return jnp.where(free, v - theta, upper)


def _check_solver(C, iters, *, name: str) -> None:
    check_positive(C, name="C")
    check_int(name, iters, 1)


def svm_dual(
    support_emb: jax.Array,
    support_labels: jax.Array,
    n_way: int,
    *,
    C: float,
    iters: int,
) -> jax.Array:
    """Solves the Crammer-Singer SVM dual on the support set by ``iters`` unrolled FISTA steps.

    Args:
        support_emb: ``[n_support, e]`` embedded support examples.
        support_labels: ``[n_support]`` integer labels in ``[0, n_way)``.
        n_way: number of classes (static).
        C: slack penalty ``> 0`` (larger: closer to the hard-margin SVM).
        iters: number of FISTA iterations (static int >= 1), all differentiated through.

    Returns:
        The dual variables ``alpha [n_support, n_way]``; the class weights are
        ``W = support_emb.T @ alpha``.

    Examples:
        >>> import jax.numpy as jnp
        >>> x = jnp.array([[1.0, 0.0], [-1.0, 0.0]])
        >>> alpha = svm_dual(x, jnp.array([0, 1]), 2, C=10.0, iters=100)
        >>> w = x.T @ alpha  # the max-margin separator: w_0 - w_1 = (1, 0)
        >>> [[round(float(v), 3) + 0.0 for v in row] for row in w]
        [[0.5, -0.5], [0.0, 0.0]]
    """
    n_way = check_episode(support_emb, support_labels, support_emb, n_way)
    _check_solver(C, iters, name="iters")
    return _svm_dual(support_emb, support_labels, C, n_way=n_way, iters=int(iters))


@functools.partial(jax.jit, static_argnames=("n_way", "iters"))
def _svm_dual(support_emb, support_labels, C, *, n_way, iters):
    x = support_emb
    onehot = jax.nn.one_hot(support_labels, n_way, dtype=x.dtype)
    upper = C * onehot
    kernel = x @ x.T
    # Step 1/L with L = lambda_max(K), the Lipschitz constant of grad f = K alpha - Y. The
    # unrolled iterates depend on the step, so it is differentiated too: L = v^T K v with v the
    # top eigenvector of K held constant has the exact value and (Hellmann-Feynman) the exact
    # derivative of lambda_max, without eigh's derivative (singular for the repeated zero
    # eigenvalues of a rank-deficient K).
    top = jnp.linalg.eigh(jax.lax.stop_gradient(kernel))[1][:, -1]
    step = 1.0 / jnp.maximum(top @ kernel @ top, 1e-6)
    project = jax.vmap(project_dual_row)
    t = [1.0]
    for _ in range(int(iters)):
        t.append((1.0 + np.sqrt(1.0 + 4.0 * t[-1] ** 2)) / 2.0)
    momentum = jnp.asarray([(t[i] - 1.0) / t[i + 1] for i in range(int(iters))], x.dtype)

    def body(carry, beta):
        alpha, z = carry
        new = project(z - step * (kernel @ z - onehot), upper)
        return (new, new + beta * (new - alpha)), None

    alpha0 = jnp.zeros_like(onehot)  # feasible
    (alpha, _), _ = jax.lax.scan(body, (alpha0, alpha0), momentum)
    return alpha


def svm_logits(
    support_emb: jax.Array,
    support_labels: jax.Array,
    query_emb: jax.Array,
    n_way: int,
    *,
    C: float = 0.1,
    iters: int = 50,
    scale: jax.Array | float = 1.0,
) -> jax.Array:
    """Query logits of the SVM head: ``scale * query_emb @ W`` with ``W = X^T alpha``.

    Args:
        support_emb: ``[n_support, e]``.
        support_labels: ``[n_support]`` integer labels in ``[0, n_way)``.
        query_emb: ``[n_query, e]``.
        n_way: number of classes (static).
        C: slack penalty of the SVM (MetaOptNet uses 0.1).
        iters: FISTA iterations on the dual (see :func:`svm_dual`).
        scale: output scale (learned in MetaOptNet).

    Returns:
        ``[n_query, n_way]`` logits.

    Examples:
        >>> import jax.numpy as jnp
        >>> x = jnp.array([[1.0, 0.0], [-1.0, 0.0]])
        >>> out = svm_logits(x, jnp.array([0, 1]), jnp.array([[3.0, 1.0]]), 2, C=10.0, iters=100)
        >>> [round(float(v), 3) for v in out[0]]
        [1.5, -1.5]
    """
    n_way = check_episode(support_emb, support_labels, query_emb, n_way)
    _check_solver(C, iters, name="iters")
    return _svm_logits(support_emb, support_labels, query_emb, C, scale, n_way=n_way,
                       iters=int(iters))


@functools.partial(jax.jit, static_argnames=("n_way", "iters"))
def _svm_logits(support_emb, support_labels, query_emb, C, scale, *, n_way, iters):
    alpha = _svm_dual(support_emb, support_labels, C, n_way=n_way, iters=iters)
    return scale * ((query_emb @ support_emb.T) @ alpha)


def metaoptnet_loss(
    embed_fn: EmbedFn,
    *,
    n_way: int,
    C: float = 0.1,
    dual_iters: int = 50,
) -> TaskLossFn:
    """Per-task MetaOptNet loss: SVM head on the support set, cross-entropy on the query set.

    Args:
        embed_fn: ``embed_fn(embed_params, x) -> [n, e]``.
        n_way: classes per task (static int >= 2).
        C: slack penalty of the SVM.
        dual_iters: FISTA iterations on the dual.

    Returns:
        ``task_loss(params, support, query) -> (loss, {"loss", "accuracy"})`` with
        ``params = {"embed": ..., "head": {"scale": ...}}``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> fn = metaoptnet_loss(lambda w, x: x @ w, n_way=2, C=1.0, dual_iters=10)
        >>> x, y = jnp.array([[1.0, 0.0], [0.0, 1.0]]), jnp.array([0, 1])
        >>> params = {"embed": jnp.eye(2), "head": {"scale": 5.0}}
        >>> loss, metrics = jax.jit(fn)(params, (x, y), (x, y))
        >>> float(metrics["accuracy"])
        1.0
    """
    _check_solver(C, dual_iters, name="dual_iters")

    def head(head_params: Params, s_emb, s_labels, q_emb):
        return svm_logits(s_emb, s_labels, q_emb, n_way, C=C, iters=dual_iters,
                          scale=head_params["scale"])

    return head_task_loss(embed_fn, head, n_way=n_way)


def metaoptnet(
    embed_fn: EmbedFn,
    outer_opt: optax.GradientTransformation,
    *,
    n_way: int,
    C: float = 0.1,
    dual_iters: int = 50,
    scale: float = 1.0,
    axis_name: str | None = None,
) -> MetaLearner:
    """MetaOptNet-SVM: meta-learns an embedding through a differentiable multi-class SVM.

    Each task solves the Crammer-Singer SVM dual on the support embeddings (:func:`svm_dual`,
    ``dual_iters`` unrolled FISTA steps) and scores the query set with the resulting linear
    classifier times a learned ``scale``; the query cross-entropy is differentiated through the
    solver into the embedding and the scale.

    Args:
        embed_fn: ``embed_fn(embed_params, x) -> [n, e]``.
        outer_opt: the Optax optimizer of the meta-parameters.
        n_way: classes per task (static).
        C: slack penalty of the SVM (0.1 in the paper).
        dual_iters: FISTA iterations; more is closer to the exact SVM, slower to compile and run.
        scale: initial output scale.

    Returns:
        ``MetaLearner(init, step)``; ``init(embed_params)`` gives ``params = {"embed":
        embed_params, "head": {"scale": scale}}``.

    Examples:
        >>> import jax.numpy as jnp, optax, metajax
        >>> learner = metajax.metaoptnet(lambda w, x: x @ w, optax.adam(1e-2), n_way=5)
        >>> state = learner.init(jnp.ones((32, 8)))  # then jax.jit(learner.step)(state, tasks)
        >>> float(state.params["head"]["scale"])
        1.0
    """
    return metric_learner(
        metaoptnet_loss(embed_fn, n_way=n_way, C=C, dual_iters=dual_iters), outer_opt,
        head_init={"scale": jnp.asarray(float(scale))}, axis_name=axis_name)
