"""Small typed values that cross stage boundaries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from driftrank.data import Dataset

__all__ = [
    "CandidateGenerator",
    "Candidates",
    "Ranker",
    "Ranking",
    "csr_coordinates",
    "csr_from_coo",
    "csr_take_rows",
    "insert_events",
    "topk",
]


@dataclass(frozen=True)
class Ranking:
    """Top-k lists for a batch of users.

    ``items: int64[n_users, k]`` item indices best first, padded with -1 where fewer than k
    items could be ranked; ``scores: float32[n_users, k]`` (NaN at padding).
    """

    items: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        if self.items.shape != self.scores.shape or self.items.ndim != 2:
            raise ValueError(
                f"items and scores must be 2-d of one shape, got {self.items.shape} and {self.scores.shape}"
            )


@runtime_checkable
class Ranker(Protocol):
    """Anything that ranks the catalog for a batch of users (what :func:`driftrank.eval.evaluate` needs)."""

    def fit(self, dataset: Dataset) -> Self:
        """Learn from ``dataset``; returns ``self``."""
        ...

    def rank(
        self,
        users: np.ndarray,
        k: int,
        *,
        exclude: sp.csr_matrix | None = None,
        at: np.ndarray | None = None,
    ) -> Ranking:
        """Top-``k`` items for user indices ``users: int[n]``.

        ``exclude`` (CSR ``[n_users_total, n_items]``) lists items that must not be returned per
        user (row = user index); ``at: float64[n]`` is the request time in unix seconds (rankers
        that model time use it; others ignore it).
        """
        ...


def topk(
    scores: np.ndarray,
    k: int,
    exclude_rows: sp.csr_matrix | tuple[np.ndarray, np.ndarray] | None = None,
) -> Ranking:
    """Top-``k`` of each row of ``scores: float[n, n_items]``; ties go to the lower item index.

    ``exclude_rows`` (CSR ``[n, n_items]``, aligned with the rows of ``scores``, or its entries'
    ``(rows, cols)`` coordinates as :func:`csr_coordinates` gives them) marks items to leave
    out. ``scores`` is not modified. NaN and -inf scores are never returned.
    """
    m = scores.shape[1]
    if isinstance(exclude_rows, sp.spmatrix | sp.sparray):
        exclude_rows = csr_coordinates(exclude_rows) if exclude_rows.nnz else None
    if scores.shape[0] > 1 and scores.strides[0] == 0:
        # One row broadcast to every user (popularity): sort it once, skip each row's exclusions.
        return _topk_shared(scores[0], k, scores.shape[0], exclude_rows)
    # Keys ascend where scores descend; a score that may not be returned gets key +inf.
    keys = np.negative(scores, dtype=np.float64)
    keys[~np.isfinite(keys)] = np.inf
    if exclude_rows is not None:
        keys[exclude_rows] = np.inf
    kk = min(k, m)
    order = top_order(keys, kk)
    # One row (a single request): plain indexing, not take_along_axis' index grid.
    top = -(keys[0, order[0]][None, :] if len(keys) == 1 else np.take_along_axis(keys, order, axis=1))
    items = order.astype(np.int64)
    bad = ~np.isfinite(top)
    items[bad] = -1
    out_scores = top.astype(np.float32)
    out_scores[bad] = np.nan
    if kk < k:
        items = np.pad(items, ((0, 0), (0, k - kk)), constant_values=-1)
        out_scores = np.pad(out_scores, ((0, 0), (0, k - kk)), constant_values=np.nan)
    return Ranking(items, out_scores)


def _topk_shared(
    scores: np.ndarray, k: int, n_rows: int, exclude: tuple[np.ndarray, np.ndarray] | None
) -> Ranking:
    """:func:`topk` of ``scores: float[m]`` repeated in ``n_rows`` rows, ``exclude`` as
    ``(rows, cols)``: the one row is sorted once; row ``r`` takes the first ``k`` of that order
    it does not exclude."""
    m = len(scores)
    keys = np.negative(scores, dtype=np.float64)
    keys[~np.isfinite(keys)] = np.inf
    order = np.argsort(keys, kind="stable")
    order = order[np.isfinite(keys[order])]  # never returned: NaN and infinite scores
    kk = min(k, len(order))
    rows = np.zeros(0, np.int64) if exclude is None else np.asarray(exclude[0], dtype=np.int64)
    per_row = np.bincount(rows, minlength=n_rows)
    head = order[: kk + (int(per_row.max()) if len(rows) else 0)]  # enough for any row
    place = np.full(m, len(head), dtype=np.int64)
    place[head] = np.arange(len(head))
    ok = np.ones((n_rows, len(head)), dtype=bool)
    if len(rows):
        at = place[np.asarray(exclude[1], dtype=np.int64)]  # type: ignore[index]
        inside = at < len(head)
        ok[rows[inside], at[inside]] = False
    rank = np.cumsum(ok, axis=1) - 1
    r, j = np.nonzero(ok & (rank < kk))
    items = np.full((n_rows, k), -1, dtype=np.int64)
    out = np.full((n_rows, k), np.nan, dtype=np.float32)
    items[r, rank[r, j]] = head[j]
    out[r, rank[r, j]] = scores[head[j]]
    return Ranking(items, out)


def padded_rows(offsets: np.ndarray, values: np.ndarray, fill: float = np.inf) -> np.ndarray:
    """``float64[n_rows, widest row]``: row ``r`` holds ``values[offsets[r]:offsets[r + 1]]`` in
    order, then ``fill`` (``offsets: int[n_rows + 1]``, ascending from 0), so that per-row
    sorts and partial sorts of ragged groups run as one 2-d call."""
    starts = np.asarray(offsets[:-1], dtype=np.int64)
    counts = np.diff(offsets)
    table = np.full((len(counts), int(counts.max(initial=0))), fill)
    row = np.repeat(np.arange(len(counts)), counts)
    table[row, np.arange(len(values)) - starts[row]] = values
    return table


def top_order(keys: np.ndarray, kk: int) -> np.ndarray:
    """``int[n, kk]``: per row, the columns of the ``kk`` smallest ``keys`` (``float[n, m]``, no
    NaN), ascending, ties by column: the first ``kk`` of a stable argsort, without sorting all.
    Keys of ``+inf`` mark absent entries (both callers drop them): they come last, their
    columns in no guaranteed order.

    Per row, every key below the ``kk``-th smallest is taken, then as many of the keys equal to
    it as fit, lowest columns first (as the stable sort would order them); only those ``kk`` are
    sorted (by the faster unstable sort when they hold no equal finite keys).
    """
    n, m = keys.shape
    if kk >= m or kk == 0:
        return np.argsort(keys, axis=1, kind="stable")[:, :kk]
    if n == 1:  # one-user requests: the same steps on a 1-d row, without the 2-d indexing
        row = keys[0]
        th = np.partition(row, kk - 1)[kk - 1]
        cols = np.flatnonzero(row <= th)
        if len(cols) > kk:
            cols = cols[(row[cols] < th) | (np.cumsum(row[cols] == th) <= kk - (row[cols] < th).sum())]
        return cols[np.argsort(row[cols], kind="stable")][None, :]
    threshold = np.partition(keys, kk - 1, axis=1)[:, kk - 1 : kk]
    take = keys <= threshold
    excess = np.flatnonzero(take.sum(axis=1) > kk)  # rows with a tie across the boundary
    if len(excess):
        sub, th = keys[excess], threshold[excess]
        tied = sub == th
        room = kk - (sub < th).sum(axis=1, keepdims=True)  # >= 1: the threshold is a kk-th key
        take[excess] = (sub < th) | (tied & (np.cumsum(tied, axis=1) <= room))
    # Row-major flat positions: each row's columns ascending, exactly kk per row.
    cols = (np.flatnonzero(take) % m).reshape(n, kk)
    top = np.take_along_axis(keys, cols, axis=1)
    order = np.argsort(top, axis=1)
    ranked = np.take_along_axis(top, order, axis=1)
    # Equal finite keys must keep column order; equal +inf keys (absent entries, rows with
    # fewer than kk present) need not: in a batch of ml-100k, 11 of 20 calls re-sorted for them.
    if np.any((ranked[:, 1:] == ranked[:, :-1]) & np.isfinite(ranked[:, 1:])):
        order = np.argsort(top, axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1)


# Sparse helpers for the serving path. Building a scipy matrix (validation, index dtype checks)
# or indexing one costs 0.03-0.15 ms per call: more than the arithmetic of a one-user request,
# which touches such matrices a dozen times. These work on the CSR index arrays with numpy.
def _row_spans(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, lengths)``: where each of ``rows`` begins in a CSR's entries and how many it
    has (rows past the end: 0 entries)."""
    ptr = np.asarray(indptr, dtype=np.int64)
    r = np.asarray(rows, dtype=np.int64).reshape(-1)
    inside = r < len(ptr) - 1
    safe = np.where(inside, r, 0)
    starts = ptr[safe]
    return starts, np.where(inside, ptr[np.minimum(safe + 1, len(ptr) - 1)] - starts, 0)


