"""Shared machinery of metric-based and closed-form-head few-shot learners.

A metric learner meta-learns an embedding ``embed_fn(params, x) -> [n, e]`` (plus, for some
heads, a few head parameters). Each task is solved without gradient steps: a *head* maps the
embedded support set to class logits for the embedded query set (prototypes, attention over the
support set, a ridge-regression or SVM solve), and the outer loss is the query cross-entropy.

The meta-parameters are the dict ``{"embed": embed_params, "head": head_params}``; ``head`` is
``{}`` for heads without parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax._src.core.outer import apply_outer_update
from metajax._src.core.types import MetaLearner, MetaState, Params, PyTree, TaskBatch, num_tasks

EmbedFn = Callable[[Params, jax.Array], jax.Array]
TaskLossFn = Callable[[Params, PyTree, PyTree], tuple[jax.Array, dict[str, jax.Array]]]


def check_n_way(n_way: Any, *, name: str = "n_way") -> int:
    """Returns ``n_way`` if it is a static int >= 2; raises ``ValueError`` naming ``name``."""
    if isinstance(n_way, bool) or not isinstance(n_way, (int, np.integer)) or n_way < 2:
        raise ValueError(f"`{name}` must be an int >= 2 (classes per task); got {n_way!r}.")
    return int(n_way)


def check_positive(value: Any, *, name: str) -> None:
    """Raises ``ValueError`` naming ``name`` if a concrete scalar ``value`` is not > 0."""
    if isinstance(value, jax.core.Tracer):
        return
    v = np.asarray(value)
    if v.ndim != 0 or not np.isfinite(v) or not v > 0:
        raise ValueError(f"`{name}` must be a finite scalar > 0; got {value!r}.")


def check_episode(support_emb, support_labels, query_emb, n_way: int) -> int:
    """Checks the shapes (and, when concrete, the label values) of one embedded episode.

    Args:
        support_emb: ``[n_support, e]`` support embeddings.
        support_labels: ``[n_support]`` integer labels in ``[0, n_way)``.
        query_emb: ``[n_query, e]`` query embeddings.
        n_way: number of classes.

    Returns:
        ``n_way`` as an int.

    Raises:
        ValueError: naming the offending argument: wrong rank, mismatched sizes, non-integer
            labels, fewer support examples than classes, or (for concrete labels, i.e. outside
            ``jit``/``vmap``) labels out of range or a class without a support example.
    """
    n_way = check_n_way(n_way)
    s_shape, l_shape, q_shape = (np.shape(a) for a in (support_emb, support_labels, query_emb))
    if len(s_shape) != 2:
        raise ValueError(f"`support_emb` must be [n_support, embedding_dim]; got shape {s_shape}.")
    if len(q_shape) != 2:
        raise ValueError(f"`query_emb` must be [n_query, embedding_dim]; got shape {q_shape}.")
    if q_shape[1] != s_shape[1]:
        raise ValueError(f"`query_emb` has embedding size {q_shape[1]} but `support_emb` has "
                         f"{s_shape[1]}; they must match.")
    if l_shape != s_shape[:1]:
        raise ValueError(f"`support_labels` must have shape [n_support] = {s_shape[:1]}; got "
                         f"{l_shape}.")
    if not jnp.issubdtype(jnp.result_type(support_labels), jnp.integer):
        raise ValueError("`support_labels` must be integer class indices; got dtype "
                         f"{jnp.result_type(support_labels)}.")
    if s_shape[0] < n_way:
        raise ValueError(f"`support_emb` has {s_shape[0]} examples, fewer than `n_way` "
                         f"({n_way}): every class needs at least one support example.")
    if not isinstance(support_labels, jax.core.Tracer):
        labels = np.asarray(support_labels)
        if labels.size and (labels.min() < 0 or labels.max() >= n_way):
            raise ValueError(f"`support_labels` must lie in [0, n_way) = [0, {n_way}); got "
                             f"values in [{labels.min()}, {labels.max()}].")
        missing = sorted(set(range(n_way)) - set(labels.tolist()))
        if missing:
            raise ValueError(f"`support_labels` has no example of class(es) {missing}; every "
                             f"one of the n_way={n_way} classes needs a support example.")
    return n_way


def check_split(batch: Any, *, name: str) -> tuple[jax.Array, jax.Array]:
    """Unpacks one task's ``(x, labels)`` split, checking that it has one label per example."""
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ValueError(f"`{name}` must be a pair (x, labels); got {type(batch).__name__}.")
    x, labels = batch
    if np.ndim(labels) != 1 or np.ndim(x) < 1 or np.shape(x)[0] != np.shape(labels)[0]:
        raise ValueError(f"`{name}` must hold x [n, ...] and labels [n] for one task; got x "
                         f"{np.shape(x)} and labels {np.shape(labels)}.")
    return x, labels


