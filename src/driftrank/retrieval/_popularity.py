"""Popularity: the first baseline and a retrieval channel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import numpy as np
import scipy.sparse as sp

from driftrank.data import Dataset
from driftrank.errors import ConfigError, NotFittedError
from driftrank.types import Ranking, topk


@dataclass(frozen=True)
class PopularityConfig:
    """``half_life_days``: if set, each event counts ``2^(-age/half_life)`` relative to the
    newest event of the data (recency-weighted popularity); ``None`` counts every event once."""

    half_life_days: float | None = None

    def __post_init__(self) -> None:
        if self.half_life_days is not None and not self.half_life_days > 0:
            raise ConfigError(f"half_life_days must be positive or None, got {self.half_life_days}")


class PopularityRanker:
    """Ranks items by how many interactions they have (optionally recency-weighted)."""

    def __init__(self, config: PopularityConfig | None = None) -> None:
        self.config = config or PopularityConfig()
        self.scores_: np.ndarray | None = None

    def fit(self, dataset: Dataset) -> Self:
        """Count (or decay-weight) each item's interactions."""
        if self.config.half_life_days is None:
            w = np.ones(dataset.n_interactions)
        else:
            age = dataset.timestamps.max() - dataset.timestamps
            w = np.exp2(-age / (self.config.half_life_days * 86400.0))
        self.scores_ = np.bincount(dataset.item_index, weights=w, minlength=dataset.n_items).astype(
            np.float32
        )
        return self

    def rank(
        self, users: np.ndarray, k: int, *, exclude: sp.csr_matrix | None = None, at: np.ndarray | None = None
    ) -> Ranking:
        """The most popular items each user has not seen; ties go to the lower item index."""
        if self.scores_ is None:
            raise NotFittedError("PopularityRanker.rank called before fit")
        users = np.asarray(users, dtype=np.int64)
        scores = np.broadcast_to(self.scores_, (len(users), len(self.scores_)))
        rows = exclude[users] if exclude is not None else None
        return topk(scores, k, rows)