def _row_gather(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(take, out_indptr)``: positions of the entries of ``rows`` (in row order, each row's
    entries in stored order) and the indptr of those rows; rows past the end are empty."""
    starts, lengths = _row_spans(indptr, rows)
    out_ptr = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out_ptr[1:])
    take = np.repeat(starts - out_ptr[:-1], lengths) + np.arange(out_ptr[-1], dtype=np.int64)
    return take, out_ptr


def csr_coordinates(
    matrix: sp.spmatrix | sp.sparray, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)``: ``int64[nnz]`` coordinates of the stored entries of a sparse matrix,
    as ``matrix.tocoo()`` gives them, without building a matrix.

    With ``rows: int[r]``, those of ``matrix[rows]`` instead (row ``j`` = ``rows[j]``; a row
    past the matrix's last row has no entries).
    """
    if matrix.format != "csr":
        if rows is None:
            coo = matrix.tocoo()
            return coo.row.astype(np.int64), coo.col.astype(np.int64)
        matrix = sp.csr_matrix(matrix)
    indptr = np.asarray(matrix.indptr, dtype=np.int64)
    if rows is None:
        n = len(indptr) - 1
        out_rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
        return out_rows, np.asarray(matrix.indices[: indptr[-1]], dtype=np.int64)
    take, out_ptr = _row_gather(indptr, rows)
    out_rows = np.repeat(np.arange(len(out_ptr) - 1, dtype=np.int64), np.diff(out_ptr))
    return out_rows, np.asarray(matrix.indices[take], dtype=np.int64)


def csr_take_rows(matrix: sp.csr_matrix, rows: np.ndarray, n_cols: int | None = None) -> sp.csr_matrix:
    """``matrix[rows]`` for a CSR matrix and ``rows: int[r]``, with an empty row where
    ``rows[j]`` is past its last row; ``n_cols`` (default: its width, and not smaller) widens
    the result. The same rows, entries and entry order as scipy's fancy indexing."""
    take, out_ptr = _row_gather(matrix.indptr, rows)
    width = matrix.shape[1] if n_cols is None else max(int(n_cols), matrix.shape[1])
    return sp.csr_matrix((matrix.data[take], matrix.indices[take], out_ptr), shape=(len(out_ptr) - 1, width))


def csr_from_coo(
    data: np.ndarray, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]
) -> sp.csr_matrix:
    """``sp.csr_matrix((data, (rows, cols)), shape=shape)`` without the COO round trip.

    The same matrix, bit for bit: entries are grouped by row in their input order (as scipy's
    COO to CSR conversion does), then scipy sums duplicates and sorts each row.
    """
    r = np.asarray(rows, dtype=np.int64)
    order = np.argsort(r, kind="stable")
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=shape[0]), out=indptr[1:])
    out = sp.csr_matrix((np.asarray(data)[order], np.asarray(cols)[order], indptr), shape=shape)
    out.sum_duplicates()
    return out


