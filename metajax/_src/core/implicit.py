"""Implicit differentiation of fixed points and roots, and a pytree conjugate-gradient solver.

``custom_root`` follows jaxopt's ``custom_root``: a solver returns ``x*`` with
``optimality_fn(x*, *args) = 0``; by the implicit function theorem,
``dx*/dargs = -(dF/dx)^{-1} dF/dargs``, so reverse mode needs one linear solve with ``dF/dx``
instead of backpropagating through the solver's iterations (memory independent of the number of
iterations, and the solver may be any non-differentiable code).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metajax._src.core.types import PyTree

MatVec = Callable[[PyTree], PyTree]
LinearSolve = Callable[[MatVec, PyTree], PyTree]


def _tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
    parts = [jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)]
    return functools.reduce(jnp.add, parts, jnp.zeros((), jnp.result_type(*parts)))


def _tree_axpy(alpha: jax.Array, x: PyTree, y: PyTree) -> PyTree:
    """``alpha * x + y`` leaf by leaf (``alpha`` cast to each leaf's dtype)."""
    return jax.tree.map(lambda a, b: (alpha.astype(a.dtype) * a + b), x, y)


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1), 0)


def conjugate_gradient(
    matvec: MatVec,
    b: PyTree,
    *,
    maxiter: int | None = None,
    tol: float = 1e-6,
    atol: float = 0.0,
    damping: float = 0.0,
    x0: PyTree | None = None,
) -> PyTree:
    """Solves ``(A + damping * I) x = b`` for a symmetric positive-definite ``A`` given as a matvec.

    ``b`` and ``x`` are pytrees (e.g. parameter dicts); ``matvec(v)`` returns ``A v`` with the
    structure of ``v``, e.g. a Hessian-vector product. Runs in a ``lax.while_loop``, so it is
    jittable and vmappable (under ``vmap`` every task iterates until the slowest stops), but not
    reverse-differentiable; differentiate through it with :func:`custom_root` instead.

    Args:
        matvec: ``v -> A v`` for a symmetric positive-definite ``A`` (CG needs both).
        b: the right-hand side (any pytree of float arrays).
        maxiter: at most this many iterations (a static int >= 1); ``None`` means the number of
            unknowns, after which CG has converged in exact arithmetic.
        tol: relative tolerance: stop once ``||r|| <= max(tol * ||b||, atol)``, where
            ``r = b - (A + damping I) x`` is the residual and ``||.||`` the Euclidean norm
            over all leaves. ``tol=0`` and ``atol=0`` run exactly ``maxiter`` iterations (or
            until the residual is exactly zero). In float32 a relative residual below about
            ``1e-6`` is seldom reachable, so ``maxiter`` bounds the work.
        atol: absolute tolerance on ``||r||`` (see ``tol``).
        damping: added to the diagonal of ``A`` (Tikhonov damping), ``>= 0``.
        x0: initial guess (default: zeros like ``b``).

    Returns:
        The approximate solution ``x``, with the structure of ``b``.

    Raises:
        ValueError: if ``maxiter``, ``tol``, ``atol`` or ``damping`` is invalid (names it).

    Examples:
        >>> import jax.numpy as jnp
        >>> a = jnp.array([[4.0, 1.0], [1.0, 3.0]])
        >>> x = conjugate_gradient(lambda v: {"u": a @ v["u"]}, {"u": jnp.array([1.0, 2.0])})
        >>> [round(float(v), 4) for v in x["u"]]
        [0.0909, 0.6364]
    """
    leaves = jax.tree.leaves(b)
    if not leaves:
        raise ValueError("`b` has no array leaves; expected a pytree of float arrays.")
    size = sum(int(np.size(leaf)) for leaf in leaves)
    if maxiter is None:
        maxiter = max(size, 1)
    if isinstance(maxiter, bool) or not isinstance(maxiter, int) or maxiter < 1:
        raise ValueError(f"`maxiter` must be a Python int >= 1 or None; got {maxiter!r}.")
    for name, value in (("tol", tol), ("atol", atol), ("damping", damping)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and value >= 0):
            raise ValueError(f"`{name}` must be a finite number >= 0; got {value!r}.")

    if damping:
        op = lambda v: _tree_axpy(jnp.asarray(damping), v, matvec(v))  # noqa: E731
    else:
        op = matvec
    x = jax.tree.map(jnp.zeros_like, b) if x0 is None else x0
    r = b if x0 is None else jax.tree.map(lambda u, w: u - w, b, op(x))
    rs = _tree_vdot(r, r)
    threshold = jnp.maximum(tol * jnp.sqrt(_tree_vdot(b, b)), atol)
    threshold_sq = (threshold * threshold).astype(rs.dtype)

    def cond(state):
        _, _, _, rs, k = state
        return (k < maxiter) & (rs > threshold_sq)

    def body(state):
        x, r, p, rs, k = state
        ap = op(p)
        alpha = _safe_div(rs, _tree_vdot(p, ap))
        x = _tree_axpy(alpha, p, x)
        r = _tree_axpy(-alpha, ap, r)
        rs_new = _tree_vdot(r, r)
        p = _tree_axpy(_safe_div(rs_new, rs), p, r)
        return x, r, p, rs_new, k + 1

    x, *_ = jax.lax.while_loop(cond, body, (x, r, r, rs, jnp.zeros((), jnp.int32)))
    return x


