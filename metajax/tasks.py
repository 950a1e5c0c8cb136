"""Task families: jittable samplers ``sample(key, n_tasks, ...) -> TaskBatch``."""

from metajax._src.tasks.linear import linear_regression
from metajax._src.tasks.sinusoid import SinusoidParams, sinusoid, sinusoid_curve
from metajax._src.tasks.streams import SPLITS, split_key

__all__ = ["SPLITS", "SinusoidParams", "linear_regression", "sinusoid", "sinusoid_curve",
           "split_key"]
