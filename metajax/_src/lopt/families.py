"""Training problems a learned optimizer is meta-trained on: families of small tasks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metajax._src.core.checks import check_int


class TaskFamily(NamedTuple):
    """A distribution over training problems, written for one task.

    Attributes:
        sample: ``sample(key) -> task``, one task (a pytree of arrays).
        init: ``init(key, task) -> params``, the learner's starting point on the task.
        loss: ``loss(params, task, key) -> scalar``, the training loss the optimizer sees
            (``key`` draws a mini-batch where the family has one).
        test_loss: ``test_loss(params, task) -> scalar`` on held-out data, or ``None``.
        optimum: ``optimum(task) -> scalar``, the minimum of the (full-batch) training loss in
            closed form, or ``None``.
    """

    sample: Callable[[jax.Array], Any]
    init: Callable[[jax.Array, Any], Any]
    loss: Callable[[Any, Any, jax.Array], jax.Array]
    test_loss: Callable[[Any, Any], jax.Array] | None = None
    optimum: Callable[[Any], jax.Array] | None = None


def linear_regression_family(*, dim: int = 10, n_points: int = 20, noise_std: float = 0.1,
                             x_scale: tuple[float, float] = (0.5, 2.0),
                             init_std: float = 0.01) -> TaskFamily:
    """Few-point linear regression, ``y = w . x + b + noise``, trained by full-batch MSE.

    Each task draws ``w ~ N(0, I)``, ``b ~ N(0, 1)``, per-feature input scales log-uniform in
    ``x_scale`` and ``x_j ~ N(0, scale_j^2)``; the learner's ``(w, b)`` starts at
    ``N(0, init_std^2)``. ``optimum`` is the least-squares residual.

    Examples:
        >>> import jax
        >>> fam = linear_regression_family(dim=3, n_points=8)
        >>> task = fam.sample(jax.random.PRNGKey(0))
        >>> params = fam.init(jax.random.PRNGKey(1), task)
        >>> bool(fam.loss(params, task, None) >= fam.optimum(task))
        True
    """
    dim, n_points = check_int("dim", dim, 1), check_int("n_points", n_points, 1)
    lo, hi = x_scale
    if not 0 < lo <= hi:
        raise ValueError(f"`x_scale` must be (low, high) with 0 < low <= high; got {x_scale!r}.")

    def sample(key):
        kw, kb, ks, kx, ke = jax.random.split(key, 5)
        w, b = jax.random.normal(kw, (dim,)), jax.random.normal(kb, ())
        scale = jnp.exp(jax.random.uniform(ks, (dim,), minval=np.log(lo), maxval=np.log(hi)))
        x = scale * jax.random.normal(kx, (n_points, dim))
        return {"x": x, "y": x @ w + b + noise_std * jax.random.normal(ke, (n_points,))}

    def init(key, task):
        del task
        kw, kb = jax.random.split(key)
        return {"w": init_std * jax.random.normal(kw, (dim,)),
                "b": init_std * jax.random.normal(kb, ())}

    def loss(params, task, key):
        del key
        return jnp.mean((task["x"] @ params["w"] + params["b"] - task["y"]) ** 2)

    def optimum(task):
        a = jnp.concatenate([task["x"], jnp.ones((n_points, 1))], axis=1)
        coef = jnp.linalg.lstsq(a, task["y"])[0]
        return jnp.mean((a @ coef - task["y"]) ** 2)

    return TaskFamily(sample, init, loss, None, optimum)


def quadratic_family(*, dim: int = 10, init_std: float = 1.0) -> TaskFamily:
    """Random quadratics ``f(theta) = ||W theta - y||^2`` (Andrychowicz et al. 2016, Sec. 3.1).

    ``W [dim, dim]`` and ``y [dim]`` are ``N(0, 1)``; ``theta`` starts at ``N(0, init_std^2)``.
    ``W`` is square (invertible almost surely), so the optimum is 0.

    Examples:
        >>> import jax
        >>> fam = quadratic_family(dim=4)
        >>> task = fam.sample(jax.random.PRNGKey(0))
        >>> float(fam.optimum(task))
        0.0
    """
    dim = check_int("dim", dim, 1)

    def sample(key):
        kw, ky = jax.random.split(key)
        return {"W": jax.random.normal(kw, (dim, dim)), "y": jax.random.normal(ky, (dim,))}

    def init(key, task):
        del task
        return init_std * jax.random.normal(key, (dim,))

    def loss(params, task, key):
        del key
        return jnp.sum((task["W"] @ params - task["y"]) ** 2)

    def optimum(task):
        del task
        return jnp.zeros([])

    return TaskFamily(sample, init, loss, None, optimum)


def mlp_classification_family(images: Any, labels: Any, *, test_images: Any = None,
                              test_labels: Any = None, hidden: Sequence[int] = (32,),
                              batch_size: int = 128) -> TaskFamily:
    """An MLP classifier trained on mini-batches of one dataset (digits, flattened Omniglot).

    A task is a fresh initialisation (``task = {"seed": key}``); ``loss`` is the mean
    cross-entropy of a mini-batch of ``batch_size`` drawn with its key; ``test_loss`` the mean
    cross-entropy on the test split, if given. Inputs are flattened.

    Args:
        images: ``[n, ...]`` training inputs.
        labels: ``[n]`` integer labels ``0 .. C-1``.
        test_images: held-out inputs for ``test_loss``.
        test_labels: their labels.
        hidden: widths of the ReLU layers.
        batch_size: mini-batch size.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> x, y = jnp.ones((10, 4)), jnp.arange(10) % 3
        >>> fam = mlp_classification_family(x, y, hidden=(5,), batch_size=4)
        >>> task = fam.sample(jax.random.PRNGKey(0))
        >>> round(float(fam.loss(fam.init(jax.random.PRNGKey(1), task), task,
        ...                      jax.random.PRNGKey(2))), 2) > 0
        True
    """
    x = jnp.asarray(images, jnp.float32).reshape(len(images), -1)
    y = jnp.asarray(labels, jnp.int32)
    if y.shape != (x.shape[0],):
        raise ValueError(f"`labels` must have shape ({x.shape[0]},) to match `images`; got "
                         f"{y.shape}.")
    batch_size = check_int("batch_size", batch_size, 1, x.shape[0])
    n_classes = int(np.max(np.asarray(labels))) + 1
    sizes = (x.shape[1], *(int(h) for h in hidden), n_classes)

    def sample(key):
        return {"seed": key}

    def init(key, task):
        del key  # the task is its initialisation
        keys = jax.random.split(task["seed"], len(sizes) - 1)
        return [{"w": jax.random.normal(k, (a, b)) * np.sqrt(2.0 / a), "b": jnp.zeros(b)}
                for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)]

    def logits(params, inputs):
        for i, layer in enumerate(params):
            inputs = inputs @ layer["w"] + layer["b"]
            if i < len(params) - 1:
                inputs = jax.nn.relu(inputs)
        return inputs

    def xent(params, inputs, targets):
        log_p = jax.nn.log_softmax(logits(params, inputs))
        return -jnp.mean(jnp.take_along_axis(log_p, targets[:, None], axis=1))

    def loss(params, task, key):
        del task
        idx = jax.random.choice(key, x.shape[0], (batch_size,), replace=False)
        return xent(params, x[idx], y[idx])

    test_loss = None
    if test_images is not None:
        tx = jnp.asarray(test_images, jnp.float32).reshape(len(test_images), -1)
        ty = jnp.asarray(test_labels, jnp.int32)

        def test_loss(params, task):
            del task
            return xent(params, tx, ty)

    return TaskFamily(sample, init, loss, test_loss, None)
