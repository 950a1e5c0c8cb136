"""iMAML (Rajeswaran et al., 2019): meta-learning with implicit gradients, as a MetaLearner."""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from metajax._src.core.adapt import LossFn, adapt, check_steps, with_aux
from metajax._src.core.batching import TaskBatching
from metajax._src.core.implicit import conjugate_gradient, custom_root
from metajax._src.core.outer import gradient_step, init_state, mean_task_gradient, task_metrics
from metajax._src.core.types import Adaptation, MetaLearner, MetaState, Params, PyTree


def _check_positive(value: Any, *, name: str, allow_zero: bool = False) -> float:
    bad = isinstance(value, bool) or not isinstance(value, (int, float))
    if not bad:
        bad = not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero)
    if bad:
        raise ValueError(f"`{name}` must be a finite number {'>=' if allow_zero else '>'} 0; "
                         f"got {value!r}.")
    return float(value)


def _sq_dist(a: Params, b: Params) -> jax.Array:
    return sum(jnp.sum((x - y) ** 2) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                    strict=True))


def imaml_solver(
    loss_fn: LossFn,
    *,
    lam: float,
    inner_steps: int,
    inner_lr: Any = None,
    inner_opt: optax.GradientTransformation | None = None,
    cg_steps: int = 5,
    cg_tol: float = 0.0,
    cg_damping: float = 0.0,
    has_aux: bool = False,
):
    """The iMAML inner solve ``phi*(theta, support)`` with its implicit gradient.

    Minimises the proximal objective ``L_support(phi) + lam/2 ||phi - theta||^2`` approximately
    by ``inner_steps`` gradient steps from ``init``. Differentiating the result in ``theta``
    gives the implicit meta-gradient ``(I + H/lam)^{-1} v`` for a cotangent ``v``, where ``H`` is
    the support-loss Hessian at ``phi*``, solved by ``cg_steps`` conjugate-gradient iterations on
    Hessian-vector products (:func:`metajax.custom_root`); the inner steps are never
    backpropagated through.

    Arguments are as in :func:`imaml`.

    Returns:
        ``solve(init, theta, support) -> phi*``, differentiable in ``theta``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> loss = lambda w, b: jnp.mean((b[0] * w - b[1]) ** 2)
        >>> solve = imaml_solver(loss, lam=1.0, inner_steps=200, inner_lr=0.1)
        >>> support = (jnp.ones(4), jnp.full(4, 3.0))       # phi* = (2*3 + theta) / 3
        >>> g = jax.grad(lambda t: solve(t, t, support))(0.0)  # dphi*/dtheta = lam / (2 + lam)
        >>> round(float(g), 4)
        0.3333
    """
    lam = _check_positive(lam, name="lam")
    check_steps(inner_steps, name="inner_steps")
    check_steps(cg_steps, name="cg_steps")
    cg_tol = _check_positive(cg_tol, name="cg_tol", allow_zero=True)
    cg_damping = _check_positive(cg_damping, name="cg_damping", allow_zero=True)
    if (inner_lr is None) == (inner_opt is None):
        raise ValueError("Pass exactly one of `inner_lr` (SGD inner loop) and `inner_opt` (an "
                         "Optax inner optimizer).")
    loss = with_aux(loss_fn, has_aux=has_aux)

    def proximal(phi: Params, batch: tuple[Params, PyTree]) -> jax.Array:
        theta, support = batch
        return loss(phi, support)[0] + 0.5 * lam * _sq_dist(phi, theta)

    optimality = jax.grad(proximal)  # F(phi, (theta, support)) = dL/dphi + lam (phi - theta)
    solve = functools.partial(conjugate_gradient, maxiter=cg_steps, tol=cg_tol,
                              damping=cg_damping)

    @custom_root(lambda phi, theta, support: optimality(phi, (theta, support)), solve=solve)
    def solver(init: Params, theta: Params, support: PyTree) -> Params:
        # Never differentiated, so a rolled `lax.scan` (small program, fast compile) costs nothing.
        return adapt(proximal, init, (theta, support), steps=inner_steps, lr=inner_lr,
                     inner_opt=inner_opt, first_order=True, unroll=1)

    return solver


