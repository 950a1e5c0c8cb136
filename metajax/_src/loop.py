"""Running many outer steps inside one compiled call, with tasks sampled on device."""

from __future__ import annotations

from collections.abc import Callable

import jax

from metajax._src.types import MetaState, Metrics, TaskBatch

Sampler = Callable[[jax.Array], TaskBatch]


def make_multi_step(
    step: Callable[[MetaState, TaskBatch], tuple[MetaState, Metrics]],
    sample: Sampler,
    *,
    steps_per_call: int,
) -> Callable[[MetaState, jax.Array], tuple[MetaState, Metrics]]:
    """Fuses ``steps_per_call`` outer steps, each on freshly sampled tasks, into one function.

    Sampling happens inside the compiled program (no host round-trip). The tasks of outer step
    ``t`` are ``sample(fold_in(key, t))`` with ``t = state.step``, so the task stream depends only
    on ``key`` and the global step: how steps are grouped into calls (or a resumed run) does not
    change it.

    Args:
        step: a meta-learner's ``step(state, tasks)``.
        sample: ``sample(key) -> TaskBatch``, jittable (e.g. ``partial(metajax.tasks.sinusoid,
            n_tasks=25)``).
        steps_per_call: number of outer steps per call (static).

    Returns:
        ``multi_step(state, key) -> (state, metrics)`` with metrics stacked over the steps
        (leading axis ``steps_per_call``). Jit it, ideally with ``donate_argnums=0``.

    Example:
        >>> import functools, jax, jax.numpy as jnp, optax, metajax
        >>> loss = lambda w, b: jnp.mean((b[0] * w - b[1]) ** 2)
        >>> learner = metajax.maml(loss, optax.sgd(0.1), inner_steps=1, inner_lr=0.01)
        >>> sample = functools.partial(metajax.tasks.linear_regression, n_tasks=4)
        >>> run = jax.jit(metajax.make_multi_step(learner.step, sample, steps_per_call=10))
        >>> state, metrics = run(learner.init(jnp.zeros((1, 1))), jax.random.PRNGKey(0))
        >>> metrics["loss"].shape
        (10,)
    """
    if not isinstance(steps_per_call, int) or steps_per_call < 1:
        raise ValueError(f"`steps_per_call` must be an int >= 1; got {steps_per_call!r}.")

    def multi_step(state: MetaState, key: jax.Array):
        def body(state, _):
            return step(state, sample(jax.random.fold_in(key, state.step)))

        return jax.lax.scan(body, state, None, length=steps_per_call)

    return multi_step