def _default_solve(matvec: MatVec, b: PyTree) -> PyTree:
    return conjugate_gradient(matvec, b)


def root_vjp(
    optimality_fn: Callable[..., PyTree],
    solution: PyTree,
    args: tuple,
    cotangent: PyTree,
    *,
    solve: LinearSolve | None = None,
    symmetric: bool = True,
) -> tuple:
    """Vector-Jacobian product of a root ``x*(args)`` of ``optimality_fn(x, *args) = 0``.

    With ``A = dF/dx`` and ``B = dF/dargs`` at ``(x*, args)``, the implicit function theorem gives
    ``dx*/dargs = -A^{-1} B``, so ``cotangent^T dx*/dargs = -(A^{-T} cotangent)^T B``: one linear
    solve ``A^T u = cotangent`` and one VJP of ``optimality_fn`` in ``args``.

    Args:
        optimality_fn: ``F(x, *args)``, returning a pytree with the structure of ``x``.
        solution: the root ``x*``.
        args: the tuple of other arguments of ``optimality_fn``.
        cotangent: the cotangent of ``x*`` (structure of ``x*``).
        solve: ``solve(matvec, b) -> u`` for the linear system ``matvec(u) = b``; default
            :func:`conjugate_gradient` with its default tolerance (``tol=1e-6``, at most as many
            iterations as unknowns).
        symmetric: whether ``dF/dx`` is symmetric (``F`` is the gradient of an objective in
            ``x``, so ``dF/dx`` is its Hessian). Then ``matvec`` is a forward-over-reverse
            Hessian-vector product from ``jax.linearize``; otherwise it is ``u -> A^T u`` from
            ``jax.vjp`` (and ``solve`` must handle a non-symmetric system; CG needs SPD).

    Returns:
        The cotangents of ``args``, a tuple with the structure of ``args`` (``float0`` zeros for
        integer leaves).

    Examples:
        >>> import jax.numpy as jnp
        >>> f = lambda x, t: 2.0 * x - t           # root x* = t / 2, so dx*/dt = 1/2
        >>> float(root_vjp(f, jnp.array(1.0), (jnp.array(2.0),), jnp.array(1.0))[0])
        0.5
    """
    solve = _default_solve if solve is None else solve
    args = tuple(args)
    f_x = lambda x: optimality_fn(x, *args)  # noqa: E731
    value, linear = (jax.linearize if symmetric else jax.vjp)(f_x, solution)
    if jax.tree.structure(value) != jax.tree.structure(solution):
        raise ValueError(
            "`optimality_fn(x, *args)` must return a pytree with the structure of `x`; got "
            f"{jax.tree.structure(value)}, expected {jax.tree.structure(solution)}.")
    matvec = linear if symmetric else (lambda u: linear(u)[0])
    u = solve(matvec, cotangent)
    neg_u = jax.tree.map(jnp.negative, u)
    _, vjp_args = jax.vjp(lambda *a: optimality_fn(solution, *a), *args)
    return tuple(vjp_args(neg_u))


