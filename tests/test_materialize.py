"""``materialized`` is ``fun``: values, derivatives to second order, batching; and it is not
fused away (the compiled program keeps a conditional)."""

import jax
import jax.numpy as jnp
import numpy as np
from helpers import assert_trees_all_close

from metajax._src.cpu.materialize import materialized


def test_materialized_is_fun_for_values_gradients_and_vmap():
    fun = lambda a, b: jnp.sin(a) * b + a ** 2  # noqa: E731
    a, b = jnp.linspace(-1.0, 1.0, 6), jnp.arange(6.0)
    assert_trees_all_close(materialized(fun, a, b), fun(a, b))
    total = lambda f: lambda a, b: jnp.sum(f(a, b))  # noqa: E731
    through = lambda a, b: materialized(fun, a, b)  # noqa: E731
    grads = [jax.grad(total(f), argnums=(0, 1))(a, b) for f in (fun, through)]
    assert_trees_all_close(grads[1], grads[0])
    hessians = [jax.hessian(total(f))(a, b) for f in (fun, through)]
    assert_trees_all_close(hessians[1], hessians[0])
    rows = np.stack([np.asarray(a) + i for i in range(3)])
    assert_trees_all_close(jax.jit(jax.vmap(through, (0, None)))(rows, b),
                           jax.vmap(fun, (0, None))(rows, b))


def test_the_compiled_program_keeps_the_conditional():
    """XLA may not inline the branch (it would then fuse it into consumers again)."""
    fun = lambda a: jnp.max(materialized(lambda a: jnp.sin(a) + 1.0, a) * 2.0)  # noqa: E731
    hlo = jax.jit(fun).lower(jnp.ones(8)).compile().as_text()
    assert " conditional(" in hlo
    plain = jax.jit(lambda a: jnp.max((jnp.sin(a) + 1.0) * 2.0)).lower(jnp.ones(8))
    assert " conditional(" not in plain.compile().as_text()