def classification_metrics(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict]:
    """Mean softmax cross-entropy of ``logits [n, n_way]`` and ``{"loss", "accuracy"}``.

    Examples:
        >>> import jax.numpy as jnp
        >>> import jax
        >>> logits, labels = jnp.array([[2.0, 0.0], [0.0, 1.0]]), jnp.array([0, 0])
        >>> loss, m = jax.jit(classification_metrics)(logits, labels)
        >>> float(m["accuracy"])
        0.5
    """
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
    return loss, {"loss": loss, "accuracy": accuracy}


def head_task_loss(
    embed_fn: EmbedFn,
    head: Callable[..., jax.Array],
    *,
    n_way: int,
) -> TaskLossFn:
    """Builds a per-task loss from a head ``head(head_params, s_emb, s_labels, q_emb) -> logits``.

    Args:
        embed_fn: ``embed_fn(embed_params, x) -> [n, e]``.
        head: maps the head parameters and the embedded episode to query logits
            ``[n_query, n_way]``.
        n_way: classes per task.

    Returns:
        ``task_loss(params, support, query) -> (loss, {"loss", "accuracy"})`` for one task, with
        ``params = {"embed": ..., "head": ...}`` and ``support``/``query`` pairs
        ``(x, labels)``.
    """
    n_way = check_n_way(n_way)

    def task_loss(params: Params, support, query):
        xs, ys = check_split(support, name="support")
        xq, yq = check_split(query, name="query")
        s_emb = embed_fn(params["embed"], xs)
        q_emb = embed_fn(params["embed"], xq)
        check_episode(s_emb, ys, q_emb, n_way)
        return classification_metrics(head(params["head"], s_emb, ys, q_emb), yq)

    return task_loss


def metric_learner(
    task_loss: TaskLossFn,
    outer_opt: optax.GradientTransformation,
    *,
    head_init: Params | None = None,
    axis_name: str | None = None,
) -> MetaLearner:
    """A :class:`MetaLearner` that minimises the mean over tasks of a per-task query loss.

    Every task of a batch is handled at once by one ``jax.vmap`` (meta-parameters shared,
    support and query mapped over the task axis); ``outer_opt`` updates the meta-parameters on
    the mean loss. There is no inner gradient loop: the task is solved inside ``task_loss``.

    Args:
        task_loss: ``task_loss(params, support, query) -> (loss, metrics)`` for one task (e.g.
            from :func:`metajax.protonet_loss`).
        outer_opt: the Optax optimizer of the meta-parameters.
        head_init: initial head parameters (``{}`` when ``None``).
        axis_name: the mapped axis the meta-batch is split over under ``shard_map`` (e.g.
            ``"tasks"`` with :func:`metajax.distributed.process_step`); the meta-gradient is
            averaged over it.

    Returns:
        ``MetaLearner(init, step)``: ``init(embed_params)`` returns a :class:`MetaState` whose
        ``params`` are ``{"embed": embed_params, "head": head_init}``; ``step(state, tasks)``
        returns the new state and the task-averaged metrics (``loss``, ``accuracy``).

    Examples:
        >>> import jax, jax.numpy as jnp, optax, metajax
        >>> embed = lambda w, x: x @ w
        >>> learner = metric_learner(metajax.protonet_loss(embed, n_way=2), optax.adam(1e-2))
        >>> state = learner.init(jnp.eye(3, 2))
        >>> x = jnp.ones((4, 2, 3)); y = jnp.tile(jnp.arange(2), (4, 1))  # 4 tasks, 2 examples
        >>> state, metrics = jax.jit(learner.step)(state, metajax.TaskBatch((x, y), (x, y)))
        >>> sorted(metrics)
        ['accuracy', 'loss']
    """
    head_params = {} if head_init is None else head_init

    # The single place where tasks are batched: params shared, support/query per task.
    batched = jax.vmap(task_loss, in_axes=(None, 0, 0))

    def meta_loss(params: Params, tasks: TaskBatch):
        per_task, metrics = batched(params, tasks.support, tasks.query)
        return jnp.mean(per_task), jax.tree.map(jnp.mean, metrics)

    def init(embed_params: Params) -> MetaState:
        params = {"embed": embed_params, "head": jax.tree.map(jnp.asarray, head_params)}
        return MetaState(params=params, opt_state=outer_opt.init(params),
                         step=jnp.zeros((), jnp.int32))

    def step(state: MetaState, tasks: TaskBatch):
        num_tasks(tasks)
        grads, metrics = jax.grad(meta_loss, has_aux=True)(state.params, tasks)
        return apply_outer_update(outer_opt, state, grads, axis_name=axis_name), metrics

    return MetaLearner(init=init, step=step)


