"""Tests for metajax.anil: head-only inner loop, meta-gradient, head selection, bad input."""

from __future__ import annotations

import gradient_zoo as zoo
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_all_close

import metajax

HEAD_ONLY_LR = {"b": 0.0, "v": 0.3, "w": 0.0}  # MAML's per-parameter rates equivalent to ANIL


def test_inner_loop_adapts_only_the_head(x64):
    params, tasks = zoo.params(5), zoo.tasks(5)
    learner = metajax.anil(zoo.loss, optax.sgd(1.0), inner_steps=2, inner_lr=0.3, head="v")
    _, metrics = jax.jit(learner.step)(learner.init(params), tasks)
    head_only, full = [], []
    for i in range(3):
        support, query = zoo.task(tasks, i)
        adapted = zoo.sgd(params, support, HEAD_ONLY_LR, 2)
        assert_trees_all_close({k: adapted[k] for k in "wb"}, {k: params[k] for k in "wb"},
                               rtol=0, atol=0)  # the body did not move
        head_only.append(float(zoo.loss(adapted, query)))
        full.append(float(zoo.loss(zoo.sgd(params, support, 0.3, 2), query)))
    np.testing.assert_allclose(float(metrics["loss"]), np.mean(head_only), rtol=1e-12)
    assert abs(np.mean(head_only) - np.mean(full)) > 1e-4  # differs from adapting everything


def test_meta_gradient_equals_maml_with_zero_body_rates(x64):
    params, tasks = zoo.params(6), zoo.tasks(6)
    anil = metajax.anil(zoo.loss, optax.sgd(1.0), inner_steps=2, inner_lr=0.3, head="v")
    maml = metajax.maml(zoo.loss, optax.sgd(1.0), inner_steps=2, inner_lr=HEAD_ONLY_LR)
    state = anil.init(params)
    a, a_metrics = jax.jit(anil.step)(state, tasks)
    m, m_metrics = jax.jit(maml.step)(state, tasks)
    assert_trees_all_close(zoo.applied_gradient(state, a), zoo.applied_gradient(state, m),
                           rtol=1e-10, atol=1e-13)
    assert_trees_all_close(a_metrics, m_metrics, rtol=1e-12, atol=1e-14)
    # The body is meta-learned: it gets a nonzero meta-gradient.
    assert float(jnp.abs(zoo.applied_gradient(state, a)["w"]).max()) > 1e-4


def test_inner_loop_computes_no_body_gradient():
    """ANIL's step has fewer matrix products than MAML's with zero body rates (same result)."""
    params, tasks = zoo.params(), zoo.tasks()

    def dots(learner):
        return str(jax.make_jaxpr(learner.step)(learner.init(params), tasks)).count("dot_general")

    anil = metajax.anil(zoo.loss, optax.sgd(1.0), inner_steps=3, inner_lr=0.3, head="v")
    maml = metajax.maml(zoo.loss, optax.sgd(1.0), inner_steps=3, inner_lr=HEAD_ONLY_LR)
    assert dots(anil) < dots(maml)


def test_head_as_mask_function_equals_head_as_key(x64):
    params, tasks = zoo.params(7), zoo.tasks(7)
    nested = {"body": {"w": params["w"], "b": params["b"]}, "head": {"v": params["v"]}}

    def nested_loss(p, batch):
        return zoo.loss({**p["body"], **p["head"]}, batch)

    def mask(p):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: jax.tree_util.keystr(path).startswith("['head']"), p)

    by_key = metajax.anil(nested_loss, optax.sgd(1.0), inner_steps=1, inner_lr=0.3, head="head")
    by_fn = metajax.anil(nested_loss, optax.sgd(1.0), inner_steps=1, inner_lr=0.3, head=mask)
    a, _ = jax.jit(by_key.step)(by_key.init(nested), tasks)
    b, _ = jax.jit(by_fn.step)(by_fn.init(nested), tasks)
    assert_trees_all_close(a.params, b.params, rtol=1e-6, atol=1e-7)
    assert not np.allclose(np.asarray(a.params["body"]["w"]), np.asarray(nested["body"]["w"]))
    start, lr, _ = by_key.adaptation(a.params)
    assert start is a.params
    assert lr == {"body": {"b": 0.0, "w": 0.0}, "head": {"v": 0.3}}


@pytest.mark.parametrize("head, error, match", [
    ("nope", ValueError, r"`head`='nope' is not a top-level key.*\['w', 'b', 'v'\]"),
    (lambda p: {"w": True}, ValueError, r"`head\(params\)` must return"),
    (lambda p: jax.tree.map(lambda _: False, p), ValueError, "selects no parameter"),
    (3, TypeError, "`head` must be"),
])
def test_bad_head_names_the_argument(head, error, match):
    with pytest.raises(error, match=match):
        metajax.anil(zoo.loss, optax.sgd(0.1), inner_steps=1, inner_lr=0.1,
                     head=head).init(zoo.params())


def test_bad_inner_lr():
    with pytest.raises(ValueError, match="`inner_lr`"):
        metajax.anil(zoo.loss, optax.sgd(0.1), inner_steps=1, inner_lr={"v": 0.1}, head="v")
