"""metajax: functional meta-learning in JAX."""

from metajax import losses, models, tasks
from metajax._src.adapt import adapt
from metajax._src.cavia import cavia, cavia_adapt, cavia_evaluator
from metajax._src.evaluate import Summary, evaluate, make_evaluator, mean_ci95, summarize
from metajax._src.imaml import imaml
from metajax._src.implicit import conjugate_gradient, custom_root, root_vjp
from metajax._src.loop import make_multi_step
from metajax._src.maml import maml
from metajax._src.sharding import replicate, shard_tasks, task_mesh
from metajax._src.types import MetaLearner, MetaState, TaskBatch, num_tasks

__version__ = "0.1.0"

__all__ = [
    "MetaLearner",
    "MetaState",
    "Summary",
    "TaskBatch",
    "adapt",
    "cavia",
    "cavia_adapt",
    "cavia_evaluator",
    "conjugate_gradient",
    "custom_root",
    "evaluate",
    "imaml",
    "make_evaluator",
    "make_multi_step",
    "maml",
    "mean_ci95",
    "num_tasks",
    "root_vjp",
    "summarize",
    "replicate",
    "shard_tasks",
    "task_mesh",
    "losses",
    "models",
    "tasks",
]
