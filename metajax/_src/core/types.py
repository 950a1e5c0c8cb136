"""Core data types: task batches, meta-learner state and the meta-learner interface."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

PyTree = Any
Params = PyTree
Metrics = dict[str, jax.Array]


class TaskBatch(NamedTuple):
    """A batch of tasks, each with a support (adaptation) and a query (evaluation) split.

    ``TaskBatch`` is a pytree. The leading axis of every leaf of ``support`` and ``query``
    indexes the task; ``support`` and ``query`` are arbitrary pytrees, typically ``(x, y)``.

    Examples:
        >>> import jax.numpy as jnp
        >>> tasks = TaskBatch(support=(jnp.zeros((4, 5, 1)), jnp.zeros((4, 5, 1))),
        ...                   query=(jnp.zeros((4, 10, 1)), jnp.zeros((4, 10, 1))))
        >>> num_tasks(tasks)
        4
    """

    support: PyTree
    query: PyTree


class Points(NamedTuple):
    """A set of points ``(x, y)`` of one or many tasks, with a validity mask for padding.

    Sets of different sizes share one array shape through ``mask``: entry ``i`` of a set is a
    point when ``mask[..., i]`` is true and padding otherwise. The amortised family (neural
    processes) reads its context and target sets as ``Points``; a ``TaskBatch`` of them has
    ``support`` (the context) and ``query`` (the targets).

    Attributes:
        x: ``[..., n, dx]`` inputs.
        y: ``[..., n, dy]`` outputs.
        mask: ``[..., n]`` booleans (or 0/1 floats): which entries are points.

    Examples:
        >>> import jax.numpy as jnp
        >>> p = Points(jnp.zeros((3, 1)), jnp.zeros((3, 1)), jnp.array([True, True, False]))
        >>> int(p.mask.sum())
        2
    """

    x: jax.Array
    y: jax.Array
    mask: jax.Array


class MetaState(NamedTuple):
    """State of a gradient-based meta-learner.

    Attributes:
        params: the meta-parameters (for MAML, the initialisation the learner adapts from).
        opt_state: the outer Optax optimizer state.
        step: number of outer updates applied so far (int32 scalar).
    """

    params: Params
    opt_state: PyTree
    step: jax.Array


class LearnedRates(NamedTuple):
    """Meta-parameters of a method that meta-learns its inner step sizes with its initialisation.

    Meta-SGD (one rate per scalar parameter) and MAML++'s LSLR (one rate per parameter leaf and
    inner step) use it; ``state.params.init`` is the initialisation, ``state.params.lr`` the
    rates. A pytree (a NamedTuple), so Optax and checkpoints treat it like any parameters.

    Attributes:
        init: the initialisation adaptation starts from.
        lr: the learned step sizes (their shape is the method's; see its docstring).
    """

    init: Params
    lr: Params


class Adaptation(NamedTuple):
    """Where test-time adaptation starts and how it steps: what every evaluator reads.

    Attributes:
        params: the parameters adaptation starts from.
        lr: SGD step sizes: a scalar, or a pytree shaped like ``params`` (per-parameter rates;
            a zero rate freezes its leaf). ``None`` when ``inner_opt`` is given.
        inner_opt: an Optax optimizer to adapt with instead of SGD (e.g. Reptile's Adam).

    Examples:
        >>> Adaptation(params={"w": 0.0}, lr=0.1)
        Adaptation(params={'w': 0.0}, lr=0.1, inner_opt=None)
    """

    params: Params
    lr: Any = None
    inner_opt: Any = None


class MetaLearner(NamedTuple):
    """A meta-learning algorithm as a pair of pure functions, like ``optax.GradientTransformation``.

    Attributes:
        init: ``init(params) -> state``; ``state.params`` holds the meta-parameters.
        step: ``step(state, tasks) -> (state, metrics)``; one outer update on a ``TaskBatch``.
            Pure and jit-compatible.
        adaptation: ``adaptation(meta_params) -> Adaptation``: where test-time adaptation
            starts and with which step sizes or optimizer. Every gradient-based learner of
            metajax defines it (Meta-SGD's learned rates, ANIL's frozen body as zero rates,
            Reptile's inner Adam); ``None`` means the meta-parameters are the initialisation and
            the evaluator's step size applies (see :func:`adaptation_of`).
    """

    init: Callable[[Params], MetaState]
    step: Callable[[MetaState, TaskBatch], tuple[MetaState, Metrics]]
    adaptation: Callable[[Params], Adaptation] | None = None


def adaptation_of(learner: MetaLearner, meta_params: Params, *, lr: Any = None,
                  inner_opt: Any = None) -> Adaptation:
    """The test-time :class:`Adaptation` of ``learner`` at ``meta_params``.

    ``learner.adaptation(meta_params)`` when the learner defines it, else adaptation from
    ``meta_params`` with ``lr`` (or ``inner_opt``), the evaluator's own setting.

    Examples:
        >>> learner = MetaLearner(init=None, step=None)
        >>> adaptation_of(learner, 1.0, lr=0.5)
        Adaptation(params=1.0, lr=0.5, inner_opt=None)
    """
    if learner.adaptation is not None:
        return learner.adaptation(meta_params)
    return Adaptation(meta_params, lr, inner_opt)


def _describe_path(path: tuple) -> str:
    return jax.tree_util.keystr(path) or "<root>"


def num_tasks(tasks: TaskBatch, *, name: str = "tasks") -> int:
    """Returns the number of tasks in ``tasks``, checking every leaf agrees on it.

    Args:
        tasks: a ``TaskBatch`` whose leaves all carry the task axis first.
        name: the argument name used in error messages.

    Raises:
        TypeError: if ``tasks`` is not a ``TaskBatch``.
        ValueError: if a leaf is a scalar or the leading (task) axes differ between leaves.
    """
    if not isinstance(tasks, TaskBatch):
        raise TypeError(
            f"`{name}` must be a metajax.TaskBatch(support, query); got {type(tasks).__name__}."
        )
    leaves = jax.tree_util.tree_leaves_with_path(tasks)
    if not leaves:
        raise ValueError(f"`{name}` has no array leaves; expected arrays with a leading task axis.")
    sizes = {}
    for path, leaf in leaves:
        shape = np.shape(leaf)
        if len(shape) == 0:
            raise ValueError(
                f"`{name}{_describe_path(path)}` is a scalar; every leaf of a TaskBatch needs a "
                "leading task axis."
            )
        sizes[_describe_path(path)] = shape[0]
    if len(set(sizes.values())) != 1:
        listing = ", ".join(f"{name}{p}: {n}" for p, n in sizes.items())
        raise ValueError(
            f"`{name}` leaves disagree on the number of tasks (leading axis); expected one length "
            f"for all, got {listing}."
        )
    return next(iter(sizes.values()))
