"""Factories behind the registered pipeline names (imported only when a pipeline is built)."""

from __future__ import annotations

from typing import Any

from driftrank.errors import ConfigError
from driftrank.retrieval import PopularityConfig, PopularityRanker
from driftrank.types import Ranker


def _config(cls: type, params: dict[str, Any]) -> Any:
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from None


def popularity(params: dict[str, Any], seed: int) -> Ranker:
    """``pop``: most interacted items."""
    return PopularityRanker(_config(PopularityConfig, params))


def popularity_recent(params: dict[str, Any], seed: int) -> Ranker:
    """``pop-recent``: popularity with a 30-day half-life unless ``half_life_days`` is given."""
    return PopularityRanker(_config(PopularityConfig, {"half_life_days": 30.0, **params}))
