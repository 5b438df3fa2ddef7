"""Does the regenerated data help? The downstream protocol (METHOD.md §4).

For one target domain T and leave-N-out holdout N:

- test points: each user's last N positions whose item is a T item, history = the
  items before it filtered to T (at least one); valid points likewise on the N
  positions before those. Train < valid < test in time for every user (protocol.py).
- training sets, all built from each user's *training part* s[:len-2N] only
  (variants.py lists them).
- every variant is evaluated on the same points, so comparisons are paired per point
  (run.py trains them; statistics.py gives the CIs and paired bootstraps).
- export.py writes the same training sets and points as RecBole datasets.
"""

from models.evaluation.export import export_recbole
from models.evaluation.protocol import DomainSplit, EvalConfig, check_bundle, domain_split
from models.evaluation.run import Evaluation, Finished, Plan, plan_evaluation, run_evaluation
from models.evaluation.statistics import (
    METRICS,
    decision_breakdown,
    mean_ci,
    paired_bootstrap,
    point_metric,
    summarize_results,
    target_data_stats,
)
from models.evaluation.variants import ABLATIONS, VARIANTS, TrainingSet, build_training_sets

__all__ = [
    "ABLATIONS",
    "METRICS",
    "VARIANTS",
    "DomainSplit",
    "EvalConfig",
    "Evaluation",
    "Finished",
    "Plan",
    "TrainingSet",
    "build_training_sets",
    "check_bundle",
    "decision_breakdown",
    "domain_split",
    "export_recbole",
    "mean_ci",
    "paired_bootstrap",
    "plan_evaluation",
    "point_metric",
    "run_evaluation",
    "summarize_results",
    "target_data_stats",
]
