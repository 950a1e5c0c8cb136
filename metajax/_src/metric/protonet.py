"""Prototypical Networks (Snell et al., 2017) as a :class:`MetaLearner`."""

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
    head_task_loss,
    metric_learner,
)

DISTANCES = ("sqeuclidean", "euclidean")


def class_means(emb: jax.Array, labels: jax.Array, n_way: int) -> jax.Array:
    """Mean embedding of each class: ``[n_way, e]`` from ``emb [n, e]`` and ``labels [n]``."""
    onehot = jax.nn.one_hot(labels, n_way, dtype=emb.dtype)  # [n, n_way]
    counts = jnp.maximum(onehot.sum(0), 1.0)
    return (onehot.T @ emb) / counts[:, None]


def prototypical_logits(
    support_emb: jax.Array,
    support_labels: jax.Array,
    query_emb: jax.Array,
    n_way: int,
    *,
    distance: str = "sqeuclidean",
) -> jax.Array:
    """Query logits of a prototypical network: minus the distance to each class prototype.

    The prototype of class ``c`` is the mean of the support embeddings labelled ``c``.

    Args:
        support_emb: ``[n_support, e]`` embedded support examples.
        support_labels: ``[n_support]`` integer labels in ``[0, n_way)``.
        query_emb: ``[n_query, e]`` embedded query examples.
        n_way: number of classes (static).
        distance: ``"sqeuclidean"`` (the paper's choice) or ``"euclidean"``.

    Returns:
        ``[n_query, n_way]`` logits ``-d(query, prototype_c)``.

    Examples:
        >>> import jax.numpy as jnp
        >>> s = jnp.array([[0.0, 0.0], [2.0, 0.0], [4.0, 4.0]])
        >>> prototypical_logits(s, jnp.array([0, 0, 1]), jnp.array([[1.0, 1.0]]), 2)
        Array([[ -1., -18.]], dtype=float32)
    """
    n_way = check_episode(support_emb, support_labels, query_emb, n_way)
    if distance not in DISTANCES:
        raise ValueError(f"`distance` must be one of {DISTANCES}; got {distance!r}.")
    return _prototypical_logits(support_emb, support_labels, query_emb, n_way=n_way,
                                distance=distance)


@functools.partial(jax.jit, static_argnames=("n_way", "distance"))
def _prototypical_logits(support_emb, support_labels, query_emb, *, n_way, distance):
    prototypes = class_means(support_emb, support_labels, n_way)
    sq = jnp.sum((query_emb[:, None, :] - prototypes[None, :, :]) ** 2, axis=-1)
    if distance == "euclidean":
        return -jnp.sqrt(sq + 1e-12)  # the epsilon keeps the gradient finite at zero distance
    return -sq


def protonet_loss(
    embed_fn: EmbedFn,
    *,
    n_way: int,
    distance: str = "sqeuclidean",
) -> TaskLossFn:
    """Per-task prototypical-network loss, for training and for held-out evaluation.

    Args:
        embed_fn: ``embed_fn(embed_params, x) -> [n, e]``.
        n_way: classes per task (static int >= 2).
        distance: see :func:`prototypical_logits`.

    Returns:
        ``task_loss(params, support, query) -> (loss, {"loss", "accuracy"})`` with
        ``params = {"embed": embed_params, "head": {}}`` and ``(x, labels)`` splits; use with
        :func:`metajax.evaluate_episodes`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> fn = protonet_loss(lambda w, x: x @ w, n_way=2)
        >>> x, y = jnp.array([[0.0], [2.0]]), jnp.array([0, 1])
        >>> loss, metrics = jax.jit(fn)({"embed": jnp.ones((1, 1)), "head": {}}, (x, y), (x, y))
        >>> float(metrics["accuracy"])
        1.0
    """
    if distance not in DISTANCES:
        raise ValueError(f"`distance` must be one of {DISTANCES}; got {distance!r}.")

    def head(head_params, s_emb, s_labels, q_emb):
        del head_params
        return prototypical_logits(s_emb, s_labels, q_emb, n_way, distance=distance)

    return head_task_loss(embed_fn, head, n_way=n_way)


def protonet(
    embed_fn: EmbedFn,
    outer_opt: optax.GradientTransformation,
    *,
    n_way: int,
    distance: str = "sqeuclidean",
    axis_name: str | None = None,
) -> MetaLearner:
    """Prototypical Networks: meta-learns an embedding for nearest-class-mean classification.

    Each task embeds its support set, averages the embeddings of each class into a prototype,
    scores query examples by minus their squared Euclidean distance to each prototype, and the
    outer loss is the query softmax cross-entropy, averaged over the tasks of the batch.

    Args:
        embed_fn: ``embed_fn(embed_params, x) -> [n, e]``, e.g. a Flax model's apply.
        outer_opt: the Optax optimizer of the embedding.
        n_way: classes per task (static; labels are ``0 .. n_way - 1``).
        distance: ``"sqeuclidean"`` or ``"euclidean"``.

    Returns:
        ``MetaLearner(init, step)``; ``init(embed_params)`` wraps the embedding parameters as
        ``{"embed": embed_params, "head": {}}``; ``step`` reports ``loss`` and ``accuracy``.

    Examples:
        >>> import jax, jax.numpy as jnp, optax, metajax
        >>> learner = metajax.protonet(lambda w, x: x @ w, optax.adam(1e-2), n_way=5)
        >>> state = learner.init(0.1 * jnp.ones((32, 8)))
        >>> tasks = metajax.tasks.gaussian_classes(jax.random.PRNGKey(0), 8)
        >>> state, metrics = jax.jit(learner.step)(state, tasks)
        >>> int(state.step), sorted(metrics)
        (1, ['accuracy', 'loss'])
    """
    return metric_learner(protonet_loss(embed_fn, n_way=n_way, distance=distance), outer_opt,
                          axis_name=axis_name)
