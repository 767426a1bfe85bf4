"""What a chronological replay drives: models that rank, then learn from the events they see."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, Self, runtime_checkable

import numpy as np
import scipy.sparse as sp

from driftrank.data import Dataset
from driftrank.errors import ConfigError
from driftrank.types import Ranker, Ranking

__all__ = ["Configuration", "OnlineRanker", "StaticOnline"]


@runtime_checkable
class OnlineRanker(Protocol):
    """A :class:`~driftrank.types.Ranker` that can also take in new events between refits.

    The replay calls ``fit`` on the past, then for each step ``rank`` (for events it has not
    seen yet) followed by ``observe`` (those same events, now in the past).
    """

    def fit(self, dataset: Dataset) -> Self:
        """Learn from ``dataset`` from scratch; returns ``self``."""
        ...

    def rank(
        self,
        users: np.ndarray,
        k: int,
        *,
        exclude: sp.csr_matrix | None = None,
        at: np.ndarray | None = None,
    ) -> Ranking:
        """Top-``k`` items for ``users: int64[n]`` at times ``at: float64[n]`` (unix s).

        ``exclude`` is CSR ``[n_users_total, n_items]`` (row = user index) of items that must
        not be returned.
        """
        ...

    def observe(self, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray) -> None:
        """Take in events ``(users[j], items[j], timestamps[j])`` (``int64[m]``, ``int64[m]``,
        ``float64[m]``, oldest first) that happened after what the model has seen so far."""
        ...


@dataclass(frozen=True)
class Configuration:
    """A named recipe for a fresh :class:`OnlineRanker`.

    ``factory(seed)`` must return a new, unfitted model each call (the replay builds one per
    side, and one per re-run); models that draw random numbers should derive them from ``seed``
    so that a replay is reproducible.
    """

    name: str
    factory: Callable[[int], OnlineRanker]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"a configuration needs a non-empty name, got {self.name!r}")
        if not callable(self.factory):
            raise ConfigError(f"configuration {self.name!r}: factory must be callable, got {self.factory!r}")

    def build(self, seed: int) -> OnlineRanker:
        """A fresh model from the factory, checked against the :class:`OnlineRanker` protocol."""
        model = self.factory(seed)
        if not isinstance(model, OnlineRanker):
            raise ConfigError(
                f"configuration {self.name!r}: factory returned {type(model).__name__}, which lacks "
                "fit/rank/observe (wrap a plain Ranker in StaticOnline)"
            )
        return model


class StaticOnline:
    """Wraps any :class:`~driftrank.types.Ranker` as an :class:`OnlineRanker` whose ``observe``
    does nothing: the model learns about new events only when the replay refits it
    (``refit_every``). This is the "retrain nightly" deployment most systems start with."""

    def __init__(self, ranker: Ranker) -> None:
        if not isinstance(ranker, Ranker):
            raise ConfigError(f"StaticOnline wraps a Ranker (fit + rank), got {type(ranker).__name__}")
        self.ranker = ranker

    def fit(self, dataset: Dataset) -> Self:
        """Fit the wrapped ranker."""
        self.ranker.fit(dataset)
        return self

    def rank(
        self, users: np.ndarray, k: int, *, exclude: sp.csr_matrix | None = None, at: np.ndarray | None = None
    ) -> Ranking:
        """Delegate to the wrapped ranker."""
        return self.ranker.rank(users, k, exclude=exclude, at=at)

    def observe(self, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray) -> None:
        """Ignore the events (they reach the model at the next refit)."""
