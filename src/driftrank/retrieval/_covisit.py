"""Co-visitation: items that followed the user's latest items in other users' sequences."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from driftrank.data import Dataset
from driftrank.errors import DataError, ModelFileError
from driftrank.retrieval._base import Channel
from driftrank.retrieval._common import (
    SECONDS_PER_DAY,
    EventLog,
    check_int,
    check_name,
    check_nonnegative,
    check_positive,
    need,
)
from driftrank.types import _row_gather, csr_from_coo

__all__ = ["CovisitChannel", "CovisitConfig"]

# Fold pending online pairs into the main matrix once they reach this share of its entries.
_MERGE_SHARE = 0.05
# Move the decay anchor forward once an event is this many half-lives past it (float64 safety).
_REANCHOR = 30.0


@dataclass(frozen=True)
class CovisitConfig:
    """Settings of :class:`CovisitChannel` (defaults chosen on the ml-100k validation split).

    Attributes:
        window: pairs are formed between events at most this many positions apart in a user's
            time-ordered sequence.
        distance_power: a pair ``k`` positions apart weighs ``1 / k^distance_power``.
        backward_weight: weight of the reversed pair (``b`` preceded ``a``) relative to the
            forward one (``b`` followed ``a``); 0 keeps co-visitation strictly sequential.
        half_life_days: a pair weighs ``2^(-age/half_life)`` with its age (time of its later
            event) relative to the newest event in the data, so recent co-visits count more;
            ``None`` = no decay.
        anchors: how many of the user's most recent distinct items the candidates follow.
        anchor_decay: the ``j``-th most recent anchor (0 = newest) weighs ``anchor_decay^j``.
        popularity_power: a target item's score is divided by ``count^popularity_power`` (its
            number of events); 0 keeps raw co-visitation, 1 is close to a lift.
        name: the channel's name.

    Each anchor's row is normalised to sum 1 before weighting, so a very popular anchor does not
    drown the others.
    """

    window: int = 20
    distance_power: float = 0.5
    backward_weight: float = 1.0
    half_life_days: float | None = None
    anchors: int = 10
    anchor_decay: float = 0.8
    popularity_power: float = 0.0
    name: str = "covisit"

    def __post_init__(self) -> None:
        check_int("window", self.window)
        check_nonnegative("distance_power", self.distance_power)
        check_nonnegative("backward_weight", self.backward_weight)
        check_positive("half_life_days", self.half_life_days, allow_none=True)
        check_int("anchors", self.anchors)
        check_positive("anchor_decay", self.anchor_decay)
        check_nonnegative("popularity_power", self.popularity_power)
        check_name(self.name)


class CovisitChannel(Channel):
    """Item-to-item co-visitation counted over users' sequences, served from the user's latest items.

    Score of item ``b`` for a user with recent distinct items ``a_0`` (newest), ``a_1``, ...::

        score(b) = Σ_j anchor_decay^j · C[a_j, b] / Σ_c C[a_j, c]  /  count(b)^popularity_power

    where ``C[a, b]`` sums, over every pair of events ``k <= window`` positions apart with ``a``
    first, ``2^(-age/half_life) / k^distance_power`` (plus ``backward_weight`` times the same
    for ``b`` first). Items never co-visited with an anchor get no score. ``observe`` adds the
    new events' pairs to ``C`` and moves the user's anchors: no refit needed, and new items
    gain co-visitation as soon as events about them arrive.
    """

    config_type = CovisitConfig
    config: CovisitConfig

    def __init__(self, config: CovisitConfig | None = None) -> None:
        super().__init__(config or CovisitConfig())
        self._c = sp.csr_matrix((0, 0), dtype=np.float64)
        self._rowsum = np.zeros(0)
        self._count = np.zeros(0)
        self._anchor_time = 0.0
        # Pairs observed since the last merge, as one matrix (None when there are none), and
        # how many were added: observe keeps it up to date, serving reads it without merging.
        self._delta: sp.csr_matrix | None = None
        self._pending_n = 0

    # ------------------------------------------------------------------ fitting
    def _pair_weights(self, times: np.ndarray) -> np.ndarray:
        h = self.config.half_life_days
        if h is None:
            return np.ones(len(times))
        return np.exp2((times - self._anchor_time) / (h * SECONDS_PER_DAY))

    def _pairs(
        self, users: np.ndarray, items: np.ndarray, times: np.ndarray, new_from: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Weighted (row, col, value) co-visitation pairs of sequences laid end to end.

        ``users/items/times`` are concatenated time-ordered sequences; with ``new_from`` (bool
        per event) only pairs whose later event is new are returned (online updates)."""
        cfg = self.config
        rows, cols, vals = [], [], []
        n = len(items)
        for k in range(1, cfg.window + 1):
            if k >= n:
                break
            first = np.arange(n - k)
            second = first + k
            ok = (users[first] == users[second]) & (items[first] != items[second])
            if new_from is not None:
                ok &= new_from[second]
            if not ok.any():
                continue
            a, b = items[first[ok]], items[second[ok]]
            w = self._pair_weights(times[second[ok]]) / float(k) ** cfg.distance_power
            rows.append(a)
            cols.append(b)
            vals.append(w)
            if cfg.backward_weight > 0:
                rows.append(b)
                cols.append(a)
                vals.append(cfg.backward_weight * w)
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)

    def _fit(self, dataset: Dataset) -> None:
        ts = dataset.timestamps
        self._anchor_time = float(ts.max()) if len(ts) else 0.0
        seq = dataset.sequences
        users = np.repeat(np.arange(dataset.n_users), seq.lengths())
        r, c, v = self._pairs(users, seq.items.astype(np.int64), seq.timestamps)
        n = dataset.n_items
        self._c = sp.csr_matrix((v, (r, c)), shape=(n, n), dtype=np.float64)
        self._c.sum_duplicates()
        self._rowsum = np.asarray(self._c.sum(axis=1)).ravel()
        self._count = np.bincount(dataset.item_index, minlength=n).astype(np.float64)
        self._delta, self._pending_n = None, 0

    # ------------------------------------------------------------------ serving
    def _matrix(self) -> sp.csr_matrix:
        """The co-visitation matrix with the pending pairs merged in (write paths only: a
        merge costs a pass over the whole matrix, about 7 ms on ml-100k)."""
        if self._delta is not None:
            self._c = (self._c + self._delta).tocsr()
            self._delta, self._pending_n = None, 0
        return self._c

    def _anchor_entries(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(rows, items, weights)``: each user's anchors (row ``j`` = ``users[j]``) with
        weight ``anchor_decay^p / rowsum`` (``p``: the item's place among the user's latest
        distinct items, newest first); items with an empty matrix row are left out."""
        anchors = self._recent_distinct(users)
        row, place = np.nonzero(anchors >= 0)
        items = anchors[row, place]
        rs = self._rowsum[items]
        ok = rs > 0
        weights = (self.config.anchor_decay ** np.arange(self.config.anchors))[place[ok]] / rs[ok]
        return row[ok], items[ok], weights

    def _anchor_rows(self, users: np.ndarray) -> sp.csr_matrix:
        """``[b, n_items]`` CSR of the anchor weights of :meth:`_anchor_entries`."""
        row, items, weights = self._anchor_entries(users)
        return csr_from_coo(weights, row, items, (len(users), self._n_items))

    def _recent_distinct(self, users: np.ndarray) -> np.ndarray:
        """``int64[b, anchors]``: each user's latest distinct items, newest first (-1 after
        the last one). Reads the latest ``anchors`` events of every user at once, and more
        (doubling) only while some user with a longer history has repeats among them."""
        log = self._events("candidates")
        n = self.config.anchors
        out = np.full((len(users), n), -1, dtype=np.int64)
        if len(users) == 1:  # a single request: the plain walk costs less than the array steps
            recent: list[int] = []
            for it in log.user(int(users[0]))[0][::-1].tolist():
                if it not in recent:
                    recent.append(it)
                    if len(recent) == n:
                        break
            out[0, : len(recent)] = recent
            return out
        width = n
        while True:
            tail, lengths = log.recent(users, width)
            # An entry is kept when no newer entry of its row holds the same item.
            order = np.argsort(tail, axis=1, kind="stable")
            srt = np.take_along_axis(tail, order, axis=1)
            dup = np.zeros(tail.shape, dtype=bool)
            np.put_along_axis(dup, order[:, 1:], srt[:, 1:] == srt[:, :-1], axis=1)
            first = (tail >= 0) & ~dup
            rank = np.cumsum(first, axis=1) - 1
            take = first & (rank < n)
            short = (take.sum(axis=1) < n) & (lengths > width)
            if not short.any():
                break
            width *= 2
        r, c = np.nonzero(take)
        out[r, rank[r, c]] = tail[r, c]
        return out

    def _scores(self, users: np.ndarray) -> np.ndarray:
        # The merged matrix plus the pairs observed since the last merge, read as they are:
        # requests never merge (observe does, once the pending pairs are 5% of the matrix).
        if len(users) == 1:
            s = self._one_user_sums(users)
        else:
            anchors = self._anchor_rows(users)
            s = (anchors @ self._c).toarray()
            if self._delta is not None:
                s += (anchors @ self._delta).toarray()
        if self.config.popularity_power > 0:
            s /= np.maximum(self._count, 1.0) ** self.config.popularity_power
        out = s.astype(np.float32)
        out[s <= 0] = np.nan
        return out

    def _one_user_sums(self, users: np.ndarray) -> np.ndarray:
        """``float64[1, n_items]``: :meth:`_scores`' sums for one user, read off the anchors'
        rows of the matrices without building the anchor matrix or a sparse product (which
        cost more than the arithmetic). Bit for bit the product's sums: each item's terms
        are added in the order the sparse product adds them (anchors by item index, each row
        in stored order), starting from zero."""
        _, items, weights = self._anchor_entries(users)
        order = np.argsort(items)
        items, weights = items[order], weights[order]
        out = self._row_sums(self._c, items, weights)
        if self._delta is not None:
            out += self._row_sums(self._delta, items, weights)
        return out[None, :]

    def _row_sums(self, m: sp.csr_matrix, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``float64[n_items]``: ``sum_j weights[j] * m[rows[j]]``, the terms of each column
        added in order."""
        take, ptr = _row_gather(m.indptr, rows)
        terms = np.repeat(weights, np.diff(ptr)) * m.data[take]
        # bincount of no entries is int64 whatever the weights: keep the sums float64.
        return np.bincount(m.indices[take], weights=terms, minlength=self._n_items).astype(
            np.float64, copy=False
        )

    def item_scores(self, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``float64[n_items]``: the scores of a user whose anchors were ``items: int64[a]``
        with ``weights: float64[a]`` (in place of recency weights), as :meth:`candidates`
        would score them; 0 where nothing co-occurs. Stores nothing (a text query's anchors,
        say)."""
        self._events("item_scores")
        items = np.asarray(items, dtype=np.int64)
        weights = np.asarray(weights, dtype=np.float64)
        if items.shape != weights.shape or items.ndim != 1:
            raise DataError(
                f"items and weights must be 1-d of one length, got {items.shape} and {weights.shape}"
            )
        if len(items) and (items.min() < 0 or items.max() >= self._n_items):
            raise DataError(f"items must be item indices in [0, {self._n_items}), got {items.tolist()}")
        rs = self._rowsum[items] if len(items) else np.zeros(0)
        ok = rs > 0
        items, weights = items[ok], weights[ok] / rs[ok]
        out = self._row_sums(self._c, items, weights)
        if self._delta is not None:
            out += self._row_sums(self._delta, items, weights)
        if self.config.popularity_power > 0:
            out /= np.maximum(self._count, 1.0) ** self.config.popularity_power
        return out

    def anchors_of(self, user: int) -> np.ndarray:
        """``int64[<= anchors]`` the user's most recent distinct items, newest first."""
        self._events("anchors_of")
        row = self._recent_distinct(np.array([int(user)], dtype=np.int64))[0]
        return row[row >= 0]

    # ------------------------------------------------------------------ online
    def _observe(self, log: EventLog, users: np.ndarray, items: np.ndarray, times: np.ndarray) -> None:
        h = self.config.half_life_days
        if h is not None and len(times):
            newest = float(times.max())
            if (newest - self._anchor_time) / (h * SECONDS_PER_DAY) > _REANCHOR:
                # Only ratios of pair weights matter (rows are normalised), so rescaling every
                # stored weight to a later anchor changes no score.
                scale = float(np.exp2((self._anchor_time - newest) / (h * SECONDS_PER_DAY)))
                self._c = self._matrix() * scale
                self._rowsum *= scale
                self._anchor_time = newest
        window = self.config.window
        seq_u, seq_i, seq_t, seq_new = [], [], [], []
        order = np.argsort(users, kind="stable")
        bounds = np.flatnonzero(np.diff(users[order])) + 1
        for grp in np.split(order, bounds):
            u = int(users[grp[0]])
            old_i, old_t = log.user(u)
            # The tail of the old history plus the new events, in the order the log will hold them.
            old_i, old_t = old_i[-window:], old_t[-window:]
            all_i = np.concatenate([old_i, items[grp]])
            all_t = np.concatenate([old_t, times[grp]])
            is_new = np.concatenate([np.zeros(len(old_i), bool), np.ones(len(grp), bool)])
            o = np.argsort(all_t, kind="stable")
            seq_u.append(np.full(len(o), u))
            seq_i.append(all_i[o])
            seq_t.append(all_t[o])
            seq_new.append(is_new[o])
        r, c, v = self._pairs(
            np.concatenate(seq_u), np.concatenate(seq_i), np.concatenate(seq_t), np.concatenate(seq_new)
        )
        if len(r):
            self._pending_n += len(r)
            np.add.at(self._rowsum, r, v)
            new = csr_from_coo(v, r, c, self._c.shape)
            self._delta = new if self._delta is None else (self._delta + new).tocsr()
        np.add.at(self._count, items, 1.0)
        if self._pending_n > _MERGE_SHARE * max(self._c.nnz, 1000):
            self._matrix()

    def _extend_items(self, n_new: int) -> None:
        n = self._n_items
        m = self._matrix()
        self._c = sp.csr_matrix(
            (m.data, m.indices, np.concatenate([m.indptr, np.full(n - m.shape[0], m.indptr[-1])])),
            shape=(n, n),
        )
        self._rowsum = np.concatenate([self._rowsum, np.zeros(n_new)])
        self._count = np.concatenate([self._count, np.zeros(n_new)])

    # ------------------------------------------------------------------ state
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        m = self._matrix()
        return {"anchor_time": self._anchor_time}, {
            "covisit_indptr": m.indptr.astype(np.int64),
            "covisit_indices": m.indices.astype(np.int64),
            "covisit_data": m.data,
            "rowsum": self._rowsum,
            "count": self._count,
        }

    def _load_state(self, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        kind = type(self).__name__
        n = self._n_items
        indptr = need(arrays, "covisit_indptr", kind)
        indices = need(arrays, "covisit_indices", kind)
        data = need(arrays, "covisit_data", kind).astype(np.float64)
        rowsum = need(arrays, "rowsum", kind).astype(np.float64)
        count = need(arrays, "count", kind).astype(np.float64)
        if len(indptr) != n + 1 or len(rowsum) != n or len(count) != n or len(indices) != len(data):
            raise ModelFileError(f"{kind} state does not match its catalog of {n} items")
        if len(indices) and (indices.min() < 0 or indices.max() >= n):
            raise ModelFileError(f"{kind} state has item indices outside its catalog")
        self._c = sp.csr_matrix((data, indices, indptr), shape=(n, n))
        self._rowsum, self._count = rowsum.copy(), count.copy()
        self._anchor_time = float(config.get("anchor_time", 0.0))
