"""Merging channels into one candidate set that keeps every channel's score and rank."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self

import numpy as np

from driftrank.data import Dataset
from driftrank.errors import ConfigError, DataError, ModelFileError
from driftrank.retrieval._base import Channel, Exclude
from driftrank.retrieval._common import (
    STATE_VERSION,
    check_n,
    check_state,
    check_users,
    config_from_dict,
    config_to_dict,
    exclude_coordinates,
)
from driftrank.types import Candidates, Ranking, padded_rows, topk

__all__ = ["DEFAULT_QUOTAS", "CandidateMerger", "MergerConfig", "candidate_recall"]

MergeOrder = Literal["quota", "rrf"]
# merge_rankings counts (user, item) pairs in a dense table of users × items while it has at
# most this many slots, or this many per listed pair; beyond (large catalogs) it sorts the pairs.
_DENSE_SLOTS = 1 << 16
_DENSE_PER_PAIR = 4


@dataclass(frozen=True)
class MergerConfig:
    """How :class:`CandidateMerger` combines its channels.

    Attributes:
        quotas: ``((channel name, quota), ...)``, one entry per channel. A channel's quota is
            its share of the merged list: with quotas 2 and 1, two of every three slots go to
            the first channel (while it has new items). Quota 0 never adds items but still
            records the channel's score and rank for candidates the others found.
        order: ``"rrf"`` (default) orders the union of the channels' lists by weighted
            reciprocal rank, ``Σ_c quota_c / (rrf_k + rank_c + 1)`` (ties by first appearance);
            ``"quota"`` interleaves the lists by quota (the ``j``-th item of channel ``c`` sits
            at ``(j + 1) / quota_c``, ties by channel order) and keeps each item's first
            occurrence. On the ml-100k validation split both reach the same recall at 200,
            and ``"rrf"`` is 2-3 points higher at 50 and 100 (see the docs).
        rrf_k: the constant of reciprocal rank fusion (only for ``order="rrf"``).
        depth: each channel is asked for ``max(n, depth)`` items, so that the merged list for
            any ``n <= depth`` is the first ``n`` of the merged list for ``depth``.
    """

    quotas: tuple[tuple[str, float], ...]
    order: MergeOrder = "rrf"
    rrf_k: float = 60.0
    depth: int = 200

    def __post_init__(self) -> None:
        if not isinstance(self.quotas, tuple) or not self.quotas:
            raise ConfigError(f"quotas must be a non-empty tuple of (name, quota) pairs, got {self.quotas!r}")
        names = []
        for entry in self.quotas:
            if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)):
                raise ConfigError(f"each quota must be a (name, quota) pair, got {entry!r}")
            q = entry[1]
            if isinstance(q, bool) or not isinstance(q, (int, float)) or not (q >= 0 and np.isfinite(q)):
                raise ConfigError(f"quota of {entry[0]!r} must be a number >= 0, got {q!r}")
            names.append(entry[0])
        if len(set(names)) != len(names):
            raise ConfigError(f"channel names must be unique, got {names}")
        if sum(q for _, q in self.quotas) <= 0:
            raise ConfigError("at least one quota must be positive")
        if self.order not in ("quota", "rrf"):
            raise ConfigError(f"order must be 'quota' or 'rrf', got {self.order!r}")
        if isinstance(self.rrf_k, bool) or not isinstance(self.rrf_k, (int, float)) or not self.rrf_k >= 0:
            raise ConfigError(f"rrf_k must be a number >= 0, got {self.rrf_k!r}")
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 1:
            raise ConfigError(f"depth must be a positive integer, got {self.depth!r}")

    @property
    def names(self) -> tuple[str, ...]:
        """The channel names, in order."""
        return tuple(name for name, _ in self.quotas)


# Chosen on the ml-100k validation split (docs/retrieval.md): co-visitation carries the most
# recall, the factor models add what it misses, popularity only fills lists of cold users.
DEFAULT_QUOTAS: tuple[tuple[str, float], ...] = (
    ("covisit", 3.0),
    ("als", 1.0),
    ("lightfm", 1.0),
    ("bpr", 1.0),
    ("pop", 0.1),
)


def _channel_types() -> dict[str, type[Channel]]:
    from driftrank.retrieval._als import ALSChannel
    from driftrank.retrieval._bpr import BPRChannel
    from driftrank.retrieval._covisit import CovisitChannel
    from driftrank.retrieval._lightfm import LightFMChannel
    from driftrank.retrieval._popularity import PopularityChannel, PopularityRanker

    return {
        c.__name__: c
        for c in (ALSChannel, BPRChannel, LightFMChannel, CovisitChannel, PopularityChannel, PopularityRanker)
    }


class CandidateMerger:
    """Unions the candidates of several channels into :class:`~driftrank.types.Candidates`.

    Each candidate appears once per user, with every channel's score and 0-based rank (NaN where
    that channel's top ``n`` did not hold it): what the fusion stage learns from. The merged
    order (and so what is kept at ``n``) follows :attr:`MergerConfig.order`.

    Example::

        merger = CandidateMerger(
            [ALSChannel(), CovisitChannel(), PopularityChannel()],
            MergerConfig((("als", 1.0), ("covisit", 1.0), ("pop", 0.2))),
        ).fit(train)
        cands = merger.candidates(users, 200, exclude="seen")
    """

    @classmethod
    def default(cls, random_state: int = 0) -> CandidateMerger:
        """The five channels with their tuned defaults and the tuned quotas (:data:`DEFAULT_QUOTAS`)."""
        from driftrank.retrieval._als import ALSChannel, ALSConfig
        from driftrank.retrieval._bpr import BPRChannel, BPRConfig
        from driftrank.retrieval._covisit import CovisitChannel
        from driftrank.retrieval._lightfm import LightFMChannel, LightFMConfig
        from driftrank.retrieval._popularity import PopularityChannel

        channels: list[Channel] = [
            CovisitChannel(),
            ALSChannel(ALSConfig(random_state=random_state)),
            LightFMChannel(LightFMConfig(random_state=random_state)),
            BPRChannel(BPRConfig(random_state=random_state)),
            PopularityChannel(),
        ]
        return cls(channels, MergerConfig(DEFAULT_QUOTAS))

    def __init__(self, channels: Sequence[Channel], config: MergerConfig | None = None) -> None:
        channels = list(channels)
        if not channels:
            raise ConfigError("a CandidateMerger needs at least one channel")
        for ch in channels:
            if not isinstance(ch, Channel):
                raise ConfigError(f"channels must be retrieval channels, got {type(ch).__name__}")
        names = [ch.name for ch in channels]
        if len(set(names)) != len(names):
            raise ConfigError(f"channel names must be unique (set config.name), got {names}")
        if config is None:
            config = MergerConfig(tuple((name, 1.0) for name in names))
        if set(config.names) != set(names) or len(config.names) != len(names):
            raise ConfigError(f"quotas name channels {list(config.names)}, but the channels are {names}")
        by_name = {ch.name: ch for ch in channels}
        self.config = config
        self.channels: tuple[Channel, ...] = tuple(by_name[name] for name in config.names)
        self._quotas = np.array([q for _, q in config.quotas], dtype=np.float64)

    @property
    def sources(self) -> tuple[str, ...]:
        """Names of the score/rank columns of the candidates (the channels, in quota order)."""
        return self.config.names

    def channel(self, name: str) -> Channel:
        """The channel called ``name``."""
        for ch in self.channels:
            if ch.name == name:
                return ch
        raise KeyError(f"no channel named {name!r}; have {list(self.sources)}")

    # ------------------------------------------------------------------ training / online
    def fit(self, dataset: Dataset) -> Self:
        """Fit every channel on ``dataset``."""
        for ch in self.channels:
            ch.fit(dataset)
        return self

    def observe(self, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray) -> None:
        """Forward new events to every channel (see :meth:`Channel.observe`)."""
        for ch in self.channels:
            ch.observe(users, items, timestamps)

    def extend_items(self, n_new: int) -> None:
        """Forward a catalog growth to every channel (see :meth:`Channel.extend_items`)."""
        for ch in self.channels:
            ch.extend_items(n_new)

    # ------------------------------------------------------------------ serving
    def candidates(
        self,
        users: np.ndarray,
        n: int,
        *,
        exclude: Exclude = None,
        at: np.ndarray | None = None,
    ) -> Candidates:
        """Up to ``n`` merged candidates per user (``users: int[b]``), each channel asked for ``n``.

        Returns :class:`~driftrank.types.Candidates` with rows in merged order per user;
        ``scores``/``ranks`` are ``float32[m, n_channels]`` in :attr:`sources` order.
        """
        users = check_users(users)
        n = check_n(n, "n")
        depth = max(n, self.config.depth)
        lists = self.channel_lists(users, depth, exclude=exclude, at=at)
        return merge_rankings(
            users, lists, self.sources, self._quotas, n, self.config.order, self.config.rrf_k
        )

    def channel_lists(
        self, users: np.ndarray, n: int, *, exclude: Exclude = None, at: np.ndarray | None = None
    ) -> list[Ranking]:
        """Each channel's ``candidates(users, n, exclude=exclude, at=at)``, in channel order.

        For one user (a single request) with an exclusion matrix or none, the user's exclusions
        are read once for every channel and the channels' checks are made once: the same lists,
        without steps that cost more than the arithmetic of a one-user request.
        """
        channels = self.channels
        sizes = {ch.n_items for ch in channels}
        if len(users) != 1 or isinstance(exclude, str) or len(sizes) != 1 or len(channels) < 2:
            return [ch.candidates(users, n, exclude=exclude, at=at) for ch in channels]
        users = check_users(users)
        n = check_n(n, "n")
        coords = exclude_coordinates(exclude, users, sizes.pop())
        # One row at a time: top-k's one-row path is faster than its 2-d path over the stack.
        return [topk(ch.score_rows(users), n, coords) for ch in channels]

    def rank(
        self, users: np.ndarray, k: int, *, exclude: Exclude = None, at: np.ndarray | None = None
    ) -> Ranking:
        """The merged order as a :class:`~driftrank.types.Ranking` (score = ``-position``), so a
        merger can be evaluated like any ranker."""
        c = self.candidates(users, k, exclude=exclude, at=at)
        return candidates_to_ranking(c, k)

    # ------------------------------------------------------------------ persistence
    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(config, arrays)`` of the merger and all its channels (arrays keyed ``name/array``)."""
        channels = []
        arrays: dict[str, np.ndarray] = {}
        for ch in self.channels:
            cfg, arr = ch.get_state()
            channels.append(cfg)
            arrays.update({f"{ch.name}/{k}": v for k, v in arr.items()})
        config = {
            "type": "CandidateMerger",
            "version": STATE_VERSION,
            "config": config_to_dict(self.config),
            "channels": channels,
        }
        return config, arrays

    @classmethod
    def from_state(cls, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> CandidateMerger:
        """Rebuild a merger saved by :meth:`get_state`."""
        check_state(config, "CandidateMerger")
        types = _channel_types()
        channels = []
        for cfg in config.get("channels", []):
            kind = cfg.get("type") if isinstance(cfg, Mapping) else None
            if kind not in types:
                raise ModelFileError(f"unknown channel type {kind!r} in saved merger")
            name = cfg.get("config", {}).get("name")
            prefix = f"{name}/"
            sub = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            channels.append(types[kind].from_state(cfg, sub))
        merger_cfg = config_from_dict(MergerConfig, config.get("config", {}))
        try:
            return cls(channels, merger_cfg)
        except ConfigError as exc:
            raise ModelFileError(f"saved merger is inconsistent: {exc}") from None


def merge_rankings(
    users: np.ndarray,
    lists: Sequence[Ranking],
    sources: tuple[str, ...],
    quotas: np.ndarray,
    n: int,
    order: MergeOrder = "quota",
    rrf_k: float = 60.0,
) -> Candidates:
    """Merge per-channel rankings (rows aligned with ``users``) into :class:`Candidates`.

    See :class:`MergerConfig` for ``order``; ``quotas: float[n_channels]``.
    """
    b = len(users)
    n_ch = len(lists)
    depth = max((r.items.shape[1] for r in lists), default=0)
    items = np.full((b, n_ch, depth), -1, dtype=np.int64)
    scores = np.full((b, n_ch, depth), np.nan, dtype=np.float32)
    for c, r in enumerate(lists):
        if r.items.shape[0] != b:
            raise DataError(f"channel {sources[c]!r} returned {r.items.shape[0]} rows for {b} users")
        items[:, c, : r.items.shape[1]] = r.items
        scores[:, c, : r.items.shape[1]] = r.scores
    if b == 1 and order == "rrf" and n_ch and depth:
        return _merge_one_rrf(users, items[0], scores[0], tuple(sources), quotas, n, rrf_k)
    # Rank and channel of each of the [n_ch, depth] positions, flattened channel-major.
    rank = np.tile(np.arange(depth, dtype=np.float64), n_ch)
    chan = np.repeat(np.arange(n_ch), depth)
    valid = items >= 0
    if order == "quota":
        # Position (j+1)/quota; a zero quota sends the channel past every other item.
        with np.errstate(divide="ignore"):
            key = np.where(quotas[chan] > 0, (rank + 1.0) / quotas[chan], np.inf)
        flat_order = np.lexsort((rank, chan, key))
        allowed = np.isfinite(key[flat_order])
    else:
        # By rank, then channel (first-seen order): the [n_ch, depth] positions read column-wise.
        flat_order = np.arange(n_ch * depth).reshape(n_ch, depth).T.ravel()
        allowed = (quotas[chan] > 0)[flat_order]
    seq_items = items.reshape(b, -1)[:, flat_order]
    seq_ok = valid.reshape(b, -1)[:, flat_order] & allowed[None, :]
    # Row-major, as boolean indexing orders them; flat positions, which index faster than pairs.
    flat_ok = np.flatnonzero(seq_ok)
    width = seq_ok.shape[1]
    r_ok = flat_ok // width
    p_ok = flat_ok - r_ok * width
    i_ok = seq_items.reshape(-1)[flat_ok]
    n_items = int(items.max()) + 1 if items.size and items.max() >= 0 else 1
    keys = r_ok * n_items + i_ok
    if order == "rrf":
        # Each sequence position's contribution, computed once for all rows.
        contrib = (quotas[chan] / (rrf_k + rank + 1.0))[flat_order][p_ok]
    dense = b * n_items <= max(_DENSE_PER_PAIR * len(keys), _DENSE_SLOTS)
    slots = b * n_items
    if dense:
        # Few (user, item) slots: count them in a dense table instead of sorting the keys.
        # Each slot's contributions are summed in sequence order either way (bincount), and a
        # key's first appearance is its smallest position (positions rise along each row).
        first_pos = np.full(slots, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first_pos, keys, p_ok)
        uniq = np.flatnonzero(first_pos != np.iinfo(np.int64).max)
        p_first = first_pos[uniq]
        if order == "rrf":
            total = np.bincount(keys, weights=contrib, minlength=slots)[uniq]
    else:
        uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        p_first = p_ok[first]
        if order == "rrf":
            total = np.bincount(inverse, weights=contrib, minlength=len(uniq))
    if order == "quota":
        sort_val = p_first.astype(np.float64)
    else:
        # Higher fused score first; ties by first appearance.
        sort_val = -total + 1e-12 * (p_first / max(1, seq_items.shape[1]))
    u_row = uniq // n_items
    if dense and n < n_items:
        # Only each row's first n survive: keep the items whose sort value is within the row's
        # n smallest (ties at the boundary included) before sorting, a third of them or fewer.
        table = np.full(slots, np.inf)
        table[uniq] = sort_val
        cut = np.partition(table.reshape(b, n_items), n - 1, axis=1)[:, n - 1]
        sel = sort_val <= cut[u_row]
        uniq, u_row, p_first, sort_val = uniq[sel], u_row[sel], p_first[sel], sort_val[sel]
    u_item = uniq % n_items
    o = _row_order(u_row, sort_val, p_first, b)
    u_row, u_item = u_row[o], u_item[o]
    counts = np.bincount(u_row, minlength=b)
    starts = np.zeros(b + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    within = np.arange(len(u_row)) - starts[u_row]
    keep = within < n
    u_row, u_item = u_row[keep], u_item[keep]
    offsets = np.zeros(b + 1, dtype=np.int64)
    np.cumsum(np.minimum(counts, n), out=offsets[1:])
    m = len(u_item)
    out_scores = np.full((m, n_ch), np.nan, dtype=np.float32)
    out_ranks = np.full((m, n_ch), np.nan, dtype=np.float32)
    if m:
        # Every channel's score and rank of each candidate: look its (row, item) key up.
        flat = np.flatnonzero(valid)  # into [b, n_ch, depth]
        ck = (flat // (n_ch * depth)) * n_items + items.reshape(-1)[flat]
        cand_keys = u_row * n_items + u_item
        if dense:
            where = np.full(slots, -1, dtype=np.int64)
            where[cand_keys] = np.arange(m)
            dest = where[ck]
            hit = dest >= 0
            dest = dest[hit]
        else:
            sorter = np.argsort(cand_keys, kind="stable")  # sorted by row, not by item
            sorted_keys = cand_keys[sorter]
            at = np.minimum(np.searchsorted(sorted_keys, ck), m - 1)
            hit = sorted_keys[at] == ck
            dest = sorter[at[hit]]
        flat = flat[hit]
        cell = dest * n_ch + (flat // depth) % n_ch
        out_scores.reshape(-1)[cell] = scores.reshape(-1)[flat]
        out_ranks.reshape(-1)[cell] = flat % depth
    return Candidates(
        users.astype(np.int64), offsets, u_item.astype(np.int64), out_scores, out_ranks, tuple(sources)
    )


def _merge_one_rrf(
    users: np.ndarray,
    items: np.ndarray,
    scores: np.ndarray,
    sources: tuple[str, ...],
    quotas: np.ndarray,
    n: int,
    rrf_k: float,
) -> Candidates:
    """:func:`merge_rankings` with ``order="rrf"`` for one user (a single request): the same
    candidates, scores and ranks, computed on the ``[n_ch, depth]`` lists directly (``items``
    padded with -1, ``scores`` with NaN) without the batch bookkeeping, which costs several
    times the arithmetic of one user's lists."""
    n_ch, depth = items.shape
    # Sequence order: by rank, then channel; each entry's position in it.
    seq_items = items.T.ravel()
    seq_chan = np.tile(np.arange(n_ch), depth)
    seq_rank = np.repeat(np.arange(depth, dtype=np.float64), n_ch)
    ok = (seq_items >= 0) & (quotas[seq_chan] > 0)
    pos = np.flatnonzero(ok)
    it = seq_items[pos]
    n_items = int(items.max()) + 1 if items.max() >= 0 else 1
    total = np.bincount(it, weights=quotas[seq_chan[pos]] / (rrf_k + seq_rank[pos] + 1.0), minlength=n_items)
    uniq, at = np.unique(it, return_index=True)
    p_first = pos[at]  # each item's first (smallest) position: ``pos`` ascends
    sort_val = -total[uniq] + 1e-12 * (p_first / max(1, n_ch * depth))
    keep = np.lexsort((p_first, sort_val))[:n]
    cand = uniq[keep]
    m = len(cand)
    where = np.full(n_items, -1, dtype=np.int64)
    where[cand] = np.arange(m)
    out_scores = np.full((m, n_ch), np.nan, dtype=np.float32)
    out_ranks = np.full((m, n_ch), np.nan, dtype=np.float32)
    c_idx, j_idx = np.nonzero(items >= 0)
    dest = where[items[c_idx, j_idx]]
    hit = dest >= 0
    out_scores[dest[hit], c_idx[hit]] = scores[c_idx[hit], j_idx[hit]]
    out_ranks[dest[hit], c_idx[hit]] = j_idx[hit]
    return Candidates(
        users.astype(np.int64),
        np.array([0, m], dtype=np.int64),
        cand.astype(np.int64),
        out_scores,
        out_ranks,
        sources,
    )


def _row_order(rows: np.ndarray, primary: np.ndarray, secondary: np.ndarray, b: int) -> np.ndarray:
    """The permutation that sorts entries by ``(rows, primary, secondary)``, for ``rows:
    int[m]`` already ascending (values below ``b``).

    Each row's ``primary`` values are sorted in a padded ``[b, widest row]`` table (one fast
    row-wise sort); ``secondary`` only matters, and a full lexsort only runs, when a row holds
    equal ``primary`` values.
    """
    counts = np.bincount(rows, minlength=b)
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.zeros(b + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    table = padded_rows(offsets, primary)
    width = table.shape[1]
    order = np.argsort(table, axis=1)
    ranked = np.take_along_axis(table, order, axis=1)
    if (
        np.any((ranked[:, 1:] == ranked[:, :-1]) & np.isfinite(ranked[:, 1:]))
        or not np.isfinite(primary).all()
    ):
        return np.lexsort((secondary, primary, rows))
    live = np.arange(width) < counts[:, None]  # sorted rows keep their padding at the end
    return (offsets[:-1, None] + order)[live]


def candidates_to_ranking(c: Candidates, k: int) -> Ranking:
    """The first ``k`` candidates of each user as a :class:`Ranking` (score = ``-position``)."""
    b = len(c.users)
    items = np.full((b, k), -1, dtype=np.int64)
    scores = np.full((b, k), np.nan, dtype=np.float32)
    counts = np.minimum(c.counts(), k)
    for j in range(b):
        lo = int(c.offsets[j])
        items[j, : counts[j]] = c.items[lo : lo + counts[j]]
        scores[j, : counts[j]] = -np.arange(counts[j], dtype=np.float32)
    return Ranking(items, scores)


def candidate_recall(
    candidates: Candidates | Ranking, target_items: np.ndarray, ns: Sequence[int] = (50, 100, 200)
) -> dict[str, float]:
    """Share of users whose target item is among their first ``N`` candidates, for each ``N``.

    ``candidates``: :class:`Candidates` (rows in merged order) or a :class:`Ranking`, one user
    per target; ``target_items: int[n_users]`` aligned with them. Returns ``{"50": r, ...}``
    (string keys, as in ``results.json``); 0.0 for an empty batch.
    """
    targets = np.asarray(target_items, dtype=np.int64)
    ns = [check_n(x, "N") for x in ns]
    if isinstance(candidates, Ranking):
        if candidates.items.shape[0] != len(targets):
            raise DataError(f"{candidates.items.shape[0]} ranking rows for {len(targets)} targets")
        hit = candidates.items == targets[:, None]
        pos = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
    elif isinstance(candidates, Candidates):
        if len(candidates.users) != len(targets):
            raise DataError(f"{len(candidates.users)} candidate users for {len(targets)} targets")
        row = candidates.user_of_row()
        within = np.arange(len(candidates.items)) - candidates.offsets[row]
        hit = candidates.items == targets[row]
        pos = np.full(len(targets), -1, dtype=np.int64)
        hr = row[hit]
        # A user's candidates hold no duplicate, so at most one hit per user.
        pos[hr] = within[hit]
    else:
        raise DataError(f"expected Candidates or Ranking, got {type(candidates).__name__}")
    if len(targets) == 0:
        return {str(x): 0.0 for x in ns}
    return {str(x): float(((pos >= 0) & (pos < x)).mean()) for x in ns}
