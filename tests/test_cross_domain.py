"""Cross-domain reports: the advantage over the best baseline and how much of it survives."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import pytest
from helpers import classification_tasks, linear_logits

import metajax
from metajax.experiment import (
    advantage_retained,
    cross_domain_report,
    evaluate_methods,
    format_retained,
)


def _table(**rows):
    """``name=(mean at step 0, mean at step 1)`` -> a results table with CI 0.02 everywhere."""
    return {name: {str(s): {"mean": m, "ci95": 0.02, "n": 100} for s, m in enumerate(means)}
            for name, means in rows.items()}


def test_advantage_against_the_best_baseline_of_each_domain():
    in_domain = _table(maml=(0.2, 0.9), pretrained=(0.2, 0.5), scratch=(0.2, 0.6))
    cross = _table(maml=(0.2, 0.5), pretrained=(0.2, 0.45), scratch=(0.2, 0.3))
    out = advantage_retained(in_domain, cross, method="maml", baselines=["pretrained", "scratch"])
    assert out["steps"] == "1"  # the most-adapted step count both tables have
    assert out["in_domain"]["best_baseline"] == "scratch"
    assert out["cross_domain"]["best_baseline"] == "pretrained"
    assert out["in_domain"]["advantage"] == pytest.approx(0.3)
    assert out["cross_domain"]["advantage"] == pytest.approx(0.05)
    assert out["retained"] == pytest.approx(0.05 / 0.3)
    assert out["in_domain"]["ci95"] == pytest.approx(math.sqrt(2) * 0.02)
    assert out["per_step"]["0"]["retained"] is None  # no advantage before adaptation
    assert out["per_step"]["1"]["retained"] == out["retained"]


def test_lower_is_better_for_losses_and_negative_retention():
    in_domain = _table(m=(1.0, 0.2), b=(1.0, 0.5))
    cross = _table(m=(1.0, 0.9), b=(1.0, 0.6))
    out = advantage_retained(in_domain, cross, method="m", baselines=["b"],
                             higher_is_better=False)
    assert out["in_domain"]["advantage"] == pytest.approx(0.3)
    assert out["cross_domain"]["advantage"] == pytest.approx(-0.3)
    assert out["retained"] == pytest.approx(-1.0)  # the method falls behind cross-domain


def test_only_shared_step_counts_are_compared():
    in_domain = _table(m=(0.1, 0.8, 0.9), b=(0.1, 0.5, 0.6))
    cross = _table(m=(0.1, 0.7), b=(0.1, 0.4))
    out = advantage_retained(in_domain, cross, method="m", baselines=["b"])
    assert set(out["per_step"]) == {"0", "1"} and out["steps"] == "1"


def test_a_baseline_with_one_column_is_compared_where_it_has_cells():
    """A head-fitting baseline (e.g. Chen et al.'s) reports only the most-adapted column."""
    one = lambda m: {"1": {"mean": m, "ci95": 0.02, "n": 100}}  # noqa: E731
    in_domain = {**_table(m=(0.2, 0.9), b=(0.2, 0.5)), "head": one(0.7)}
    cross = {**_table(m=(0.2, 0.5), b=(0.2, 0.2)), "head": one(0.45)}
    out = advantage_retained(in_domain, cross, method="m", baselines=["b", "head"])
    assert out["steps"] == "1" and out["baselines"] == ["b", "head"]
    assert out["in_domain"]["best_baseline"] == "head"
    assert out["in_domain"]["advantage"] == pytest.approx(0.2)
    assert out["cross_domain"]["advantage"] == pytest.approx(0.05)
    assert out["per_step"]["0"]["in_domain"]["best_baseline"] == "b"  # "head" has no step 0
    in_domain["head"] = {"0": in_domain["head"]["1"]}  # no column with every row any more
    cross["head"] = {"0": cross["head"]["1"]}
    out = advantage_retained(in_domain, cross, method="m", baselines=["b", "head"])
    assert out["steps"] == "0"
    in_domain["head"] = cross["head"] = {"5": cross["head"]["0"]}
    with pytest.raises(ValueError, match="share no step count"):
        advantage_retained(in_domain, cross, method="m", baselines=["b", "head"])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"method": "nope", "baselines": ["b"]}, r"`in_domain` has no row\(s\) \['nope'\]"),
    ({"method": "m", "baselines": ["c"]}, r"`cross_domain` has no row\(s\) \['c'\]"),
    ({"method": "m", "baselines": []}, "`baselines` must name at least one"),
])
def test_bad_rows_are_named(kwargs, match):
    in_domain = _table(m=(0.1,), b=(0.1,), c=(0.1,))
    with pytest.raises(ValueError, match=match):
        advantage_retained(in_domain, _table(m=(0.1,), b=(0.1,)), **kwargs)


def test_no_common_step_count():
    in_domain = {"m": {"3": {"mean": 1.0, "ci95": 0.0}}, "b": {"3": {"mean": 0.0, "ci95": 0.0}}}
    cross = {"m": {"1": {"mean": 1.0, "ci95": 0.0}}, "b": {"1": {"mean": 0.0, "ci95": 0.0}}}
    with pytest.raises(ValueError, match="share no step count"):
        advantage_retained(in_domain, cross, method="m", baselines=["b"])


def test_report_on_a_tiny_evaluation():
    """In-domain and cross-domain tables from evaluate_methods feed one report."""
    params, tasks = classification_tasks(seed=2, n_tasks=6)
    _, other = classification_tasks(seed=3, n_tasks=5)
    loss = metajax.losses.cross_entropy(linear_logits)
    methods = {"meta": params, "scratch": jax.tree.map(jnp.zeros_like, params)}
    lrs = {"meta": 0.5, "scratch": 0.1}
    in_domain = evaluate_methods(loss, methods, lrs, tasks, steps=(0, 2), has_aux=True)
    cross = evaluate_methods(loss, methods, lrs, other, steps=(0, 2), has_aux=True,
                             chunk_size=2)
    report = cross_domain_report({m: t["accuracy"] for m, t in in_domain.items()}, cross,
                                 metric="accuracy", method="meta", baselines=["scratch"],
                                 dataset={"name": "other"}, num_test_tasks=5)
    assert report["metric"] == "accuracy" and report["dataset"] == {"name": "other"}
    assert report["num_test_tasks"] == 5 and list(report["results"]) == ["meta", "scratch"]
    assert report["results"]["meta"]["2"]["n"] == 5
    assert report["all_metrics"]["meta"]["loss"]["2"]["n"] == 5
    adv = report["advantage"]
    assert adv["steps"] == "2" and adv["cross_domain"]["method"] == pytest.approx(
        report["results"]["meta"]["2"]["mean"])
    line = format_retained(report)
    assert line.startswith("meta - best baseline after 2 steps:") and "vs scratch" in line