# Batches with more distinct users than this re-sort every event instead of inserting per user.
_INSERT_MAX_USERS = 256


def insert_events(
    indptr: np.ndarray,
    items: np.ndarray,
    times: np.ndarray,
    users: np.ndarray,
    new_items: np.ndarray,
    new_times: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-user event arrays in CSR layout (``indptr: int64[n_users + 1]``, ``items: int64[n]``,
    ``times: float64[n]``, each user's events in time order) with the events ``(users[j],
    new_items[j], new_times[j])`` added, as new arrays (the inputs are not modified).

    Each new event goes in time order among its user's events, after stored events of equal
    time; new events of equal user and time keep their input order; users past the end grow the
    layout. That is the order of a stable sort of all events by (user, time) with the stored
    ones first, but a few events from a few users cost one copy of the arrays instead of that
    sort (the difference between 0.2 and 10 ms per online update on ml-100k).
    """
    u = np.asarray(users, dtype=np.int64)
    ni = np.asarray(new_items, dtype=np.int64)
    nt = np.asarray(new_times, dtype=np.float64)
    ptr = np.asarray(indptr, dtype=np.int64)
    n_old = len(ptr) - 1
    n_users = max(n_old, int(u.max()) + 1) if len(u) else n_old
    order = np.lexsort((nt, u))  # stable: input order within equal (user, time)
    u, ni, nt = u[order], ni[order], nt[order]
    counts = np.bincount(u, minlength=n_users)
    out_ptr = np.concatenate([ptr, np.full(n_users - n_old, ptr[-1], dtype=np.int64)])
    out_ptr[1:] += np.cumsum(counts)
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]]) if len(u) else np.zeros(0, np.int64)
    if len(starts) > _INSERT_MAX_USERS:
        old_users = np.repeat(np.arange(n_old, dtype=np.int64), np.diff(ptr))
        all_users = np.concatenate([old_users, u])
        all_times = np.concatenate([times, nt])
        full = np.lexsort((all_times, all_users))  # stored events first among equals
        return out_ptr, np.concatenate([items, ni])[full], all_times[full]
    pos = np.full(len(u), len(items), dtype=np.int64)  # users past the end: appended
    ends = np.append(starts[1:], len(u))
    for a, b in zip(starts.tolist(), ends.tolist() if len(starts) else [], strict=True):
        user = int(u[a])
        if user < n_old:
            lo, hi = int(ptr[user]), int(ptr[user + 1])
            pos[a:b] = lo + np.searchsorted(times[lo:hi], nt[a:b], side="right")
    return out_ptr, np.insert(items, pos, ni), np.insert(times, pos, nt)


@dataclass(frozen=True)
class Candidates:
    """Candidate items for a batch of users, with one score and rank column per source.

    The candidates of ``users[j]`` are the rows ``offsets[j]:offsets[j+1]`` of ``items``,
    ``scores`` and ``ranks`` (a CSR-like layout, so users may have different numbers).

    Attributes:
        users: ``int64[n_users]`` user indices of the batch.
        offsets: ``int64[n_users + 1]`` row offsets per user.
        items: ``int64[m]`` item indices (no duplicates within a user).
        scores: ``float32[m, n_sources]`` each source's score; NaN where that source did not
            retrieve the item.
        ranks: ``float32[m, n_sources]`` 0-based rank of the item in that source's list; NaN
            where absent.
        sources: names of the score columns, e.g. ``("als", "covisit")``.
    """

    users: np.ndarray
    offsets: np.ndarray
    items: np.ndarray
    scores: np.ndarray
    ranks: np.ndarray
    sources: tuple[str, ...]

    def __post_init__(self) -> None:
        m = len(self.items)
        if len(self.offsets) != len(self.users) + 1 or (len(self.offsets) and self.offsets[-1] != m):
            raise ValueError(f"offsets must have n_users+1 entries ending at {m}, got {len(self.offsets)}")
        if self.scores.shape != (m, len(self.sources)) or self.ranks.shape != (m, len(self.sources)):
            raise ValueError(
                f"scores and ranks must be [{m}, {len(self.sources)}], got {self.scores.shape} and {self.ranks.shape}"
            )

    def __len__(self) -> int:
        return len(self.users)

    def of(self, j: int) -> slice:
        """Rows of the ``j``-th user of the batch."""
        return slice(int(self.offsets[j]), int(self.offsets[j + 1]))

    def counts(self) -> np.ndarray:
        """Number of candidates per user, ``int64[n_users]``."""
        return np.diff(self.offsets)

    def user_of_row(self) -> np.ndarray:
        """``int64[m]`` position in ``users`` of each candidate row."""
        return np.repeat(np.arange(len(self.users)), self.counts())


@runtime_checkable
class CandidateGenerator(Protocol):
    """A retrieval channel: fitted on a data set, returns scored candidates for users."""

    name: str

    def fit(self, dataset: Dataset) -> Self:
        """Learn from ``dataset``; returns ``self``."""
        ...

    def candidates(
        self,
        users: np.ndarray,
        n: int,
        *,
        exclude: sp.csr_matrix | None = None,
        at: np.ndarray | None = None,
    ) -> Ranking:
        """Up to ``n`` item indices per user with this channel's scores (padded with -1)."""
        ...
