"""Sequence data for the torch sequence models: stored histories, padded windows, holdouts.

Everything here is numpy (no torch), so it can be tested and reused without the models. Times
stay ``float64`` unix seconds until they are made relative to a per-row reference time
(:func:`relative_days`): float32 cannot hold unix seconds to better than ~2 minutes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import scipy.sparse as sp

from driftrank.data import Dataset
from driftrank.errors import DataError, NotFittedError
from driftrank.eval import Targets
from driftrank.types import Candidates, Ranking, insert_events

if TYPE_CHECKING:
    from driftrank.rerank._train import FitReport

__all__ = [
    "SECONDS_PER_DAY",
    "CandidateSource",
    "FittedSequenceModel",
    "Histories",
    "Windows",
    "candidate_pool",
    "carve_last",
    "check_at",
    "check_k",
    "check_users",
    "exclude_rows",
    "history_pairs",
    "relative_days",
    "training_windows",
]

SECONDS_PER_DAY = 86400.0

#: What ``fit(..., candidates=...)`` accepts: precomputed candidates, or a function mapping user
#: indices ``int64[n]`` to candidates (``Candidates`` or a ``Ranking`` whose rows follow ``users``).
CandidateSource = Candidates | Ranking | Callable[[np.ndarray], Candidates | Ranking]


NetT = TypeVar("NetT")


class FittedSequenceModel(Generic[NetT]):
    """The fitted state both torch sequence models keep: the net, the stored histories and the
    fit report, with accessors that raise :class:`NotFittedError` before ``fit``."""

    _display_name = "model"

    def __init__(self) -> None:
        self.net_: NetT | None = None
        self.histories_: Histories | None = None
        self.fit_report_: FitReport | None = None

    def _net(self) -> NetT:
        if self.net_ is None:
            raise NotFittedError(f"{self._display_name} is not fitted: call fit() first")
        return self.net_

    def _histories(self) -> Histories:
        if self.histories_ is None:
            raise NotFittedError(f"{self._display_name} is not fitted: call fit() first")
        return self.histories_

    def _restore(self, net: NetT, histories: Histories, report: dict[str, Any] | None) -> None:
        """Set the state read back by ``from_state`` (``report``: ``FitReport.to_dict()`` or None)."""
        from driftrank.rerank._train import FitReport

        self.net_ = net
        self.histories_ = histories
        self.fit_report_ = None if report is None else FitReport.from_dict(report)


@dataclass(frozen=True)
class Windows:
    """Left-padded history windows of a batch of users.

    ``items: int64[n, L]`` item indices, oldest first, ``-1`` on the left where a history is
    shorter than ``L``; ``times: float64[n, L]`` unix seconds (0 at padding); ``lengths:
    int64[n]`` number of real events per row.
    """

    items: np.ndarray
    times: np.ndarray
    lengths: np.ndarray


@dataclass(frozen=True)
class Histories:
    """Every user's events in time order (CSR layout), as a sequence model stores them.

    ``indptr: int64[n_users + 1]``, ``items: int64[n]``, ``timestamps: float64[n]`` (unix
    seconds); events of one user are sorted by time, ties kept in arrival order. Immutable:
    :meth:`append` returns a new object.
    """

    indptr: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> Histories:
        """The sequences of ``dataset`` (copied, so later edits cannot alias the data set)."""
        seq = dataset.sequences
        return cls(
            np.array(seq.indptr, dtype=np.int64),
            np.array(seq.items, dtype=np.int64),
            np.array(seq.timestamps, dtype=np.float64),
        )

    @property
    def n_users(self) -> int:
        """Number of users with a (possibly empty) history slot."""
        return len(self.indptr) - 1

    def lengths(self) -> np.ndarray:
        """``int64[n_users]`` events per user."""
        return np.diff(self.indptr)

    def user(self, u: int) -> tuple[np.ndarray, np.ndarray]:
        """Items and timestamps of user ``u`` (empty for users beyond :attr:`n_users`)."""
        if u >= self.n_users:
            return self.items[:0], self.timestamps[:0]
        lo, hi = self.indptr[u], self.indptr[u + 1]
        return self.items[lo:hi], self.timestamps[lo:hi]

    def append(self, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray) -> Histories:
        """A new store with the events ``(users[j], items[j], timestamps[j])`` added.

        User indices beyond :attr:`n_users` grow the store (users in between get empty
        histories). An appended event that ties in time with a stored one goes after it.
        """
        return Histories(*insert_events(self.indptr, self.items, self.timestamps, users, items, timestamps))

    def windows(self, users: np.ndarray, at: np.ndarray | None, max_len: int) -> Windows:
        """The last ``max_len`` events of each user at or before ``at`` (all events if ``None``).

        Events later than ``at`` are left out, so a request for a past time sees exactly what
        was known then. Users beyond :attr:`n_users` get an empty window.
        """
        n = len(users)
        out_items = np.full((n, max_len), -1, dtype=np.int64)
        out_times = np.zeros((n, max_len), dtype=np.float64)
        lengths = np.zeros(n, dtype=np.int64)
        for r, u in enumerate(users):
            if u >= self.n_users:
                continue
            lo, hi = int(self.indptr[u]), int(self.indptr[u + 1])
            if at is not None:
                hi = lo + int(np.searchsorted(self.timestamps[lo:hi], at[r], side="right"))
            lo = max(lo, hi - max_len)
            m = hi - lo
            if m:
                out_items[r, max_len - m :] = self.items[lo:hi]
                out_times[r, max_len - m :] = self.timestamps[lo:hi]
            lengths[r] = m
        return Windows(out_items, out_times, lengths)

    def to_arrays(self, prefix: str = "history.") -> dict[str, np.ndarray]:
        """Copies of the three arrays, named ``<prefix>indptr|items|timestamps`` (for model files)."""
        return {
            f"{prefix}indptr": self.indptr.copy(),
            f"{prefix}items": self.items.copy(),
            f"{prefix}timestamps": self.timestamps.copy(),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str = "history.") -> Histories:
        """Inverse of :meth:`to_arrays` (``KeyError`` when an array is missing)."""
        return cls(
            np.asarray(arrays[f"{prefix}indptr"], dtype=np.int64),
            np.asarray(arrays[f"{prefix}items"], dtype=np.int64),
            np.asarray(arrays[f"{prefix}timestamps"], dtype=np.float64),
        )

    def popularity(self, n_items: int) -> np.ndarray:
        """``float32[n_items]`` cold-start scores: ``log1p`` of each item's count in the store."""
        return np.log1p(np.bincount(self.items, minlength=n_items)[:n_items]).astype(np.float32)

    def seen(self, n_items: int) -> sp.csr_matrix:
        """Binary CSR ``[n_users, n_items]`` of the stored (user, item) pairs."""
        data = np.ones(len(self.items), dtype=np.float32)
        m = sp.csr_matrix((data, self.items, self.indptr), shape=(self.n_users, n_items))
        m.sum_duplicates()
        m.data[:] = 1.0
        return m


