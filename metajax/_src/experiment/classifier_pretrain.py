"""Global-label classification pre-training: the "Baseline" of Chen et al. (2019).

In "A Closer Look at Few-shot Classification" a network is pre-trained by ordinary
minibatch classification over *all* training classes (global labels, one head unit per
class); a few-shot task is then solved from the pre-trained body, by fitting a new head on
the frozen embedding (:func:`metajax.finetune_head`) or by fine-tuning the whole network
from a fresh head. This is the honest "pre-train + fine-tune" baseline of a meta-learner:
it sees the same training images, but no episodes.

:func:`classifier_learner` is one Optax step on a minibatch, shaped like a
:class:`metajax.MetaLearner` so that :func:`metajax.experiment.meta_train` runs it
(compiled chunks of steps, logging, checkpoints, resumption); :func:`minibatch_sampler`
draws minibatches on device; :func:`pretrain_classifier` puts them together.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax._src.core.adapt import LossFn, with_aux
from metajax._src.core.checks import check_int
from metajax._src.core.outer import apply_outer_update, init_state
from metajax._src.core.types import MetaLearner, MetaState, Params
from metajax._src.experiment.training import TrainResult, meta_train

Transform = Callable[[jax.Array, jax.Array], jax.Array]
"""``transform(key, x) -> x`` applied to each minibatch of inputs (preprocessing, augmentation)."""


def classifier_learner(loss_fn: LossFn, opt: optax.GradientTransformation, *,
                       has_aux: bool = False) -> MetaLearner:
    """Plain supervised training as a :class:`metajax.MetaLearner`: one ``opt`` step per batch.

    ``step(state, batch)`` takes a minibatch ``(x, y)`` (not a ``TaskBatch``) and applies
    one update of ``opt`` on ``loss_fn(params, batch)``; its metrics are the loss and, with
    ``has_aux``, the auxiliary metrics (e.g. accuracy).

    Args:
        loss_fn: ``loss_fn(params, (x, y)) -> scalar`` (or ``(scalar, aux)`` with
            ``has_aux``), e.g. ``metajax.losses.cross_entropy(apply)``.
        opt: the Optax optimizer (e.g. ``optax.adam(1e-3)``).
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``.

    Returns:
        A :class:`metajax.MetaLearner` (no ``adaptation``).

    Examples:
        >>> import jax.numpy as jnp, optax, metajax
        >>> loss = metajax.losses.cross_entropy(lambda p, x: x @ p)
        >>> learner = classifier_learner(loss, optax.sgd(1.0), has_aux=True)
        >>> x, y = jnp.array([[1.0, 0.0], [0.0, 1.0]]), jnp.array([0, 1])
        >>> state, metrics = learner.step(learner.init(jnp.zeros((2, 2))), (x, y))
        >>> int(state.step), float(metrics["accuracy"])  # metrics before the update
        (1, 0.5)
    """
    loss = with_aux(loss_fn, has_aux=has_aux)

    def init(params: Params) -> MetaState:
        return init_state(opt, params)

    def step(state: MetaState, batch) -> tuple[MetaState, dict]:
        (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(state.params, batch)
        return apply_outer_update(opt, state, grads), {"loss": value, **(aux or {})}

    return MetaLearner(init=init, step=step)


def minibatch_sampler(batch_size: int, *, transform: Transform | None = None) -> Callable:
    """``sample(key, inputs, labels) -> (x, y)``: a minibatch drawn uniformly with replacement.

    Pure and jittable; ``inputs`` and ``labels`` are arguments (not constants of the program).
    ``transform(key, x)``, if given, is applied to the drawn inputs (e.g. scaling ``uint8``
    images to floats, or random augmentation) with a key of its own.

    Args:
        batch_size: examples per minibatch (static int >= 1).
        transform: optional ``transform(key, x) -> x``.

    Returns:
        The sampler, for :func:`metajax.experiment.meta_train` with
        ``sample_args=(inputs, labels)``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> sample = minibatch_sampler(4)
        >>> x, y = sample(jax.random.PRNGKey(0), jnp.arange(10.0)[:, None], jnp.arange(10))
        >>> bool(jnp.all(x[:, 0] == y)), x.shape
        (True, (4, 1))
    """
    batch_size = check_int("batch_size", batch_size, 1)

    def sample(key: jax.Array, inputs: jax.Array, labels: jax.Array):
        k_idx, k_tf = jax.random.split(key)
        idx = jax.random.randint(k_idx, (batch_size,), 0, labels.shape[0])
        x, y = inputs[idx], labels[idx]
        return (transform(k_tf, x) if transform is not None else x), y

    return sample


def pretrain_classifier(
    loss_fn: LossFn,
    params: Params,
    inputs,
    labels,
    *,
    key: jax.Array,
    num_steps: int,
    batch_size: int,
    optimizer: optax.GradientTransformation | None = None,
    has_aux: bool = False,
    transform: Transform | None = None,
    steps_per_call: int = 10,
    unroll: int | bool = 1,
    log_every: int | None = None,
    progress: bool = False,
) -> TrainResult:
    """Trains a classifier over all classes with minibatches: a pure function of ``key``.

    Each step draws ``batch_size`` examples uniformly (with replacement) from ``inputs``,
    the batch of step ``t`` from ``fold_in(key, t)``, and applies one ``optimizer`` update
    on ``loss_fn``. Steps run compiled, ``steps_per_call`` per call (see
    :func:`metajax.make_multi_step`; for conv nets on CPU use a small number with
    ``unroll=True``).

    Args:
        loss_fn: ``loss_fn(params, (x, y)) -> scalar`` (``(scalar, aux)`` with ``has_aux``);
            the classifier's head has one output per class of ``labels``.
        params: the initial parameters.
        inputs: ``[n, ...]`` training inputs (a device array, or numpy).
        labels: ``[n]`` integer global class labels.
        key: PRNG key of the minibatch stream (and of ``transform``).
        num_steps: optimizer steps (int >= 1).
        batch_size: examples per step (int >= 1).
        optimizer: default ``optax.adam(1e-3)``.
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
        transform: optional ``transform(key, x) -> x`` applied on device to every minibatch.
        steps_per_call: steps per compiled call.
        unroll: unrolling of those steps.
        log_every: record the mean metrics every this many steps (default: ``num_steps //
            10``).
        progress: show a progress bar.

    Returns:
        A :class:`metajax.experiment.TrainResult`: ``state.params`` are the trained
        parameters; ``history`` holds the logged mean training metrics (``tasks_per_s``
        counts examples here).

    Raises:
        ValueError: a bad count, ``labels`` that are not a 1-D integer array with one entry
            per input, or negative labels (each naming the argument).

    Examples:
        >>> import jax, jax.numpy as jnp, optax, metajax
        >>> x = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
        >>> y = (x[:, 0] > 0).astype(jnp.int32)
        >>> loss = metajax.losses.cross_entropy(lambda p, x: x @ p["w"] + p["b"])
        >>> init = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}
        >>> out = pretrain_classifier(loss, init, x, y, key=jax.random.PRNGKey(1),
        ...                           num_steps=100, batch_size=16, has_aux=True,
        ...                           optimizer=optax.adam(0.1))
        >>> out.history[-1]["accuracy"] > 0.9
        True
    """
    num_steps = check_int("num_steps", num_steps, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    steps_per_call = check_int("steps_per_call", steps_per_call, 1)
    n_inputs, label_shape = np.shape(inputs)[:1], np.shape(labels)
    if len(label_shape) != 1 or not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise ValueError(f"`labels` must be a 1-D integer array; got shape {label_shape} and "
                         f"dtype {jnp.result_type(labels)}.")
    if not n_inputs or n_inputs[0] != label_shape[0] or label_shape[0] == 0:
        raise ValueError(f"`inputs` and `labels` must hold the same number (>= 1) of "
                         f"examples; got {n_inputs[0] if n_inputs else 'a scalar'} inputs "
                         f"and {label_shape[0]} labels.")
    if not isinstance(labels, jax.core.Tracer) and int(np.min(np.asarray(labels))) < 0:
        raise ValueError("`labels` must be class indices >= 0; got a negative label.")
    learner = classifier_learner(loss_fn, optimizer or optax.adam(1e-3), has_aux=has_aux)
    return meta_train(learner.step, learner.init(params),
                      minibatch_sampler(batch_size, transform=transform), key=key,
                      num_steps=num_steps, tasks_per_step=batch_size,
                      sample_args=(jnp.asarray(inputs), jnp.asarray(labels)),
                      steps_per_call=min(steps_per_call, num_steps), unroll=unroll,
                      log_every=log_every or max(num_steps // 10, 1), progress=progress,
                      desc="pretrain")
