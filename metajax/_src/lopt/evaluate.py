"""Training curves of any Optax optimizer (learned or hand-designed) on held-out tasks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from metajax._src.core.checks import check_int
from metajax._src.lopt.families import TaskFamily
from metajax._src.lopt.unroll import UnrollState, start_episode


def training_curves(opt: optax.GradientTransformation, family: TaskFamily, keys: jax.Array, *,
                    num_steps: int) -> dict[str, jax.Array]:
    """Trains one task per key for ``num_steps`` steps with ``opt`` and records its losses.

    Task ``i`` (its data, initialisation and mini-batches) depends only on ``keys[i]``, so
    every optimizer given the same keys trains on the same problems.

    Args:
        opt: any Optax optimizer (e.g. ``lopt.opt_fn(theta, num_steps=N)`` or ``optax.adam``).
        family: the training problems.
        keys: ``[n]`` PRNG keys, one per task.
        num_steps: training steps.

    Returns:
        ``{"train": [n, num_steps + 1]}``, the training loss (the family's ``loss`` with the
        step's mini-batch key) before every step and after the last; with ``"test"`` likewise
        where the family has a ``test_loss``; with ``"optimum": [n]`` where it has one.

    Examples:
        >>> import jax, optax
        >>> from metajax import lopt
        >>> fam = lopt.quadratic_family(dim=3)
        >>> keys = jax.random.split(jax.random.PRNGKey(0), 4)
        >>> curves = lopt.training_curves(optax.adam(0.1), fam, keys, num_steps=20)
        >>> curves["train"].shape, bool((curves["train"][:, -1] < curves["train"][:, 0]).all())
        ((4, 21), True)
    """
    num_steps = check_int("num_steps", num_steps, 1)

    def one(key):
        start = start_episode(family, opt, key)

        def record(s: UnrollState):
            out = {"train": family.loss(s.params, s.task, jax.random.fold_in(s.key, s.step))}
            if family.test_loss is not None:
                out["test"] = family.test_loss(s.params, s.task)
            return out

        def body(s: UnrollState, _):
            loss, grads = jax.value_and_grad(family.loss)(s.params, s.task,
                                                          jax.random.fold_in(s.key, s.step))
            updates, opt_state = opt.update(grads, s.opt_state, s.params)
            new = UnrollState(optax.apply_updates(s.params, updates), opt_state, s.task,
                              s.step + 1, s.key)
            rec = {"train": loss}
            if family.test_loss is not None:
                rec["test"] = family.test_loss(s.params, s.task)
            return new, rec

        end, curve = jax.lax.scan(body, start, None, length=num_steps)
        last = record(end)
        out = {k: jnp.concatenate([curve[k], last[k][None]]) for k in curve}
        if family.optimum is not None:
            out["optimum"] = family.optimum(start.task)
        return out

    return jax.vmap(one)(keys)
