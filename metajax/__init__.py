"""metajax: functional meta-learning in JAX.

``import metajax`` changes nothing in the process: it sets no environment variable, touches no
allocator and loads no backend engine. The CPU tuning is the explicit call
:func:`metajax.cpu.configure`; several devices and CPU processes are :mod:`metajax.distributed`;
experiment drivers are :mod:`metajax.experiment` (each loaded on first use).
"""

import importlib as _importlib

from metajax import data, lopt, losses, models, rl, tasks
from metajax._src.algorithms.anil import anil
from metajax._src.algorithms.cavia import cavia, cavia_adapt, cavia_evaluator
from metajax._src.algorithms.imaml import imaml
from metajax._src.algorithms.maml import fomaml, maml, mamlpp
from metajax._src.algorithms.metasgd import metasgd
from metajax._src.algorithms.reptile import reptile
from metajax._src.amortized.evaluate import make_process_evaluator, predictive_metrics
from metajax._src.amortized.learner import neural_process
from metajax._src.amortized.objectives import conditional_nll, elbo, target_log_lik
from metajax._src.amortized.points import as_points, check_process_tasks
from metajax._src.core.adapt import (
    InnerUpdate,
    adapt,
    optax_update,
    per_parameter_rates,
    per_step_rates,
    scale_by_rates,
    scale_by_step_rates,
    sgd_update,
    with_aux,
)
from metajax._src.core.batching import (
    TaskBatching,
    default_batching,
    mean_over_tasks,
    vmap_batching,
)
from metajax._src.core.evaluate import Summary, evaluate, make_evaluator, mean_ci95, summarize
from metajax._src.core.implicit import conjugate_gradient, custom_root, root_vjp
from metajax._src.core.loop import make_multi_step
from metajax._src.core.outer import (
    GradientOrder,
    Partition,
    QueryObjective,
    apply_outer_update,
    final_query_loss,
    first_order,
    gradient_learner,
    gradient_order,
    gradient_step,
    init_state,
    mean_task_gradient,
    msl_weights,
    multi_step_loss,
    order_annealing,
    second_order,
    task_metrics,
    tree_pmean,
)
from metajax._src.core.types import (
    Adaptation,
    LearnedRates,
    MetaLearner,
    MetaState,
    Points,
    TaskBatch,
    adaptation_of,
    num_tasks,
)
from metajax._src.metric.finetune import finetune_head, fit_head
from metajax._src.metric.learner import (
    evaluate_episodes,
    head_task_loss,
    make_episode_evaluator,
    metric_learner,
)
from metajax._src.metric.matchingnet import matching_logits, matchingnet, matchingnet_loss
from metajax._src.metric.metaoptnet import metaoptnet, metaoptnet_loss, svm_dual, svm_logits
from metajax._src.metric.protomaml import protomaml, protomaml_loss, prototype_head
from metajax._src.metric.protonet import protonet, protonet_loss, prototypical_logits
from metajax._src.metric.r2d2 import r2d2, r2d2_head_init, r2d2_logits, r2d2_loss, ridge_weights

__version__ = "0.1.0"

_LAZY = ("cpu", "distributed", "experiment")


def __getattr__(name):
    """Loads :mod:`metajax.cpu`, :mod:`metajax.distributed` and :mod:`metajax.experiment` on
    first use, so that ``import metajax`` stays light and inert."""
    if name in _LAZY:
        return _importlib.import_module(f"metajax.{name}")
    raise AttributeError(f"module 'metajax' has no attribute {name!r}")


__all__ = [
    # core types
    "Adaptation",
    "LearnedRates",
    "MetaLearner",
    "MetaState",
    "Points",
    "TaskBatch",
    "adaptation_of",
    "num_tasks",
    # the inner loop and its update rules
    "InnerUpdate",
    "adapt",
    "optax_update",
    "per_parameter_rates",
    "per_step_rates",
    "scale_by_rates",
    "scale_by_step_rates",
    "sgd_update",
    "with_aux",
    # the outer loop's pieces
    "GradientOrder",
    "Partition",
    "QueryObjective",
    "apply_outer_update",
    "final_query_loss",
    "first_order",
    "gradient_learner",
    "gradient_order",
    "gradient_step",
    "init_state",
    "mean_task_gradient",
    "msl_weights",
    "multi_step_loss",
    "order_annealing",
    "second_order",
    "task_metrics",
    "tree_pmean",
    # task batching (the seam to backend engines)
    "TaskBatching",
    "default_batching",
    "mean_over_tasks",
    "vmap_batching",
    # optimisation-based algorithms
    "anil",
    "cavia",
    "cavia_adapt",
    "cavia_evaluator",
    "fomaml",
    "imaml",
    "maml",
    "mamlpp",
    "metasgd",
    "reptile",
    # metric-based algorithms and heads
    "evaluate_episodes",
    "finetune_head",
    "fit_head",
    "head_task_loss",
    "make_episode_evaluator",
    "matching_logits",
    "matchingnet",
    "matchingnet_loss",
    "metaoptnet",
    "metaoptnet_loss",
    "metric_learner",
    "protomaml",
    "protomaml_loss",
    "protonet",
    "protonet_loss",
    "prototype_head",
    "prototypical_logits",
    "r2d2",
    "r2d2_head_init",
    "r2d2_logits",
    "r2d2_loss",
    "ridge_weights",
    "svm_dual",
    "svm_logits",
    # amortised (black-box) meta-learners: neural processes
    "as_points",
    "check_process_tasks",
    "conditional_nll",
    "elbo",
    "make_process_evaluator",
    "neural_process",
    "predictive_metrics",
    "target_log_lik",
    # evaluation, loops, implicit differentiation
    "Summary",
    "conjugate_gradient",
    "custom_root",
    "evaluate",
    "make_evaluator",
    "make_multi_step",
    "mean_ci95",
    "root_vjp",
    "summarize",
    # namespaces
    "cpu",
    "data",
    "distributed",
    "experiment",
    "losses",
    "lopt",
    "models",
    "rl",
    "tasks",
]