def make_episode_evaluator(
    task_fn: TaskLossFn,
    *,
    chunk_size: int | None = None,
) -> Callable[[Params, TaskBatch], dict[str, jax.Array]]:
    """Builds a pure, jittable ``evaluate(params, tasks) -> {metric: [n_tasks]}``.

    Args:
        task_fn: ``task_fn(params, support, query) -> (loss, metrics)`` for one task, e.g.
            :func:`metajax.protonet_loss` or :func:`metajax.finetune_head`.
        chunk_size: evaluate this many tasks at a time (``lax.map`` over vmapped chunks) to
            bound memory; ``None`` vmaps over all tasks at once.
    """

    def one(params, sq):
        _, metrics = task_fn(params, *sq)
        return metrics

    def evaluate(params: Params, tasks: TaskBatch) -> dict[str, jax.Array]:
        num_tasks(tasks)
        if chunk_size is None:
            return jax.vmap(one, in_axes=(None, 0))(params, (tasks.support, tasks.query))
        return jax.lax.map(lambda sq: one(params, sq), (tasks.support, tasks.query),
                           batch_size=chunk_size)

    return evaluate


def evaluate_episodes(
    task_fn: TaskLossFn,
    params: Params,
    tasks: TaskBatch,
    *,
    chunk_size: int | None = None,
) -> dict[str, np.ndarray]:
    """Per-task query metrics of a metric learner on held-out tasks (compiled once per call).

    Args:
        task_fn: the per-task loss, e.g. ``metajax.protonet_loss(embed_fn, n_way=5)``.
        params: the parameters ``task_fn`` takes (``state.params`` of a metric learner).
        tasks: held-out tasks.
        chunk_size: see :func:`make_episode_evaluator`.

    Returns:
        ``{metric: numpy array [n_tasks]}`` (``loss``, ``accuracy``); summarise each with
        :func:`metajax.mean_ci95`.

    Examples:
        >>> import jax, jax.numpy as jnp, metajax
        >>> fn = metajax.protonet_loss(lambda w, x: x @ w, n_way=5)
        >>> tasks = metajax.tasks.gaussian_classes(jax.random.PRNGKey(0), 50, dim=8,
        ...                                        n_informative=4, nuisance_std=0.1)
        >>> out = evaluate_episodes(fn, {"embed": jnp.eye(8), "head": {}}, tasks)
        >>> s = metajax.mean_ci95(out["accuracy"])
        >>> s.n, s.mean > 0.5  # chance: 0.2
        (50, True)
    """
    fn = make_episode_evaluator(task_fn, chunk_size=chunk_size)
    out = jax.device_get(jax.jit(fn)(params, tasks))
    return {k: np.asarray(v) for k, v in out.items()}