def _zero_cotangent(x: Any) -> Any:
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, dtype=jax.dtypes.float0)


def custom_root(
    optimality_fn: Callable[..., PyTree],
    *,
    solve: LinearSolve | None = None,
    symmetric: bool = True,
    has_aux: bool = False,
) -> Callable[[Callable], Callable]:
    """Decorator: differentiate a root solver implicitly instead of through its iterations.

    ``solver(init, *args)`` must return ``x*`` (or ``(x*, aux)`` with ``has_aux``) such that
    ``optimality_fn(x*, *args) = 0``. The decorated function computes the same values, and its
    reverse-mode derivative in ``args`` comes from :func:`root_vjp` (one linear solve with
    ``dF/dx``) instead of from the solver, which runs outside of any differentiation. The
    derivative in ``init`` is zero (a root does not depend on where the search starts), and
    ``aux`` is not differentiated. For a minimiser of ``f(x, *args)``, use
    ``optimality_fn = jax.grad(f)`` (symmetric ``dF/dx``: the Hessian).

    Only reverse mode is defined (``jax.grad``/``jax.vjp``; a ``jax.custom_vjp``). ``args`` are
    passed positionally and must be pytrees of arrays; close over anything static.

    Args:
        optimality_fn: ``F(x, *args)``, zero at the solution, with the structure of ``x``.
        solve: ``solve(matvec, b) -> u`` solving ``matvec(u) = b``; default
            :func:`conjugate_gradient` (``tol=1e-6``, at most as many iterations as unknowns).
            Pass e.g. ``functools.partial(metajax.conjugate_gradient, maxiter=5, tol=0.0)`` for
            a fixed budget of Hessian-vector products.
        symmetric: whether ``dF/dx`` is symmetric (see :func:`root_vjp`).
        has_aux: whether ``solver`` returns ``(x*, aux)``.

    Returns:
        A decorator turning ``solver(init, *args)`` into a function with the same signature and
        outputs whose gradient is the implicit one.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> # x*(theta) = argmin (x - theta)^2 + x^2 = theta / 2, by gradient descent
        >>> grad_f = jax.grad(lambda x, theta: (x - theta) ** 2 + x ** 2)
        >>> @custom_root(grad_f)
        ... def solver(init, theta):
        ...     return jax.lax.fori_loop(0, 100, lambda i, x: x - 0.1 * grad_f(x, theta), init)
        >>> round(float(jax.grad(lambda t: solver(0.0, t) ** 2)(3.0)), 4)   # d(t^2/4)/dt
        1.5
    """
    if not callable(optimality_fn):
        raise TypeError(f"`optimality_fn` must be callable; got {type(optimality_fn).__name__}.")
    if solve is not None and not callable(solve):
        raise TypeError(f"`solve` must be callable solve(matvec, b); got {type(solve).__name__}.")

    def decorator(solver: Callable) -> Callable:
        def solution_of(out):
            if not has_aux:
                return out
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError("`solver` was declared with has_aux=True and must return "
                                f"(solution, aux); got {type(out).__name__}.")
            return out[0]

        @jax.custom_vjp
        def root(init, args):
            return solver(init, *args)

        def fwd(init, args):
            out = solver(init, *args)
            return out, (solution_of(out), args, init)

        def bwd(res, cotangent):
            solution, args, init = res
            ct = cotangent[0] if has_aux else cotangent
            ct_args = root_vjp(optimality_fn, solution, args, ct, solve=solve,
                               symmetric=symmetric)
            return jax.tree.map(_zero_cotangent, init), ct_args

        root.defvjp(fwd, bwd)

        @functools.wraps(solver)
        def wrapped(init, *args):
            return root(init, args)

        return wrapped

    return decorator
