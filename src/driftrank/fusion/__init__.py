"""Fusion: turn every candidate's signals (retrieval channels, re-ranker, interest similarity,
item and user features) into one score, with per-signal contributions.

Torch is imported only while fitting :class:`FusionModel`; scoring and loading run in numpy.
"""

from driftrank.fusion._ablation import ablation, fuser_from_state
from driftrank.fusion._baselines import LinearFusion, LinearFusionConfig, ReciprocalRankFusion, RRFConfig
from driftrank.fusion._features import FeatureBuilder, FeatureConfig
from driftrank.fusion._gated import FitReport, FusionConfig, FusionModel
from driftrank.fusion._input import (
    Contributions,
    Fuser,
    FusionInput,
    candidate_metrics,
    rank_candidates,
    target_positions,
)

__all__ = [
    "Contributions",
    "FeatureBuilder",
    "FeatureConfig",
    "FitReport",
    "Fuser",
    "FusionConfig",
    "FusionInput",
    "FusionModel",
    "LinearFusion",
    "LinearFusionConfig",
    "RRFConfig",
    "ReciprocalRankFusion",
    "ablation",
    "candidate_metrics",
    "fuser_from_state",
    "rank_candidates",
    "target_positions",
]
