"""Popularity: the first baseline and a retrieval channel (the one that serves cold users)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from driftrank.data import Dataset
from driftrank.errors import ModelFileError
from driftrank.retrieval._base import Channel
from driftrank.retrieval._common import (
    SECONDS_PER_DAY,
    EventLog,
    check_name,
    check_positive,
    need,
    not_fitted,
)

__all__ = ["PopularityChannel", "PopularityConfig", "PopularityRanker"]

# Move the decay anchor forward once an event is this many half-lives past it (float64 safety).
_REANCHOR = 30.0


@dataclass(frozen=True)
class PopularityConfig:
    """``half_life_days``: if set, each event counts ``2^(-age/half_life)`` with its age relative
    to the newest event seen (recency-weighted popularity); ``None`` counts every event once.
    ``name``: the channel's name in merged candidates."""

    half_life_days: float | None = None
    name: str = "pop"

    def __post_init__(self) -> None:
        check_positive("half_life_days", self.half_life_days, allow_none=True)
        check_name(self.name)


class PopularityChannel(Channel):
    """Ranks items by their (optionally recency-weighted) number of interactions.

    Every user gets the same list (minus what ``exclude`` removes), including users the channel
    has never seen: this is the channel that answers for cold users. ``observe`` adds the new
    events' counts, so ``fit(D)`` then ``observe(E)`` scores like ``fit(D + E)`` (with the
    decay anchored at the newest event of both). Items without any event get no score.
    """

    config_type = PopularityConfig
    config: PopularityConfig

    def __init__(self, config: PopularityConfig | None = None) -> None:
        super().__init__(config or PopularityConfig())
        self._counts = np.zeros(0)  # decayed counts relative to self._anchor
        self._anchor = 0.0
        self._newest = -np.inf

    def _weights(self, times: np.ndarray) -> np.ndarray:
        h = self.config.half_life_days
        if h is None:
            return np.ones(len(times))
        return np.exp2((times - self._anchor) / (h * SECONDS_PER_DAY))

    def _fit(self, dataset: Dataset) -> None:
        ts = dataset.timestamps
        self._newest = float(ts.max()) if len(ts) else -np.inf
        self._anchor = self._newest if len(ts) else 0.0
        self._counts = np.bincount(
            dataset.item_index, weights=self._weights(ts), minlength=dataset.n_items
        ).astype(np.float64)

    @property
    def scores_(self) -> np.ndarray:
        """``float32[n_items]`` current popularity scores (decayed counts as of the newest event)."""
        if not self.is_fitted:
            raise not_fitted(type(self).__name__, "scores_")
        h = self.config.half_life_days
        scale = (
            1.0
            if h is None or not np.isfinite(self._newest)
            else float(np.exp2((self._anchor - self._newest) / (h * SECONDS_PER_DAY)))
        )
        return (self._counts * scale).astype(np.float32)

    def _scores(self, users: np.ndarray) -> np.ndarray:
        s = self.scores_
        s = np.where(self._counts > 0, s, np.nan).astype(np.float32)
        return np.broadcast_to(s, (len(users), len(s)))

    def _observe(self, log: EventLog, users: np.ndarray, items: np.ndarray, times: np.ndarray) -> None:
        h = self.config.half_life_days
        newest = float(times.max())
        if h is not None and (newest - self._anchor) / (h * SECONDS_PER_DAY) > _REANCHOR:
            self._counts *= float(np.exp2((self._anchor - newest) / (h * SECONDS_PER_DAY)))
            self._anchor = newest
        self._newest = max(self._newest, newest)
        np.add.at(self._counts, items, self._weights(times))

    def _extend_items(self, n_new: int) -> None:
        self._counts = np.concatenate([self._counts, np.zeros(n_new)])

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"anchor": self._anchor, "newest": self._newest if np.isfinite(self._newest) else None}, {
            "counts": self._counts
        }

    def _load_state(self, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        counts = need(arrays, "counts", type(self).__name__).astype(np.float64)
        if counts.shape != (self._n_items,):
            raise ModelFileError(
                f"PopularityChannel state has {counts.shape} counts for {self._n_items} items"
            )
        self._counts = counts.copy()
        self._anchor = float(config.get("anchor", 0.0))
        newest = config.get("newest")
        self._newest = -np.inf if newest is None else float(newest)


class PopularityRanker(PopularityChannel):
    """The popularity baseline as a :class:`~driftrank.types.Ranker` (``pop`` in the benchmark):
    the same model as :class:`PopularityChannel`, kept under its historical name."""
