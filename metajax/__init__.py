"""metajax: functional meta-learning in JAX."""

from metajax._src.heap import configure_heap as _configure_heap
from metajax._src.xla_flags import configure_cpu_fusions as _configure_cpu_fusions

_configure_cpu_fusions()  # before any computation initialises XLA; see metajax/_src/xla_flags.py
_configure_heap()  # per-call XLA buffers reused from the heap; see metajax/_src/heap.py

from metajax import data, losses, models, tasks
from metajax._src.adapt import adapt
from metajax._src.anil import anil
from metajax._src.cavia import cavia, cavia_adapt, cavia_evaluator
from metajax._src.evaluate import Summary, evaluate, make_evaluator, mean_ci95, summarize
from metajax._src.finetune import finetune_head, fit_head
from metajax._src.imaml import imaml
from metajax._src.implicit import conjugate_gradient, custom_root, root_vjp
from metajax._src.loop import make_multi_step
from metajax._src.maml import fomaml, maml, msl_weights
from metajax._src.matchingnet import matching_logits, matchingnet, matchingnet_loss
from metajax._src.metaoptnet import metaoptnet, metaoptnet_loss, svm_dual, svm_logits
from metajax._src.metasgd import metasgd
from metajax._src.metric import (
    evaluate_episodes,
    head_task_loss,
    make_episode_evaluator,
    metric_learner,
)
from metajax._src.processes import (
    init_process,
    local_value,
    mean_across,
    mean_over_task_shards,
    process_step,
    task_split,
    to_global,
    tree_pmean,
)
from metajax._src.protonet import protonet, protonet_loss, prototypical_logits
from metajax._src.r2d2 import r2d2, r2d2_head_init, r2d2_logits, r2d2_loss, ridge_weights
from metajax._src.reptile import reptile
from metajax._src.sharding import replicate, shard_tasks, task_mesh
from metajax._src.task_batching import per_task_weight_convs, task_vmap
from metajax._src.types import MetaLearner, MetaState, TaskBatch, num_tasks
from metajax._src.winograd_rewrite import with_winograd_convs

__version__ = "0.1.0"

__all__ = [
    "MetaLearner",
    "MetaState",
    "Summary",
    "TaskBatch",
    "adapt",
    "anil",
    "cavia",
    "cavia_adapt",
    "cavia_evaluator",
    "conjugate_gradient",
    "custom_root",
    "evaluate",
    "evaluate_episodes",
    "finetune_head",
    "fit_head",
    "fomaml",
    "head_task_loss",
    "imaml",
    "init_process",
    "local_value",
    "make_episode_evaluator",
    "make_evaluator",
    "make_multi_step",
    "per_task_weight_convs",
    "task_vmap",
    "to_global",
    "with_winograd_convs",
    "maml",
    "mean_across",
    "mean_over_task_shards",
    "tree_pmean",
    "matching_logits",
    "matchingnet",
    "matchingnet_loss",
    "mean_ci95",
    "metaoptnet",
    "metaoptnet_loss",
    "metasgd",
    "metric_learner",
    "msl_weights",
    "num_tasks",
    "process_step",
    "protonet",
    "protonet_loss",
    "prototypical_logits",
    "r2d2",
    "r2d2_head_init",
    "r2d2_logits",
    "r2d2_loss",
    "reptile",
    "ridge_weights",
    "root_vjp",
    "summarize",
    "svm_dual",
    "svm_logits",
    "replicate",
    "shard_tasks",
    "task_mesh",
    "task_split",
    "data",
    "losses",
    "models",
    "tasks",
]
