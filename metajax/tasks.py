"""Task families: jittable samplers ``sample(key, n_tasks, ...) -> TaskBatch``."""

from metajax._src.tasks.gaussian import gaussian_classes, mixing_matrix
from metajax._src.tasks.gp import GPKernel, eq_kernel, gp_curves, gp_posterior
from metajax._src.tasks.linear import linear_regression
from metajax._src.tasks.sinusoid import SinusoidParams, sinusoid, sinusoid_curve
from metajax._src.tasks.streams import SPLITS, split_key

__all__ = ["GPKernel", "SPLITS", "SinusoidParams", "eq_kernel", "gp_curves", "gp_posterior",
           "gaussian_classes", "linear_regression", "mixing_matrix",
           "sinusoid", "sinusoid_curve", "split_key"]
