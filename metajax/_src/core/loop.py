"""Running many outer steps inside one compiled call, with tasks sampled on device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from metajax._src.core.checks import check_int
from metajax._src.core.types import MetaState, Metrics, TaskBatch

Sampler = Callable[..., TaskBatch]
"""``sample(key, *sample_args) -> TaskBatch``: a jittable task sampler."""


def make_multi_step(
    step: Callable[[MetaState, TaskBatch], tuple[MetaState, Metrics]],
    sample: Sampler,
    *,
    steps_per_call: int,
    unroll: int | bool = 1,
) -> Callable[..., tuple[MetaState, Metrics]]:
    """Fuses ``steps_per_call`` outer steps, each on freshly sampled tasks, into one function.

    Sampling happens inside the compiled program (no host round-trip). The tasks of outer step
    ``t`` are ``sample(fold_in(key, t), *sample_args)`` with ``t = state.step``, so the task
    stream depends only on ``key`` and the global step: how steps are grouped into calls (or a
    resumed run) does not change it.

    Data the sampler reads (e.g. a dataset's image array) should be passed as
    ``sample_args`` rather than closed over: arguments of the jitted ``multi_step`` stay
    arguments of the compiled program, whereas closed-over arrays are embedded in it as
    constants (slower compiles, and copies in every compilation-cache entry).

    Args:
        step: a meta-learner's ``step(state, tasks)``.
        sample: ``sample(key, *sample_args) -> TaskBatch``, jittable (e.g.
            ``partial(metajax.tasks.sinusoid, n_tasks=25)``, or
            ``partial(metajax.data.episodes, n_tasks=4, n_way=5, k_shot=1, n_query=15)``
            called with the image array as its one sample argument).
        steps_per_call: number of outer steps per call (static).
        unroll: unrolling of the ``lax.scan`` over the steps; ``True`` (or at least
            ``steps_per_call``) traces the steps one after another, leaving no loop in the
            program. XLA:CPU runs convolutions inside a loop body on a slow generic path
            (about 5-10x slower for a Conv4), so conv nets on CPU train faster with a small
            ``steps_per_call`` and ``unroll=True``.

    Returns:
        ``multi_step(state, key, *sample_args) -> (state, metrics)`` with metrics stacked over
        the steps (leading axis ``steps_per_call``). Jit it, ideally with ``donate_argnums=0``.

    Examples:
        >>> import functools, jax, jax.numpy as jnp, optax, metajax
        >>> loss = lambda w, b: jnp.mean((b[0] * w - b[1]) ** 2)
        >>> learner = metajax.maml(loss, optax.sgd(0.1), inner_steps=1, inner_lr=0.01)
        >>> sample = functools.partial(metajax.tasks.linear_regression, n_tasks=4)
        >>> run = jax.jit(metajax.make_multi_step(learner.step, sample, steps_per_call=10))
        >>> state, metrics = run(learner.init(jnp.zeros((1, 1))), jax.random.PRNGKey(0))
        >>> metrics["loss"].shape
        (10,)
    """
    check_int("steps_per_call", steps_per_call, 1)
    if not isinstance(unroll, (bool, int)) or (not isinstance(unroll, bool) and unroll < 1):
        raise ValueError(f"`unroll` must be a bool or an int >= 1; got {unroll!r}.")

    fully_unrolled = unroll is True or (unroll is not False and unroll >= steps_per_call)

    def multi_step(state: MetaState, key: jax.Array, *sample_args: Any):
        def body(state, _):
            return step(state, sample(jax.random.fold_in(key, state.step), *sample_args))

        if fully_unrolled:  # traced step after step: no loop in the program at all
            # (lax.scan keeps a one-trip while loop for length 1, which XLA does not remove)
            steps = []
            for _ in range(steps_per_call):
                state, metrics = body(state, None)
                steps.append(metrics)
            return state, jax.tree.map(lambda *m: jnp.stack(m), *steps)
        return jax.lax.scan(body, state, None, length=steps_per_call, unroll=unroll)

    return multi_step
