"""The base every retrieval channel derives from: serving, online events, the catalog, state."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Self, TypeAlias

import numpy as np
import scipy.sparse as sp

from driftrank.data import Dataset
from driftrank.errors import ConfigError, DataError, ModelFileError
from driftrank.retrieval._common import (
    STATE_VERSION,
    EventLog,
    check_events,
    check_n,
    check_state,
    check_users,
    config_from_dict,
    config_to_dict,
    empty_ranking,
    exclude_coordinates,
    need,
    not_fitted,
)
from driftrank.types import Ranking, topk

__all__ = ["Channel", "Exclude"]

Exclude: TypeAlias = sp.csr_matrix | Literal["seen"] | None
"""What to leave out: a CSR ``[n_users, n_items]`` (row = user index), ``"seen"`` (everything
the channel knows the user interacted with, fitted data and observed events alike) or ``None``."""


class Channel(ABC):
    """A retrieval channel: fitted on a :class:`~driftrank.data.Dataset`, it serves scored
    candidates for users, takes new events online and grows with the catalog.

    Every channel is both a :class:`~driftrank.types.CandidateGenerator` (``candidates``) and a
    :class:`~driftrank.types.Ranker` (``rank``, the same list over the whole catalog).
    Subclasses implement ``_fit``, ``_scores`` and the ``_observe``/``_state`` hooks.
    """

    config_type: ClassVar[type]

    def __init__(self, config: Any) -> None:
        if not isinstance(config, self.config_type):
            raise ConfigError(
                f"{type(self).__name__} takes a {self.config_type.__name__}, got {type(config).__name__}"
            )
        self.config: Any = config
        self._log: EventLog | None = None
        self._n_items = 0

    # ------------------------------------------------------------------ properties
    @property
    def name(self) -> str:
        """The channel's name: its score column in merged candidates (``config.name``)."""
        return str(self.config.name)

    @property
    def is_fitted(self) -> bool:
        """Whether ``fit`` (or ``from_state``) has run."""
        return self._log is not None

    @property
    def n_items(self) -> int:
        """Current catalog size (fitted items plus those added by :meth:`extend_items`)."""
        return self._n_items

    @property
    def n_users(self) -> int:
        """Number of user indices the channel holds state for (fitted plus observed)."""
        return self._events("n_users").n_users

    def history(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        """User ``user``'s known events, oldest first: ``int64[k]`` items, ``float64[k]`` unix s."""
        return self._events("history").user(int(user))

    def _events(self, what: str) -> EventLog:
        if self._log is None:
            raise not_fitted(type(self).__name__, what)
        return self._log

    # ------------------------------------------------------------------ training
    def fit(self, dataset: Dataset) -> Self:
        """Learn from ``dataset`` (from scratch: earlier state and observed events are dropped)."""
        if not isinstance(dataset, Dataset):
            raise DataError(f"fit takes a driftrank Dataset, got {type(dataset).__name__}")
        self._fit(dataset)
        self._log = EventLog.from_dataset(dataset)
        self._n_items = dataset.n_items
        return self

    @abstractmethod
    def _fit(self, dataset: Dataset) -> None: ...

    # ------------------------------------------------------------------ serving
    def candidates(
        self,
        users: np.ndarray,
        n: int,
        *,
        exclude: Exclude = None,
        at: np.ndarray | None = None,
    ) -> Ranking:
        """Up to ``n`` items per user with this channel's scores, best first.

        ``users: int[b]`` user indices; a user the channel has no events for gets an empty row
        (all ``-1``) unless the channel serves cold users (popularity does). ``exclude``: see
        :data:`Exclude`. ``at: float64[b]`` (request time, unix s) is accepted for the protocol;
        retrieval scores depend on the events seen so far, not on the clock.
        Returns ``Ranking(items int64[b, n], scores float32[b, n])`` padded with -1/NaN.
        """
        log = self._events("candidates")
        users = check_users(users)
        n = check_n(n, "n")
        if at is not None and np.shape(at) != users.shape:
            raise DataError(f"at must have one time per user ({len(users)}), got shape {np.shape(at)}")
        if len(users) == 0:
            return empty_ranking(0, n)
        scores = self._scores(users)
        if isinstance(exclude, str):
            if exclude != "seen":
                raise DataError(f"exclude must be a CSR matrix, 'seen' or None, got {exclude!r}")
            return topk(scores, n, log.seen(users))
        return topk(scores, n, exclude_coordinates(exclude, users, self._n_items))

    def score_rows(self, users: np.ndarray) -> np.ndarray:
        """``float32[b, n_items]``: the scores :meth:`candidates` ranks for ``users: int[b]``
        (NaN where the channel has nothing to say), before exclusions."""
        self._events("score_rows")
        return self._scores(check_users(users))

    def rank(
        self,
        users: np.ndarray,
        k: int,
        *,
        exclude: Exclude = None,
        at: np.ndarray | None = None,
    ) -> Ranking:
        """The top-``k`` of the whole catalog: :meth:`candidates` with ``n = k`` (Ranker protocol)."""
        return self.candidates(users, check_n(k, "k"), exclude=exclude, at=at)

    @abstractmethod
    def _scores(self, users: np.ndarray) -> np.ndarray:
        """``float32[b, n_items]`` scores; NaN where the channel has nothing to say."""

    # ------------------------------------------------------------------ online
    def observe(self, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray) -> None:
        """Take in new events ``(users[j], items[j], timestamps[j])`` without refitting.

        ``users: int64[m]`` (indices >= :attr:`n_users` are new users: the state grows),
        ``items: int64[m]`` (must be in the current catalog), ``timestamps: float64[m]`` unix s.
        Afterwards the users' candidates reflect these events. The inputs are not modified.
        """
        log = self._events("observe")
        u, i, t = check_events(users, items, timestamps, self._n_items)
        if len(u) == 0:
            return
        self._observe(log, u, i, t)
        log.add(u, i, t)

    @abstractmethod
    def _observe(self, log: EventLog, users: np.ndarray, items: np.ndarray, times: np.ndarray) -> None:
        """Update model state before the events join ``log`` (which still holds the old history)."""

    def extend_items(self, n_new: int) -> None:
        """The catalog grew by ``n_new`` items (indices ``n_items .. n_items + n_new - 1``).

        They have no collaborative signal yet: no score until events about them arrive (for the
        channels that learn online from events: co-visitation and popularity)."""
        self._events("extend_items")
        if isinstance(n_new, bool) or not isinstance(n_new, (int, np.integer)) or n_new < 0:
            raise DataError(f"n_new must be an integer >= 0, got {n_new!r}")
        self._n_items += int(n_new)
        self._extend_items(int(n_new))

    @abstractmethod
    def _extend_items(self, n_new: int) -> None:
        """Grow item-indexed state (the catalog size is already updated)."""

    # ------------------------------------------------------------------ persistence
    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(config, arrays)``: a JSON-able dict and named numpy arrays that
        :meth:`from_state` turns back into an identical channel (no pickle involved)."""
        log = self._events("get_state")
        meta, arrays = self._state()
        config = {
            "type": type(self).__name__,
            "version": STATE_VERSION,
            "config": config_to_dict(self.config),
            "n_items": self._n_items,
            **meta,
        }
        out = {f"log_{k}": v for k, v in log.to_arrays().items()}
        out.update(arrays)
        return config, out

    @classmethod
    def from_state(cls, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Self:
        """Rebuild a channel saved by :meth:`get_state`; :class:`ModelFileError` if it does not fit."""
        kind = cls.__name__
        check_state(config, kind)
        obj = cls(config_from_dict(cls.config_type, config.get("config", {})))
        log = EventLog(
            need(arrays, "log_indptr", kind), need(arrays, "log_items", kind), need(arrays, "log_times", kind)
        )
        n_items = config.get("n_items")
        if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 0:
            raise ModelFileError(f"{kind} state has an invalid n_items {n_items!r}")
        if len(log.items) != len(log.times) or (len(log.indptr) and log.indptr[-1] != len(log.items)):
            raise ModelFileError(f"{kind} state has an inconsistent event log")
        obj._log = log
        obj._n_items = n_items
        obj._load_state(config, arrays)
        return obj

    @abstractmethod
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Subclass scalars (JSON-able) and arrays beyond the config and the event log."""

    @abstractmethod
    def _load_state(self, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`_state` wrote."""

    def __repr__(self) -> str:
        status = f"users={self.n_users}, items={self._n_items}" if self.is_fitted else "unfitted"
        return f"{type(self).__name__}({self.name!r}, {status})"
