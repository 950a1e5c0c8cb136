"""R2-D2 (Bertinetto et al., 2019): a differentiable closed-form ridge-regression head."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import optax

from metajax._src.core.types import MetaLearner, Params
from metajax._src.metric.learner import (
    EmbedFn,
    TaskLossFn,
    check_episode,
    check_positive,
    head_task_loss,
    metric_learner,
)


def ridge_weights(
    support_emb: jax.Array,
    support_labels: jax.Array,
    n_way: int,
    *,
    lam: jax.Array | float,
) -> jax.Array:
    """Ridge-regression weights ``W [e, n_way]`` from the support set onto one-hot targets.

    Solves ``min_W ||X W - Y||^2 + lam ||W||^2`` (``X`` the ``[n, e]`` support embeddings,
    ``Y`` the one-hot labels) through the Woodbury identity,
    ``W = X^T (X X^T + lam I_n)^{-1} Y``, which only needs an ``n x n`` solve (``n`` support
    examples, usually far fewer than the embedding size ``e``). Equal to the primal
    ``(X^T X + lam I_e)^{-1} X^T Y``. Differentiable in ``X`` and ``lam``.

    Args:
        support_emb: ``[n_support, e]`` embedded support examples.
        support_labels: ``[n_support]`` integer labels in ``[0, n_way)``.
        n_way: number of classes (static).
        lam: ridge regularisation ``> 0`` (a scalar, possibly traced).

    Examples:
        >>> import jax.numpy as jnp
        >>> w = ridge_weights(jnp.eye(2), jnp.array([0, 1]), 2, lam=1.0)
        >>> [[round(float(v), 4) for v in row] for row in w]
        [[0.5, 0.0], [0.0, 0.5]]
    """
    n_way = check_episode(support_emb, support_labels, support_emb, n_way)
    check_positive(lam, name="lam")
    return _ridge_weights(support_emb, support_labels, lam, n_way=n_way)


@functools.partial(jax.jit, static_argnames=("n_way",))
def _ridge_weights(support_emb, support_labels, lam, *, n_way):
    x = support_emb
    y = jax.nn.one_hot(support_labels, n_way, dtype=x.dtype)
    gram = x @ x.T + lam * jnp.eye(x.shape[0], dtype=x.dtype)
    return x.T @ jax.scipy.linalg.solve(gram, y, assume_a="pos")


def r2d2_logits(
    support_emb: jax.Array,
    support_labels: jax.Array,
    query_emb: jax.Array,
    n_way: int,
    *,
    lam: jax.Array | float,
    scale: jax.Array | float = 1.0,
    bias: jax.Array | float = 0.0,
) -> jax.Array:
    """Query logits of the R2-D2 head: ``scale * query_emb @ W + bias``.

    ``W`` are the :func:`ridge_weights` of the support set. ``scale`` and ``bias`` are the
    paper's learned output calibration (alpha, beta).

    Args:
        support_emb: ``[n_support, e]``.
        support_labels: ``[n_support]`` integer labels in ``[0, n_way)``.
        query_emb: ``[n_query, e]``.
        n_way: number of classes (static).
        lam: ridge regularisation ``> 0``.
        scale: output scale.
        bias: output offset (shared by all classes).

    Returns:
        ``[n_query, n_way]`` logits.

    Examples:
        >>> import jax.numpy as jnp
        >>> out = r2d2_logits(jnp.eye(2), jnp.array([0, 1]), jnp.array([[2.0, 0.0]]), 2, lam=1.0)
        >>> [round(float(v), 4) for v in out[0]]
        [1.0, 0.0]
    """
    n_way = check_episode(support_emb, support_labels, query_emb, n_way)
    check_positive(lam, name="lam")
    return _r2d2_logits(support_emb, support_labels, query_emb, lam, scale, bias, n_way=n_way)


@functools.partial(jax.jit, static_argnames=("n_way",))
def _r2d2_logits(support_emb, support_labels, query_emb, lam, scale, bias, *, n_way):
    w = _ridge_weights(support_emb, support_labels, lam, n_way=n_way)
    return scale * (query_emb @ w) + bias


def r2d2_head_init(*, lam: float = 1.0, scale: float = 1.0, bias: float = 0.0,
                   learn_lam: bool = True) -> Params:
    """Initial R2-D2 head parameters: ``{"scale", "bias"}`` and, if learned, ``"log_lam"``."""
    check_positive(lam, name="lam")
    head = {"scale": jnp.asarray(float(scale)), "bias": jnp.asarray(float(bias))}
    if learn_lam:
        head["log_lam"] = jnp.asarray(math.log(lam))
    return head


def r2d2_loss(
    embed_fn: EmbedFn,
    *,
    n_way: int,
    lam: float = 1.0,
    learn_lam: bool = True,
) -> TaskLossFn:
    """Per-task R2-D2 loss: ridge head on the support set, cross-entropy on the query set.

    Args:
        embed_fn: ``embed_fn(embed_params, x) -> [n, e]``.
        n_way: classes per task (static int >= 2).
        lam: the fixed ridge regularisation when ``learn_lam`` is false (otherwise the head's
            ``exp(log_lam)`` is used and ``lam`` is ignored here).
        learn_lam: read ``lam = exp(params["head"]["log_lam"])`` from the head parameters.

    Returns:
        ``task_loss(params, support, query) -> (loss, {"loss", "accuracy"})`` with
        ``params = {"embed": ..., "head": r2d2_head_init(...)}``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> fn = r2d2_loss(lambda w, x: x @ w, n_way=2)
        >>> x, y = jnp.array([[1.0, 0.0], [0.0, 1.0]]), jnp.array([0, 1])
        >>> params = {"embed": jnp.eye(2), "head": r2d2_head_init(lam=0.1, scale=5.0)}
        >>> loss, metrics = jax.jit(fn)(params, (x, y), (x, y))
        >>> float(metrics["accuracy"])
        1.0
    """
    check_positive(lam, name="lam")

    def head(head_params, s_emb, s_labels, q_emb):
        ridge = jnp.exp(head_params["log_lam"]) if learn_lam else lam
        return r2d2_logits(s_emb, s_labels, q_emb, n_way, lam=ridge,
                           scale=head_params["scale"], bias=head_params["bias"])

    return head_task_loss(embed_fn, head, n_way=n_way)


def r2d2(
    embed_fn: EmbedFn,
    outer_opt: optax.GradientTransformation,
    *,
    n_way: int,
    lam: float = 1.0,
    learn_lam: bool = True,
    scale: float = 1.0,
    bias: float = 0.0,
    axis_name: str | None = None,
) -> MetaLearner:
    """R2-D2: meta-learns an embedding through a closed-form ridge-regression classifier.

    Each task fits ridge regression from the support embeddings to one-hot labels in closed form
    (:func:`ridge_weights`, an ``n_support x n_support`` solve by the Woodbury identity), and
    scores the query set with ``scale * X_query W + bias``. The outer loss (query
    cross-entropy) is differentiated through the solve into the embedding, the ridge ``lam``
    (learned as ``log_lam`` when ``learn_lam``) and the output scale. ``bias`` is kept for
    fidelity to the paper; with a softmax over classes a shared offset cancels, so its gradient
    is zero up to rounding and it has no effect (Adam may still move it by rounding noise).

    Args:
        embed_fn: ``embed_fn(embed_params, x) -> [n, e]``.
        outer_opt: the Optax optimizer of the meta-parameters.
        n_way: classes per task (static).
        lam: (initial) ridge regularisation ``> 0``.
        learn_lam: meta-learn ``log(lam)``; otherwise ``lam`` is fixed.
        scale: initial output scale (alpha).
        bias: initial output offset (beta).

    Returns:
        ``MetaLearner(init, step)``; ``init(embed_params)`` gives ``params = {"embed":
        embed_params, "head": {"scale", "bias"[, "log_lam"]}}``.

    Examples:
        >>> import jax.numpy as jnp, optax, metajax
        >>> learner = metajax.r2d2(lambda w, x: x @ w, optax.adam(1e-2), n_way=5)
        >>> state = learner.init(jnp.ones((32, 8)))  # then jax.jit(learner.step)(state, tasks)
        >>> sorted(state.params["head"])
        ['bias', 'log_lam', 'scale']
    """
    return metric_learner(
        r2d2_loss(embed_fn, n_way=n_way, lam=lam, learn_lam=learn_lam), outer_opt,
        head_init=r2d2_head_init(lam=lam, scale=scale, bias=bias, learn_lam=learn_lam),
        axis_name=axis_name)
