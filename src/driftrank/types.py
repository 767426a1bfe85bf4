"""Small typed values that cross stage boundaries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Self, runtime_checkable

import numpy as np
import scipy.sparse as sp

from driftrank.data import Dataset

__all__ = ["CandidateGenerator", "Candidates", "Ranker", "Ranking", "topk"]


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


def topk(scores: np.ndarray, k: int, exclude_rows: sp.csr_matrix | None = None) -> Ranking:
    """Top-``k`` of each row of ``scores: float[n, n_items]``; ties go to the lower item index.

    ``exclude_rows`` (CSR ``[n, n_items]``, aligned with the rows of ``scores``) marks items to
    leave out. ``scores`` is not modified. NaN and -inf scores are never returned.
    """
    m = scores.shape[1]
    s = np.array(scores, dtype=np.float64, copy=True)
    s[~np.isfinite(s)] = -np.inf
    if exclude_rows is not None and exclude_rows.nnz:
        coo = exclude_rows.tocoo()
        s[coo.row, coo.col] = -np.inf
    kk = min(k, m)
    if m <= 4096 or kk * 8 >= m:
        order = np.argsort(-s, axis=1, kind="stable")[:, :kk]
    else:
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        part.sort(axis=1)  # index order first, so the stable sort below breaks ties by index
        vals = np.take_along_axis(s, part, axis=1)
        order = np.take_along_axis(part, np.argsort(-vals, axis=1, kind="stable"), axis=1)
    top = np.take_along_axis(s, order, axis=1)
    items = order.astype(np.int64)
    bad = ~np.isfinite(top)
    items[bad] = -1
    out_scores = top.astype(np.float32)
    out_scores[bad] = np.nan
    if kk < k:
        items = np.pad(items, ((0, 0), (0, k - kk)), constant_values=-1)
        out_scores = np.pad(out_scores, ((0, 0), (0, k - kk)), constant_values=np.nan)
    return Ranking(items, out_scores)


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
