"""Matching Networks (Vinyals et al., 2016), without full-context embeddings."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from metajax._src.core.types import MetaLearner
from metajax._src.metric.learner import (
    EmbedFn,
    TaskLossFn,
    check_episode,
    check_positive,
    head_task_loss,
    metric_learner,
)

_EPS = 1e-8
_MASKED = -1e30  # finite stand-in for log(0): keeps gradients finite


def cosine_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
    """Pairwise cosine similarities ``[n, m]`` between rows of ``a [n, e]`` and ``b [m, e]``."""
    na = a / jnp.sqrt(jnp.sum(a * a, -1, keepdims=True) + _EPS)
    nb = b / jnp.sqrt(jnp.sum(b * b, -1, keepdims=True) + _EPS)
    return na @ nb.T


def matching_logits(
    support_emb: jax.Array,
    support_labels: jax.Array,
    query_emb: jax.Array,
    n_way: int,
    *,
    scale: float = 1.0,
) -> jax.Array:
    """Class log-probabilities of a matching network: attention over the support set.

    Each query attends to every support example with weights
    ``a_i = softmax_i(scale * cos(query, support_i))``; the probability of class ``c`` is the
    attention mass on support examples labelled ``c``, ``p_c = sum_{i: y_i = c} a_i``. It is
    computed in log space (``logsumexp`` over each class's support examples), so the result is
    directly usable as logits: ``softmax(log p) = p``.

    Args:
        support_emb: ``[n_support, e]`` embedded support examples.
        support_labels: ``[n_support]`` integer labels in ``[0, n_way)``.
        query_emb: ``[n_query, e]`` embedded query examples.
        n_way: number of classes (static).
        scale: inverse temperature of the attention softmax (``1`` in the paper).

    Returns:
        ``[n_query, n_way]`` log-probabilities ``log p_c``.

    Examples:
        >>> import jax.numpy as jnp
        >>> s = jnp.array([[1.0, 0.0], [0.0, 1.0]])
        >>> p = jnp.exp(matching_logits(s, jnp.array([0, 1]), jnp.array([[1.0, 0.0]]), 2))
        >>> [round(float(v), 3) for v in p[0]]
        [0.731, 0.269]
    """
    n_way = check_episode(support_emb, support_labels, query_emb, n_way)
    check_positive(scale, name="scale")
    return _matching_logits(support_emb, support_labels, query_emb, scale, n_way=n_way)


@functools.partial(jax.jit, static_argnames=("n_way",))
def _matching_logits(support_emb, support_labels, query_emb, scale, *, n_way):
    sims = scale * cosine_similarity(query_emb, support_emb)  # [n_query, n_support]
    member = jax.nn.one_hot(support_labels, n_way, dtype=bool).T  # [n_way, n_support]
    per_class = jnp.where(member[None], sims[:, None, :], _MASKED)  # [n_query, n_way, n_s]
    return jax.nn.logsumexp(per_class, axis=-1) - jax.nn.logsumexp(sims, axis=-1, keepdims=True)


def matchingnet_loss(embed_fn: EmbedFn, *, n_way: int, scale: float = 1.0) -> TaskLossFn:
    """Per-task matching-network loss (query negative log-likelihood) and accuracy.

    Args:
        embed_fn: ``embed_fn(embed_params, x) -> [n, e]``, shared by support and query (no
            full-context embedding).
        n_way: classes per task (static int >= 2).
        scale: attention inverse temperature (see :func:`matching_logits`).

    Returns:
        ``task_loss(params, support, query) -> (loss, {"loss", "accuracy"})`` with
        ``params = {"embed": embed_params, "head": {}}``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> fn = matchingnet_loss(lambda w, x: x @ w, n_way=2, scale=10.0)
        >>> x, y = jnp.array([[1.0, 0.0], [0.0, 1.0]]), jnp.array([0, 1])
        >>> loss, metrics = jax.jit(fn)({"embed": jnp.eye(2), "head": {}}, (x, y), (x, y))
        >>> float(metrics["accuracy"]), bool(loss > 0)
        (1.0, True)
    """
    check_positive(scale, name="scale")

    def head(head_params, s_emb, s_labels, q_emb):
        del head_params
        return matching_logits(s_emb, s_labels, q_emb, n_way, scale=scale)

    return head_task_loss(embed_fn, head, n_way=n_way)


def matchingnet(
    embed_fn: EmbedFn,
    outer_opt: optax.GradientTransformation,
    *,
    n_way: int,
    scale: float = 1.0,
    axis_name: str | None = None,
) -> MetaLearner:
    """Matching Networks: meta-learns an embedding for cosine-attention over the support set.

    Each query example is classified by a softmax attention over the support examples (cosine
    similarity of embeddings), summing the attention per class; the outer loss is the query
    negative log-likelihood. Support and query share one embedding (no full-context
    embeddings, no LSTM).

    Args:
        embed_fn: ``embed_fn(embed_params, x) -> [n, e]``.
        outer_opt: the Optax optimizer of the embedding.
        n_way: classes per task (static).
        scale: attention inverse temperature. ``1`` is the paper's; cosines lie in ``[-1, 1]``,
            so with ``1`` the class probabilities stay close to uniform and the loss stays high
            even when every query is right; a larger value (e.g. ``10``) sharpens them.

    Returns:
        ``MetaLearner(init, step)``; ``init(embed_params)`` wraps the embedding parameters as
        ``{"embed": embed_params, "head": {}}``.

    Examples:
        >>> import jax.numpy as jnp, optax, metajax
        >>> learner = metajax.matchingnet(lambda w, x: x @ w, optax.adam(1e-2), n_way=5)
        >>> state = learner.init(jnp.ones((32, 8)))  # then jax.jit(learner.step)(state, tasks)
        >>> sorted(state.params)
        ['embed', 'head']
    """
    return metric_learner(matchingnet_loss(embed_fn, n_way=n_way, scale=scale), outer_opt,
                          axis_name=axis_name)
