"""``materialized``: compute a value into its own buffer, never fused into its consumers."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def materialized(fun, *operands):
    """``fun(*operands)``, computed into its own buffer, never fused into its consumers.

    XLA:CPU fuses element-wise work into each consumer, which then recomputes it for every
    element it reads: cheap for one read, costly when the work is a sum of many terms (a
    Winograd output transform) or when consumers read it transposed or several times (a
    max-pool made of strided slices). XLA cannot see through a conditional on a runtime
    index, so a branch's result is written to memory once. Both branches are ``fun`` (the
    index is always 1 anyway), so values, derivatives and batching are those of ``fun``.
    ``lax.optimization_barrier`` does not do this on XLA:CPU: fusion moves element-wise work
    across it.

    Examples:
        >>> import jax.numpy as jnp
        >>> float(materialized(lambda a, b: a * b + 1.0, jnp.float32(2.0), jnp.float32(3.0)))
        7.0
    """
    index = lax.optimization_barrier(jnp.int32(1))
    return lax.switch(index, (fun, fun), *operands)
