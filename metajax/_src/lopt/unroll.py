"""Inner training as a pure function: episodes of a task family, run one truncation at a time."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metajax._src.lopt.families import TaskFamily


class UnrollState(NamedTuple):
    """One inner training run (an episode) part-way through.

    Attributes:
        params: the learner's parameters.
        opt_state: the (learned) optimizer's state.
        task: the task being trained on.
        step: inner steps taken in this episode (int32).
        key: the episode's key; step ``t``'s mini-batch key is ``fold_in(key, t)``.
    """

    params: Any
    opt_state: Any
    task: Any
    step: jax.Array
    key: jax.Array


def start_episode(family: TaskFamily, opt: optax.GradientTransformation,
                  key: jax.Array) -> UnrollState:
    """A fresh episode: a task, the learner's initialisation on it and the optimizer's state."""
    k_task, k_init, k_run = jax.random.split(key, 3)
    task = family.sample(k_task)
    params = family.init(k_init, task)
    return UnrollState(params, opt.init(params), task, jnp.zeros([], jnp.int32), k_run)


def inner_steps(family: TaskFamily, opt: optax.GradientTransformation, state: UnrollState, *,
                length: int) -> tuple[UnrollState, jax.Array]:
    """``length`` optimizer steps on the state's task (``lax.scan``), differentiable in ``opt``'s
    meta-parameters. Returns the new state and the training loss before each step."""

    def body(s: UnrollState, _):
        loss, grads = jax.value_and_grad(family.loss)(s.params, s.task,
                                                      jax.random.fold_in(s.key, s.step))
        updates, opt_state = opt.update(grads, s.opt_state, s.params)
        return UnrollState(optax.apply_updates(s.params, updates), opt_state, s.task,
                           s.step + 1, s.key), loss

    return jax.lax.scan(body, state, None, length=length)


def all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree)
              if jnp.issubdtype(jnp.result_type(a), jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def tree_where(cond: jax.Array, a: Any, b: Any) -> Any:
    return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def renew_finished(family: TaskFamily, opt: optax.GradientTransformation, state: UnrollState,
                   key: jax.Array, *, num_steps: int) -> tuple[UnrollState, jax.Array]:
    """Starts a new episode (from ``key``) where ``state``'s has reached ``num_steps`` or its
    parameters are no longer finite; returns the state and whether it was renewed."""
    done = (state.step >= num_steps) | ~all_finite(state.params)
    return tree_where(done, start_episode(family, opt, key), state), done


def start_runs(family: TaskFamily, opt: optax.GradientTransformation, key: jax.Array,
               n_tasks: int, *, num_steps: int, truncation: int, stagger: bool) -> UnrollState:
    """``n_tasks`` fresh episodes; with ``stagger``, each advanced (with ``opt``) by a random
    number of truncations in ``[0, num_steps / truncation)``, so that the truncations of one
    outer step sample every stage of training rather than all the same one."""
    k_start, k_skip = jax.random.split(key)
    states = jax.vmap(lambda k: start_episode(family, opt, k))(jax.random.split(k_start, n_tasks))
    n_trunc = num_steps // truncation if stagger else 1
    skip = jax.random.randint(k_skip, (n_tasks,), 0, n_trunc)

    def advance(i, states):
        moved = jax.vmap(lambda s: inner_steps(family, opt, s, length=truncation)[0])(states)
        return jax.vmap(tree_where)(i < skip, moved, states)

    return jax.lax.fori_loop(0, n_trunc - 1, advance, states) if n_trunc > 1 else states

