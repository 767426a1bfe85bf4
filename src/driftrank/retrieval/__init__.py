"""Candidate generation: collaborative filtering and other channels, merged."""

from driftrank.retrieval._popularity import PopularityConfig, PopularityRanker

__all__ = ["PopularityConfig", "PopularityRanker"]
