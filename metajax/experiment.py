"""Building blocks of experiments: training driver, baselines, comparison, cross-domain
evaluation, the shared sinusoid / few-shot / Omniglot runs, run outputs, plots."""

from metajax._src.experiment import plots
from metajax._src.experiment.baselines import adam_with_clipping, pretrain, select_lr
from metajax._src.experiment.checkpoint import Checkpointer, CheckpointError
from metajax._src.experiment.classifier_pretrain import (
    classifier_learner,
    minibatch_sampler,
    pretrain_classifier,
)
from metajax._src.experiment.comparison import (
    ComparisonResult,
    Pretraining,
    compare_with_baselines,
    evaluate_methods,
    format_table,
    run_pretraining,
)
from metajax._src.experiment.config import ConfigError
from metajax._src.experiment.cross_domain import (
    advantage_retained,
    cross_domain_report,
    format_retained,
)
from metajax._src.experiment.fewshot import (
    FewShotConfig,
    MetricComparison,
    compare_metric_learner,
    evaluate_metric_methods,
    mlp_embedding,
    run_fewshot,
)
from metajax._src.experiment.lopt_run import (
    LOptConfig,
    format_paired,
    paired_comparison,
    run_lopt,
    tune_baselines,
)
from metajax._src.experiment.omniglot_run import (
    OmniglotConfig,
    OmniglotGradientConfig,
    OmniglotMetricConfig,
    omniglot_classifier_pretraining,
    omniglot_conv4,
    omniglot_loss,
    omniglot_sampler,
    omniglot_splits,
    run_omniglot,
    run_omniglot_metric,
)
from metajax._src.experiment.process_run import (
    GPProcessConfig,
    HeldOut,
    ProcessConfig,
    ProcessProblem,
    gp_oracle_metrics,
    gp_predict,
    gp_problem,
    process_model,
    run_process,
    sample_in_chunks,
)
from metajax._src.experiment.run_io import RunWriter, read_records, write_json_atomic
from metajax._src.experiment.sinusoid_run import SinusoidConfig, run_sinusoid, sinusoid_mlp
from metajax._src.experiment.sweep import (
    SweepProblem,
    grid_combinations,
    sweep_table,
    vmapped_sweep,
)
from metajax._src.experiment.training import Interrupted, TrainResult, meta_train

__all__ = [
    "ConfigError",
    "GPProcessConfig",
    "LOptConfig",
    "format_paired",
    "paired_comparison",
    "run_lopt",
    "tune_baselines",
    "HeldOut",
    "ProcessConfig",
    "ProcessProblem",
    "gp_oracle_metrics",
    "gp_predict",
    "gp_problem",
    "process_model",
    "run_process",
    "sample_in_chunks",
    "CheckpointError",
    "Checkpointer",
    "ComparisonResult",
    "FewShotConfig",
    "Interrupted",
    "MetricComparison",
    "OmniglotConfig",
    "OmniglotGradientConfig",
    "OmniglotMetricConfig",
    "Pretraining",
    "RunWriter",
    "SinusoidConfig",
    "SweepProblem",
    "TrainResult",
    "adam_with_clipping",
    "advantage_retained",
    "classifier_learner",
    "compare_metric_learner",
    "compare_with_baselines",
    "cross_domain_report",
    "evaluate_methods",
    "evaluate_metric_methods",
    "format_retained",
    "format_table",
    "grid_combinations",
    "meta_train",
    "minibatch_sampler",
    "mlp_embedding",
    "omniglot_classifier_pretraining",
    "omniglot_conv4",
    "omniglot_loss",
    "omniglot_sampler",
    "omniglot_splits",
    "plots",
    "pretrain",
    "pretrain_classifier",
    "read_records",
    "run_fewshot",
    "run_omniglot",
    "run_omniglot_metric",
    "run_pretraining",
    "run_sinusoid",
    "select_lr",
    "sinusoid_mlp",
    "sweep_table",
    "vmapped_sweep",
    "write_json_atomic",
]
