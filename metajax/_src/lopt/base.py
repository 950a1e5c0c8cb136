"""The learned-optimizer interface: meta-parameters ``theta`` and ``theta -> optax`` optimizer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metajax._src.core.checks import check_int

Theta = Any


class LearnedOptimizer(NamedTuple):
    """A learned optimizer: ``init`` its meta-parameters, ``opt_fn`` the optimizer they define.

    Attributes:
        init: ``init(key) -> theta``, the meta-parameters (a pytree).
        opt_fn: ``opt_fn(theta, *, num_steps) -> optax.GradientTransformation``. ``num_steps`` is
            the length of the training run the optimizer is used for: optimizers that read the
            fraction of training done (``step / num_steps``) take it from there; the others
            ignore it. The transformation is pure and differentiable in ``theta``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from metajax import lopt
        >>> opt = lopt.adam_schedule(num_knots=4)
        >>> theta = opt.init(jax.random.PRNGKey(0))
        >>> tx = opt.opt_fn(theta, num_steps=100)   # an ordinary optax.GradientTransformation
        >>> updates, state = tx.update({"w": jnp.ones(3)}, tx.init({"w": jnp.zeros(3)}))
        >>> updates["w"].shape
        (3,)
    """

    init: Callable[[jax.Array], Theta]
    opt_fn: Callable[..., optax.GradientTransformation]


def check_theta(theta: Theta, template: Theta, *, name: str = "theta") -> None:
    """Raises ``ValueError`` unless ``theta`` has the structure and leaf shapes of ``template``."""
    got, want = jax.tree.structure(theta), jax.tree.structure(template)
    if got != want:
        raise ValueError(f"`{name}` does not have this learned optimizer's structure: got {got}, "
                         f"expected {want} (make it with the optimizer's `init`).")
    for path, a, b in zip(jax.tree_util.tree_leaves_with_path(theta),
                          jax.tree.leaves(theta), jax.tree.leaves(template), strict=True):
        if jnp.shape(a) != jnp.shape(b):
            raise ValueError(f"`{name}`{jax.tree_util.keystr(path[0])} has shape "
                             f"{jnp.shape(a)}; this learned optimizer expects {jnp.shape(b)}.")


def check_num_steps(num_steps: Any) -> int:
    return check_int("num_steps", num_steps, 1)


def fraction_done(count: jax.Array, num_steps: int) -> jax.Array:
    """``count / num_steps`` as float32 (it passes 1 beyond the horizon)."""
    return jnp.asarray(count, jnp.float32) / num_steps
