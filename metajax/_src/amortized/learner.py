"""Neural processes as a :class:`MetaLearner`: one Optax update on an objective over tasks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from metajax._src.amortized.objectives import ProcessObjective
from metajax._src.amortized.points import check_process_tasks
from metajax._src.core.outer import apply_outer_update, init_state
from metajax._src.core.types import MetaLearner, MetaState, TaskBatch


def neural_process(
    objective: ProcessObjective,
    optimizer: optax.GradientTransformation,
    *,
    key: jax.Array,
    axis_name: str | None = None,
) -> MetaLearner:
    """A black-box meta-learner: ``step`` is one ``optimizer`` update on the mean ``objective``.

    The objective is written for one task; ``step`` maps it over the batch with ``jax.vmap``
    (one program for all tasks, contexts of any sizes through their masks). Nothing adapts at
    test time: the model reads the context and predicts (``adaptation`` is ``None``).

    Args:
        objective: ``objective(params, task, key) -> (loss, metrics)`` for one task, e.g.
            :func:`metajax.conditional_nll` or :func:`metajax.elbo`.
        optimizer: the Optax optimizer of the model's parameters.
        key: PRNG key of the latent draws; task ``i`` of step ``t`` uses
            ``split(fold_in(key, t), n)[i]``, so a resumed run draws the same.
        axis_name: average the gradient over this ``shard_map`` axis (several processes).

    Returns:
        ``MetaLearner(init, step)``; ``step(state, tasks)`` takes a ``TaskBatch`` of
        :class:`metajax.Points` (``support`` the contexts, ``query`` the targets).

    Examples:
        >>> import jax, optax
        >>> import metajax
        >>> model = metajax.models.cnp(encoder=(16, 16), decoder=(16,))
        >>> tasks = metajax.tasks.gp_curves(jax.random.PRNGKey(0), 8)
        >>> params = metajax.models.init_process(model, jax.random.PRNGKey(1), tasks)
        >>> learner = metajax.neural_process(
        ...     metajax.conditional_nll(metajax.models.process_apply(model)), optax.adam(1e-3),
        ...     key=jax.random.PRNGKey(2))
        >>> state, metrics = jax.jit(learner.step)(learner.init(params), tasks)
        >>> sorted(metrics)
        ['log_lik', 'loss']
    """
    if not callable(objective):
        raise TypeError(f"`objective` must be a callable objective(params, task, key); got "
                        f"{type(objective).__name__}.")
    key = jnp.asarray(key)

    def init(params) -> MetaState:
        return init_state(optimizer, params)

    def step(state: MetaState, tasks: TaskBatch):
        n = check_process_tasks(tasks)
        keys = jax.random.split(jax.random.fold_in(key, state.step), n)

        def mean_loss(params):
            losses, metrics = jax.vmap(objective, in_axes=(None, 0, 0))(params, tasks, keys)
            return jnp.mean(losses), jax.tree.map(jnp.mean, metrics)

        (loss, metrics), grads = jax.value_and_grad(mean_loss, has_aux=True)(state.params)
        state = apply_outer_update(optimizer, state, grads, axis_name=axis_name)
        return state, {"loss": loss, **metrics}

    return MetaLearner(init=init, step=step)
