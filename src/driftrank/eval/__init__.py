"""The evaluation protocol: leave-one-out and cold-start splits, full-catalog ranking metrics, statistics."""

from driftrank.eval._coldstart import ColdStartSplit, NewUsers, cold_start_split
from driftrank.eval._metrics import coverage, metrics_at, target_ranks
from driftrank.eval._protocol import EvalResult, evaluate, rank_targets, write_predictions
from driftrank.eval._split import Split, Targets, kcore, leave_one_out, reindex
from driftrank.eval._stats import PairedComparison, bootstrap_ci, paired_bootstrap

__all__ = [
    "ColdStartSplit",
    "EvalResult",
    "NewUsers",
    "PairedComparison",
    "Split",
    "Targets",
    "bootstrap_ci",
    "cold_start_split",
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
