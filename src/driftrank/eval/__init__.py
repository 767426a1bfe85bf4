"""The evaluation protocol: leave-one-out splits, full-catalog ranking metrics, statistics."""

from driftrank.eval._metrics import coverage, metrics_at, target_ranks
from driftrank.eval._protocol import EvalResult, evaluate, rank_targets, write_predictions
from driftrank.eval._split import Split, Targets, kcore, leave_one_out, reindex
from driftrank.eval._stats import PairedComparison, bootstrap_ci, paired_bootstrap

__all__ = [
    "EvalResult",
    "PairedComparison",
    "Split",
    "Targets",
    "bootstrap_ci",
    "coverage",
    "evaluate",
    "kcore",
    "leave_one_out",
    "metrics_at",
    "paired_bootstrap",
    "rank_targets",
    "reindex",
    "target_ranks",
    "write_predictions",
]