def training_windows(
    histories: Histories, max_len: int, stride: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training windows of ``max_len + 1`` events (inputs ``[:-1]``, next-item targets ``[1:]``).

    Each user with at least two events gives the window ending at their last event; with a
    ``stride``, also windows ending ``stride``, ``2*stride``, ... events earlier (while at least
    two events remain), so long histories are not cut to their tail. ``stride = max_len`` makes
    every event a target exactly once. Returns ``items: int64[N, max_len+1]`` (left-padded with
    -1), ``times: float64[N, max_len+1]`` and ``users: int64[N]``.
    """
    width = max_len + 1
    rows_u: list[int] = []
    rows_lo: list[int] = []
    rows_hi: list[int] = []
    lengths = histories.lengths()
    for u in np.flatnonzero(lengths >= 2):
        start, end = int(histories.indptr[u]), int(histories.indptr[u + 1])
        hi = end
        while hi - start >= 2:
            rows_u.append(int(u))
            rows_lo.append(max(start, hi - width))
            rows_hi.append(hi)
            if stride is None:
                break
            hi -= stride
    n = len(rows_u)
    items = np.full((n, width), -1, dtype=np.int64)
    times = np.zeros((n, width), dtype=np.float64)
    for r, (lo, hi) in enumerate(zip(rows_lo, rows_hi)):
        m = hi - lo
        items[r, width - m :] = histories.items[lo:hi]
        times[r, width - m :] = histories.timestamps[lo:hi]
    return items, times, np.asarray(rows_u, dtype=np.int64)


def relative_days(times: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``(times - reference[:, None]) / 86400`` as float32 (days, ≤ 0 for past events).

    ``times: float64[n, L]`` unix seconds, ``reference: float64[n]``. Differences are taken in
    float64 first so the result keeps sub-second precision for spans of years.
    """
    return ((times - reference[:, None]) / SECONDS_PER_DAY).astype(np.float32)


def carve_last(dataset: Dataset) -> tuple[Dataset, Targets]:
    """Hold out each user's last event (users with at least 3 events) as a validation target.

    Returns the remaining data and the held-out targets; used for early stopping when ``fit``
    is given no validation targets. Applied to ``split.train_valid`` this recovers exactly the
    leave-one-out ``(split.train, split.validation)`` pair, so no test information is used.
    """
    indptr = dataset.sequences.indptr
    lengths = np.diff(indptr)
    rows = (indptr[1:] - 1)[lengths >= 3]
    mask = np.ones(dataset.n_interactions, dtype=bool)
    mask[rows] = False
    targets = Targets(
        dataset.user_index[rows].astype(np.int64),
        dataset.item_index[rows].astype(np.int64),
        dataset.timestamps[rows].astype(np.float64),
    )
    return dataset.filter_rows(mask, name=f"{dataset.name}/fit"), targets


def candidate_pool(source: CandidateSource, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Hard-negative pools per user as CSR ``(indptr int64[n_users+1], items int64[m])``.

    ``source`` is a :class:`Candidates` batch (users it does not mention get an empty pool), a
    :class:`Ranking` whose row ``u`` belongs to user ``u``, or a callable that maps user indices
    to either. Padding (-1) is dropped; an item index outside the catalog raises
    :class:`DataError`.
    """
    if callable(source) and not isinstance(source, (Candidates, Ranking)):
        users = np.arange(n_users, dtype=np.int64)
        parts = [
            _pool_rows(source(users[s : s + 1024]), users[s : s + 1024]) for s in range(0, n_users, 1024)
        ]
        per_user = [row for part in parts for row in part]
    elif isinstance(source, Ranking):
        if source.items.shape[0] != n_users:
            raise DataError(
                f"candidates given as a Ranking must have one row per user ({n_users}), "
                f"got {source.items.shape[0]}"
            )
        per_user = _pool_rows(source, np.arange(n_users, dtype=np.int64))
    elif isinstance(source, Candidates):
        per_user = [np.zeros(0, dtype=np.int64)] * n_users
        for j, u in enumerate(np.asarray(source.users, dtype=np.int64)):
            if not 0 <= u < n_users:
                raise DataError(f"candidates mention user index {u}, outside [0, {n_users})")
            per_user[u] = np.asarray(source.items[source.of(j)], dtype=np.int64)
    else:
        raise DataError(
            f"candidates must be Candidates, a Ranking or a callable, got {type(source).__name__}"
        )
    items = np.concatenate(per_user) if per_user else np.zeros(0, dtype=np.int64)
    if len(items) and (items.min() < 0 or items.max() >= n_items):
        bad = items[(items < 0) | (items >= n_items)][0]
        raise DataError(f"candidate item index {bad} is outside the catalog [0, {n_items})")
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum([len(p) for p in per_user], out=indptr[1:])
    return indptr, items


def _pool_rows(result: Candidates | Ranking, users: np.ndarray) -> list[np.ndarray]:
    if isinstance(result, Ranking):
        if result.items.shape[0] != len(users):
            raise DataError(
                f"candidate function returned {result.items.shape[0]} rows for {len(users)} users"
            )
        return [row[row >= 0].astype(np.int64) for row in result.items]
    if isinstance(result, Candidates):
        if not np.array_equal(np.asarray(result.users), users):
            raise DataError("candidate function returned Candidates for other users than asked")
        return [np.asarray(result.items[result.of(j)], dtype=np.int64) for j in range(len(users))]
    raise DataError(f"candidate function must return Candidates or Ranking, got {type(result).__name__}")


# ---------------------------------------------------------------------- input checks
def check_k(k: int) -> int:
    """``k`` as an int, or :class:`DataError` when it is not a positive integer."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise DataError(f"`k` must be a positive integer, got {k!r}")
    return int(k)


def check_users(users: np.ndarray | list[int]) -> np.ndarray:
    """User indices as ``int64[n]``; :class:`DataError` for other shapes or negative indices."""
    arr = np.asarray(users)
    if arr.ndim != 1:
        raise DataError(f"`users` must be a 1-d array of user indices, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise DataError(f"`users` must hold integer user indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise DataError(f"`users` must be non-negative indices, got {int(arr.min())}")
    return arr


def check_at(at: np.ndarray | None, n: int) -> np.ndarray | None:
    """Request times as ``float64[n]`` (or ``None``); :class:`DataError` on a shape mismatch or NaN."""
    if at is None:
        return None
    arr = np.asarray(at, dtype=np.float64)
    if arr.shape != (n,):
        raise DataError(f"`at` must have one time per user, shape ({n},), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise DataError("`at` must hold finite unix seconds, got NaN or inf")
    return arr


def exclude_rows(exclude: sp.csr_matrix | None, users: np.ndarray, n_items: int) -> sp.csr_matrix | None:
    """Rows of ``exclude`` for ``users`` (empty rows for users beyond its height).

    :class:`DataError` when ``exclude`` does not have ``n_items`` columns.
    """
    if exclude is None:
        return None
    if exclude.shape[1] != n_items:
        raise DataError(f"`exclude` must have {n_items} columns (the catalog), got {exclude.shape[1]}")
    ex = sp.csr_matrix(exclude)
    inside = users < ex.shape[0]
    if inside.all():
        return ex[users]
    rows = ex[np.where(inside, users, 0)].tolil()
    for r in np.flatnonzero(~inside):
        rows.rows[r] = []
        rows.data[r] = []
    return rows.tocsr()


def history_pairs(inp: np.ndarray, tgt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, item) pairs to mask in a next-item softmax: each position's own history so far.

    ``inp``, ``tgt``: ``int64[B, L]`` window inputs and next-item targets (-1 = padding). Rows
    number the valid positions ``inp >= 0`` in row-major order (as ``tensor[valid]`` does).
    A history item equal to that position's target is kept, so repeat consumption still
    trains. Returns ``int64[m]`` row indices and ``int64[m]`` item indices.
    """
    valid = inp >= 0
    row_of = np.cumsum(valid.ravel()).reshape(valid.shape) - 1
    n = inp.shape[1]
    tri = np.tril(np.ones((n, n), dtype=bool))  # [j, k]: k <= j
    pairs = tri[None] & valid[:, :, None] & valid[:, None, :]
    b, j, k = np.nonzero(pairs)
    items = inp[b, k]
    keep = items != tgt[b, j]
    return row_of[b, j][keep].astype(np.int64), items[keep].astype(np.int64)
