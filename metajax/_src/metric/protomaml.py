"""ProtoMAML (Triantafillou et al., 2020): a prototype-initialised linear head, then MAML."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from metajax._src.core.adapt import adapt, check_steps
from metajax._src.core.types import MetaLearner, Params
from metajax._src.metric.learner import (
    EmbedFn,
    TaskLossFn,
    check_episode,
    check_n_way,
    check_positive,
    check_split,
    classification_metrics,
    metric_learner,
)
from metajax._src.metric.protonet import class_means


def prototype_head(support_emb: jax.Array, support_labels: jax.Array, n_way: int) -> dict:
    """The linear head equivalent to a prototypical network: ``{"w": 2 c, "b": -|c|^2}``.

    With ``c_k`` the mean support embedding of class ``k``, the logits ``w_k . e + b_k =
    -|e - c_k|^2 + |e|^2`` differ from ProtoNet's by a constant per example, so they give the
    same softmax, loss and predictions (Triantafillou et al., 2020, Sec. 3).

    Args:
        support_emb: ``[n_support, e]`` embedded support examples.
        support_labels: ``[n_support]`` integer labels in ``[0, n_way)``.
        n_way: number of classes.

    Returns:
        ``{"w": [n_way, e], "b": [n_way]}``.

    Examples:
        >>> import jax.numpy as jnp
        >>> head = prototype_head(jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([0, 1]), 2)
        >>> head["w"].tolist(), head["b"].tolist()
        ([[2.0, 0.0], [0.0, 4.0]], [-1.0, -4.0])
    """
    prototypes = class_means(support_emb, support_labels, check_n_way(n_way))
    return {"w": 2.0 * prototypes, "b": -jnp.sum(prototypes**2, axis=-1)}


def _linear_head_loss(embed_fn: EmbedFn):
    def loss(params: Params, batch):
        x, labels = batch
        logits = embed_fn(params["embed"], x) @ params["head"]["w"].T + params["head"]["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return loss


def protomaml_loss(
    embed_fn: EmbedFn,
    *,
    n_way: int,
    inner_steps: int,
    inner_lr: Any,
    first_order: bool = False,
) -> TaskLossFn:
    """Per-task ProtoMAML loss, for training and for held-out evaluation.

    The task's linear head starts at :func:`prototype_head` of the embedded support set; then
    ``inner_steps`` SGD steps of ``inner_lr`` on the support cross-entropy adapt the whole
    network (embedding and head), and the adapted network classifies the query set. The
    meta-gradient flows through the inner loop (second order unless ``first_order``) and
    through the prototypes that initialise the head (also with ``first_order``, as in
    Triantafillou et al.'s fo-Proto-MAML).

    Args:
        embed_fn: ``embed_fn(embed_params, x) -> [n, e]``.
        n_way: classes per task (static int >= 2).
        inner_steps: inner SGD steps (static int >= 1; at test time it may differ from
            training).
        inner_lr: inner SGD step size (a scalar, or a pytree of rates shaped like
            ``{"embed": embed_params, "head": {"w", "b"}}``).
        first_order: treat the inner gradients as constants.

    Returns:
        ``task_loss(params, support, query) -> (loss, {"loss", "accuracy"})`` with
        ``params = {"embed": embed_params, "head": {}}`` and ``(x, labels)`` splits; use with
        :func:`metajax.evaluate_episodes`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> fn = protomaml_loss(lambda w, x: x @ w, n_way=2, inner_steps=1, inner_lr=0.1)
        >>> x, y = jnp.array([[0.0], [2.0]]), jnp.array([0, 1])
        >>> loss, metrics = jax.jit(fn)({"embed": jnp.ones((1, 1)), "head": {}}, (x, y), (x, y))
        >>> float(metrics["accuracy"])
        1.0
    """
    n_way = check_n_way(n_way)
    check_steps(inner_steps, name="inner_steps")
    if isinstance(inner_lr, (int, float)) and not isinstance(inner_lr, bool):
        check_positive(inner_lr, name="inner_lr")
    loss = _linear_head_loss(embed_fn)

    def task_loss(params: Params, support, query):
        xs, ys = check_split(support, name="support")
        xq, yq = check_split(query, name="query")
        s_emb = embed_fn(params["embed"], xs)
        check_episode(s_emb, ys, embed_fn(params["embed"], xq[:1]), n_way)
        start = {"embed": params["embed"], "head": prototype_head(s_emb, ys, n_way)}
        adapted = adapt(loss, start, (xs, ys), steps=inner_steps, lr=inner_lr,
                        first_order=first_order)
        logits = embed_fn(adapted["embed"], xq) @ adapted["head"]["w"].T + adapted["head"]["b"]
        return classification_metrics(logits, yq)

    return task_loss


def protomaml(
    embed_fn: EmbedFn,
    outer_opt: optax.GradientTransformation,
    *,
    n_way: int,
    inner_steps: int,
    inner_lr: Any,
    first_order: bool = False,
    axis_name: str | None = None,
) -> MetaLearner:
    """ProtoMAML: MAML whose per-task linear head starts at the class prototypes.

    Triantafillou et al. (2020, Meta-Dataset) make MAML's output layer task-specific by
    initialising it from the support set's prototypes (:func:`prototype_head`), so that
    before any step the network is a prototypical network; the inner loop then fine-tunes the
    whole network. The meta-parameters are the embedding's (there is no meta-learned head).
    One ``jax.vmap`` over the tasks of a batch; ``outer_opt`` updates on the mean query loss.

    Args:
        embed_fn: ``embed_fn(embed_params, x) -> [n, e]``.
        outer_opt: the Optax optimizer of the meta-parameters.
        n_way: classes per task.
        inner_steps: inner SGD steps per task.
        inner_lr: inner SGD step size.
        first_order: fo-Proto-MAML (inner gradients as constants; the gradient through the
            prototypes is kept).
        axis_name: the mapped axis the meta-batch is split over (see :func:`metajax.protonet`).

    Returns:
        ``MetaLearner(init, step)`` as :func:`metajax.protonet`'s: ``init(embed_params)``;
        evaluate with :func:`metajax.evaluate_episodes` and :func:`protomaml_loss` (any
        number of test-time steps).

    Examples:
        >>> import jax, jax.numpy as jnp, optax, metajax
        >>> embed = lambda w, x: jnp.tanh(x @ w)
        >>> learner = metajax.protomaml(embed, optax.adam(1e-2), n_way=2, inner_steps=1,
        ...                             inner_lr=0.1)
        >>> x = jnp.ones((4, 2, 3)); y = jnp.tile(jnp.arange(2), (4, 1))
        >>> state = learner.init(jnp.eye(3, 2))
        >>> state, metrics = jax.jit(learner.step)(state, metajax.TaskBatch((x, y), (x, y)))
        >>> sorted(metrics)
        ['accuracy', 'loss']
    """
    task_loss = protomaml_loss(embed_fn, n_way=n_way, inner_steps=inner_steps,
                               inner_lr=inner_lr, first_order=first_order)
    return metric_learner(task_loss, outer_opt, axis_name=axis_name)
