"""Baseline / Baseline++ evaluation (Chen et al., 2019): a new head fine-tuned per task.

In "A Closer Look at Few-shot Classification" an embedding is pre-trained by ordinary
classification on the base classes, and each few-shot task is solved by training a *new* head
on the support embeddings: a linear layer (Baseline) or a cosine-similarity classifier with
scaled, normalised weights (Baseline++). Tasks of :func:`metajax.tasks.gaussian_classes` have
no global classes to pre-train on, so here only the per-task head fitting is provided: given
any embedding (meta-learned, random, or the identity on raw features), :func:`finetune_head`
fits the head on the frozen support embeddings with full-batch SGD and reports query metrics.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from metajax._src.core.checks import check_int
from metajax._src.core.types import Params
from metajax._src.metric.learner import (
    EmbedFn,
    TaskLossFn,
    check_episode,
    check_n_way,
    check_positive,
    check_split,
    classification_metrics,
)

HEADS = ("linear", "cosine")
_EPS = 1e-8


def _normalize(a: jax.Array, axis: int) -> jax.Array:
    return a / jnp.sqrt(jnp.sum(a * a, axis=axis, keepdims=True) + _EPS)


def head_logits(head_params: Params, emb: jax.Array, *, head: str, scale: float) -> jax.Array:
    """Logits of a fine-tuned head: ``emb @ w + b`` (linear) or ``scale * cos(emb, w_c)``."""
    if head == "linear":
        return emb @ head_params["w"] + head_params["b"]
    return scale * (_normalize(emb, -1) @ _normalize(head_params["w"], 0))


def fit_head(
    support_emb: jax.Array,
    support_labels: jax.Array,
    n_way: int,
    *,
    key: jax.Array,
    head: str = "linear",
    steps: int = 100,
    lr: float = 0.1,
    momentum: float = 0.9,
    scale: float = 10.0,
    weight_std: float = 0.01,
) -> Params:
    """Trains a new classification head on (frozen) support embeddings; pure and jittable.

    Args:
        support_emb: ``[n_support, e]`` support embeddings (treated as constants).
        support_labels: ``[n_support]`` integer labels in ``[0, n_way)``.
        n_way: number of classes (static).
        key: PRNG key of the head's random initialisation ``N(0, weight_std^2)``.
        head: ``"linear"`` (Baseline: ``w [e, n_way]``, ``b [n_way]``) or ``"cosine"``
            (Baseline++: ``w [e, n_way]``, logits ``scale * cos(emb, w_c)``).
        steps: full-batch SGD steps on the support cross-entropy (static int >= 1).
        lr: SGD step size.
        momentum: SGD momentum.
        scale: cosine head's logit scale (ignored by the linear head).
        weight_std: standard deviation of the initial weights.

    Returns:
        The fitted head parameters ``{"w", "b"}`` (``b`` unused by the cosine head).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> emb = jnp.array([[1.0, 0.0], [0.0, 1.0]])
        >>> h = fit_head(emb, jnp.array([0, 1]), 2, key=jax.random.PRNGKey(0), head="cosine")
        >>> head_logits(h, emb, head="cosine", scale=10.0).argmax(-1)
        Array([0, 1], dtype=int32)
    """
    n_way = check_episode(support_emb, support_labels, support_emb, n_way)
    if head not in HEADS:
        raise ValueError(f"`head` must be one of {HEADS}; got {head!r}.")
    check_int("steps", steps, 1)
    check_positive(lr, name="lr")
    return _fit_head(support_emb, support_labels, key, lr, scale, weight_std, n_way=n_way,
                     head=head, steps=int(steps), momentum=momentum)


@functools.partial(jax.jit, static_argnames=("n_way", "head", "steps", "momentum"))
def _fit_head(support_emb, support_labels, key, lr, scale, weight_std, *, n_way, head, steps,
              momentum):
    emb = jax.lax.stop_gradient(support_emb)
    params = {"w": weight_std * jax.random.normal(key, (emb.shape[-1], n_way), emb.dtype),
              "b": jnp.zeros((n_way,), emb.dtype)}
    opt = optax.sgd(lr, momentum=momentum if momentum else None)

    def loss(p):
        logits = head_logits(p, emb, head=head, scale=scale)
        return optax.softmax_cross_entropy_with_integer_labels(logits, support_labels).mean()

    def body(carry, _):
        p, state = carry
        updates, state = opt.update(jax.grad(loss)(p), state, p)
        return (optax.apply_updates(p, updates), state), None

    (params, _), _ = jax.lax.scan(body, (params, opt.init(params)), None, length=steps)
    return params


def finetune_head(
    embed_fn: EmbedFn,
    *,
    n_way: int,
    key: jax.Array,
    head: str = "cosine",
    steps: int = 100,
    lr: float = 0.1,
    momentum: float = 0.9,
    scale: float = 10.0,
    weight_std: float = 0.01,
) -> TaskLossFn:
    """Baseline (``head="linear"``) / Baseline++ (``head="cosine"``) few-shot evaluation.

    Returns a per-task function that embeds the support and query sets with a fixed embedding,
    fits a new head on the support set with :func:`fit_head` and reports the query metrics. The
    head starts from the same random initialisation (from ``key``) in every task; labels are
    arbitrary per task, so this favours no class.

    Args:
        embed_fn: ``embed_fn(embed_params, x) -> [n, e]``; ``lambda p, x: x`` uses raw inputs.
        n_way: classes per task (static int >= 2).
        key: PRNG key of the head initialisation.
        head: ``"linear"`` or ``"cosine"``.
        steps: SGD steps per task.
        lr: SGD step size.
        momentum: SGD momentum.
        scale: cosine head's logit scale.
        weight_std: standard deviation of the initial weights.

    Returns:
        ``task_fn(embed_params, support, query) -> (loss, {"loss", "accuracy"})``. Note that
        it takes the *embedding* parameters (``state.params["embed"]`` of a metric learner).
        Use with :func:`metajax.evaluate_episodes`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> fn = finetune_head(lambda p, x: x, n_way=2, key=jax.random.PRNGKey(0), steps=20)
        >>> x, y = jnp.array([[1.0, 0.1], [0.1, 1.0]]), jnp.array([0, 1])
        >>> loss, metrics = jax.jit(fn)(None, (x, y), (x, y))  # embedding params: None
        >>> float(metrics["accuracy"])
        1.0
    """
    n_way = check_n_way(n_way)
    if head not in HEADS:
        raise ValueError(f"`head` must be one of {HEADS}; got {head!r}.")

    def task_fn(embed_params: Params, support, query):
        xs, ys = check_split(support, name="support")
        xq, yq = check_split(query, name="query")
        s_emb = embed_fn(embed_params, xs)
        q_emb = embed_fn(embed_params, xq)
        check_episode(s_emb, ys, q_emb, n_way)
        fitted = fit_head(s_emb, ys, n_way, key=key, head=head, steps=steps, lr=lr,
                          momentum=momentum, scale=scale, weight_std=weight_std)
        return classification_metrics(head_logits(fitted, q_emb, head=head, scale=scale), yq)

    return task_fn
