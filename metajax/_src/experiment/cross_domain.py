"""Cross-domain evaluation: how much of a meta-learner's in-domain advantage survives a new domain.

A meta-learner and its baselines are evaluated on held-out tasks of the training domain
(in-domain) and on tasks of another domain (cross-domain, e.g. digits after Omniglot). The
*advantage* of the method is its metric minus the best baseline's, per number of adaptation
steps; the *retained* share is the cross-domain advantage divided by the in-domain one (1: all
of it survives, 0: none, negative: the method falls behind the baselines).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _step_keys(table: dict) -> list[str]:
    return [str(k) for k in table]


def _advantage(results: dict, *, method: str, baselines: Sequence[str], step: str,
               higher_is_better: bool) -> dict:
    sign = 1.0 if higher_is_better else -1.0
    cells = {b: results[b][step] for b in baselines}
    best = max(cells, key=lambda b: sign * cells[b]["mean"])
    own = results[method][step]
    return {"advantage": sign * (own["mean"] - cells[best]["mean"]),
            # Unpaired (conservative): the methods share their tasks, so a paired CI is tighter.
            "ci95": math.sqrt(own["ci95"] ** 2 + cells[best]["ci95"] ** 2),
            "method": own["mean"], "best_baseline": best,
            "best_baseline_value": cells[best]["mean"]}


def advantage_retained(
    in_domain: dict,
    cross_domain: dict,
    *,
    method: str,
    baselines: Sequence[str],
    higher_is_better: bool = True,
) -> dict:
    """The method's advantage over its best baseline, in-domain and cross-domain, per step count.

    Args:
        in_domain: ``{row: {steps: {"mean", "ci95", ...}}}`` on in-domain test tasks (e.g.
            ``summary["results"]`` of :func:`metajax.experiment.compare_with_baselines`).
        cross_domain: the same table on the other domain's tasks.
        method: the meta-learner's row.
        baselines: the rows it is compared with; at each step count the best of them (on that
            domain) is the reference.
        higher_is_better: whether a larger metric is better (accuracy); for a loss, the
            advantage is the baseline's loss minus the method's.

    Returns:
        ``{"method", "baselines", "per_step": {steps: {"in_domain": adv, "cross_domain": adv,
        "retained": ratio}}, "steps", "in_domain", "cross_domain", "retained"}``, where each
        ``adv`` is ``{"advantage", "ci95", "method", "best_baseline",
        "best_baseline_value"}`` (``ci95`` of the difference, unpaired and so conservative)
        and ``retained`` is the cross-domain advantage over the in-domain one (``None`` when
        there is no in-domain advantage to retain). The top-level ``steps``, ``in_domain``,
        ``cross_domain`` and ``retained`` repeat the entry of the largest step count the two
        tables share (the most-adapted comparison).

    Raises:
        ValueError: a row missing from a table, no baseline, or no step count in common.

    Examples:
        >>> row = lambda m: {"1": {"mean": m, "ci95": 0.01}}
        >>> out = advantage_retained({"maml": row(0.9), "scratch": row(0.5)},
        ...                          {"maml": row(0.6), "scratch": row(0.4)},
        ...                          method="maml", baselines=("scratch",))
        >>> round(out["in_domain"]["advantage"], 3), round(out["retained"], 3)
        (0.4, 0.5)
    """
    baselines = list(baselines)
    if not baselines:
        raise ValueError("`baselines` must name at least one baseline row.")
    for name, table in (("in_domain", in_domain), ("cross_domain", cross_domain)):
        missing = [r for r in (method, *baselines) if r not in table]
        if missing:
            raise ValueError(f"`{name}` has no row(s) {missing}; it has {list(table)}.")
    def present(s):  # the baselines with a cell at step count s in both tables
        return [b for b in baselines if s in in_domain[b] and s in cross_domain[b]]

    shared = [s for s in _step_keys(in_domain[method]) if s in _step_keys(cross_domain[method])]
    common = [s for s in shared if len(present(s)) == len(baselines)]
    if not common:
        raise ValueError("`in_domain` and `cross_domain` share no step count for "
                         f"{method!r} and {baselines}.")
    per_step = {}
    for step in [s for s in shared if present(s)]:
        options = {"method": method, "baselines": present(step), "step": step,
                   "higher_is_better": higher_is_better}
        a_in = _advantage(in_domain, **options)
        a_cross = _advantage(cross_domain, **options)
        retained = (a_cross["advantage"] / a_in["advantage"] if a_in["advantage"] > 0
                    else None)
        per_step[step] = {"in_domain": a_in, "cross_domain": a_cross, "retained": retained}
    headline = max(common, key=lambda s: float(s) if s.replace(".", "", 1).isdigit() else -1)
    return {"method": method, "baselines": baselines, "per_step": per_step, "steps": headline,
            **per_step[headline]}


def cross_domain_report(
    in_domain_results: dict,
    cross_domain_metrics: dict,
    *,
    metric: str,
    method: str,
    baselines: Sequence[str],
    higher_is_better: bool = True,
    **info,
) -> dict:
    """The ``cross_domain`` entry of a run's summary.

    Args:
        in_domain_results: ``summary["results"]`` of the in-domain comparison.
        cross_domain_metrics: ``{row: {metric: {steps: {"mean", "ci95", "n"}}}}`` on the
            other domain (e.g. from :func:`metajax.experiment.evaluate_methods`).
        metric: the metric compared (the in-domain one).
        method: the meta-learner's row.
        baselines: the baseline rows of the advantage.
        higher_is_better: whether a larger ``metric`` is better.
        **info: more entries (e.g. ``dataset``, ``episode``).

    Returns:
        ``{"metric", "results", "all_metrics", "advantage", **info}`` where ``results`` is
        ``{row: {steps: cell}}`` of ``metric`` and ``advantage`` is
        :func:`advantage_retained`.
    """
    results = {row: table[metric] for row, table in cross_domain_metrics.items()}
    advantage = advantage_retained(in_domain_results, results, method=method,
                                   baselines=baselines, higher_is_better=higher_is_better)
    return {"metric": metric, **info, "results": results, "all_metrics": cross_domain_metrics,
            "advantage": advantage}


def format_retained(report: dict) -> str:
    """One line about the advantage retained, e.g. for the command line's output.

    Examples:
        >>> row = lambda m: {"3": {"mean": m, "ci95": 0.01}}
        >>> rep = cross_domain_report({"maml": row(0.9), "scratch": row(0.5)},
        ...                           {"maml": {"accuracy": row(0.6)},
        ...                            "scratch": {"accuracy": row(0.4)}},
        ...                           metric="accuracy", method="maml", baselines=["scratch"])
        >>> print(format_retained(rep))  # doctest: +NORMALIZE_WHITESPACE
        maml - best baseline after 3 steps: +0.400 in-domain (vs scratch), +0.200
        cross-domain (vs scratch): 50% of the advantage retained
    """
    adv = report["advantage"]
    a_in, a_cross = adv["in_domain"], adv["cross_domain"]
    kept = ("no in-domain advantage to retain" if adv["retained"] is None
            else f"{100 * adv['retained']:.0f}% of the advantage retained")
    return (f"{adv['method']} - best baseline after {adv['steps']} steps: "
            f"{a_in['advantage']:+.3f} in-domain (vs {a_in['best_baseline']}), "
            f"{a_cross['advantage']:+.3f} cross-domain (vs {a_cross['best_baseline']}): {kept}")