def imaml(
    loss_fn: LossFn,
    outer_opt: optax.GradientTransformation,
    *,
    lam: float,
    inner_steps: int,
    inner_lr: Any = None,
    inner_opt: optax.GradientTransformation | None = None,
    cg_steps: int = 5,
    cg_tol: float = 0.0,
    cg_damping: float = 0.0,
    has_aux: bool = False,
    task_batching: TaskBatching | None = None,
    track_pre_adaptation: bool = True,
    axis_name: str | None = None,
) -> MetaLearner:
    """Implicit MAML: meta-gradients through the inner optimum, not the inner trajectory.

    For each task the inner loop minimises ``L_support(phi) + lam/2 ||phi - theta||^2``
    approximately by ``inner_steps`` gradient steps from ``phi = theta``, and the meta-gradient
    of the query loss ``L_query(phi*)`` is the implicit one,
    ``(I + H/lam)^{-1} grad L_query(phi*)`` with ``H`` the support-loss Hessian at ``phi*``,
    computed with ``cg_steps`` conjugate-gradient iterations of Hessian-vector products (via
    :func:`metajax.custom_root`). Memory does not grow with ``inner_steps``. The gradient is exact
    when the inner problem is solved exactly (and CG has converged); with few inner steps it is
    an approximation, as in the paper.

    Test-time adaptation (``adaptation``): from ``theta`` with ``inner_lr`` (or ``inner_opt``)
    on the support loss, without the proximal term, so that in a comparison every method adapts
    in the same way (:func:`metajax.evaluate`, :func:`metajax.experiment.compare_with_baselines`).

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar`` (or ``(scalar, aux)`` with ``has_aux``).
        outer_opt: the Optax optimizer of the meta-parameters ``theta``.
        lam: strength ``lambda > 0`` of the proximal regulariser tying ``phi`` to ``theta``;
            larger values keep the adapted parameters closer to ``theta``.
        inner_steps: gradient steps on the proximal objective (static int >= 1).
        inner_lr: inner SGD step size (scalar or per-parameter pytree); ``None`` with
            ``inner_opt``.
        inner_opt: optional Optax inner optimizer (not differentiated through).
        cg_steps: maximum conjugate-gradient iterations (Hessian-vector products) per task.
        cg_tol: relative residual at which CG stops early (see
            :func:`metajax.conjugate_gradient`); ``0`` runs all ``cg_steps``.
        cg_damping: added to ``H + lam I`` in the CG solve (damping for Hessians that are far
            from positive definite); ``0`` solves the exact system.
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``; aux values are averaged over tasks
            into the metrics.
        task_batching: how the task axis is batched; ``None``: :func:`metajax.default_batching`.
        track_pre_adaptation: also report the query loss before adaptation (``pre_loss``).
        axis_name: the mapped axis the meta-batch is split over (see :func:`metajax.maml`).

    Returns:
        A :class:`MetaLearner` ``(init, step, adaptation)``; ``step`` reports
        ``{"loss", "pre_loss", <aux>, "pre_<aux>"}`` averaged over tasks, where ``loss`` is the
        query loss at the inner solution.

    Raises:
        ValueError: if ``lam <= 0``, ``inner_steps < 1``, ``cg_steps < 1``, or ``cg_tol`` or
            ``cg_damping`` is negative (the message names the argument).

    Examples:
        >>> import jax, jax.numpy as jnp, optax, metajax
        >>> loss = lambda w, b: jnp.mean((b[0] * w - b[1]) ** 2)
        >>> learner = metajax.imaml(loss, optax.adam(1e-2), lam=1.0, inner_steps=5,
        ...                         inner_lr=0.1, cg_steps=3)
        >>> tasks = metajax.TaskBatch((jnp.ones((8, 5)), jnp.ones((8, 5))),
        ...                           (jnp.ones((8, 5)), jnp.ones((8, 5))))
        >>> state, metrics = jax.jit(learner.step)(learner.init(jnp.array(0.0)), tasks)
        >>> sorted(metrics)
        ['loss', 'pre_loss']
    """
    solver = imaml_solver(loss_fn, lam=lam, inner_steps=inner_steps, inner_lr=inner_lr,
                          inner_opt=inner_opt, cg_steps=cg_steps, cg_tol=cg_tol,
                          cg_damping=cg_damping, has_aux=has_aux)
    loss = with_aux(loss_fn, has_aux=has_aux)

    def task_objective(theta: Params, support, query):
        adapted = solver(theta, theta, support)
        post, aux = loss(adapted, query)
        metrics = task_metrics(post, aux)
        if track_pre_adaptation:
            pre, pre_aux = loss(jax.lax.stop_gradient(theta), query)
            metrics.update(task_metrics(pre, pre_aux, prefix="pre_"))
        return post, metrics

    meta_grad = mean_task_gradient(task_objective, task_batching=task_batching)

    def init(params: Params) -> MetaState:
        return init_state(outer_opt, params)

    step = gradient_step(meta_grad, outer_opt, axis_name=axis_name)

    def adaptation(params: Params) -> Adaptation:
        return Adaptation(params, inner_lr, inner_opt)

    return MetaLearner(init=init, step=step, adaptation=adaptation)
