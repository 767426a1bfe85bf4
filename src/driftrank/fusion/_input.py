"""What a fuser reads (candidates plus named signals), what it explains, and ranking helpers."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, Self, runtime_checkable

import numpy as np

from driftrank.errors import DataError
from driftrank.types import Candidates, Ranking, padded_rows, top_order

__all__ = [
    "Contributions",
    "Fuser",
    "FusionInput",
    "SignalKind",
    "candidate_metrics",
    "rank_candidates",
    "target_positions",
]

SignalKind = Literal["source", "signal", "item", "user"]


def _float_array(name: str, values: object, ndim: int = 1) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != ndim:
        raise DataError(f"signal {name!r} must be a {ndim}-d array, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"signal {name!r} must hold numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if np.isinf(arr).any():
        raise DataError(f"signal {name!r} holds infinite values; use NaN for 'missing'")
    return arr


@dataclass(frozen=True)
class FusionInput:
    """Everything a fuser scores: a batch of candidates and the named signals beside them.

    Attributes:
        candidates: the retrieval output (:class:`driftrank.types.Candidates`); each of its
            ``sources`` is one signal group (its score and rank columns, NaN = not retrieved).
        signals: per-candidate signals aligned with the candidate rows, ``float[m]`` each (the
            re-ranker score, interest similarity at each time scale, an LLM score, ...);
            NaN = missing for that row.
        item_signals: per-item signals indexed by item index, ``float[>= max item + 1]`` each
            (popularity, item age in days, ...); NaN = unknown for that item.
        user_signals: per-user signals indexed by the values of ``candidates.users``,
            ``float[>= max user + 1]`` each (history length, days since the last event, ...);
            NaN = unknown. For users outside a model's vocabulary build a batch-local array and
            number the users of the candidates ``0..n-1``.

    Every signal name is one group for contributions and ablations, so names must be unique
    across the four kinds. Arrays are converted to float32 views or copies; the caller's arrays
    are never modified.
    """

    candidates: Candidates
    signals: Mapping[str, np.ndarray] = field(default_factory=dict)
    item_signals: Mapping[str, np.ndarray] = field(default_factory=dict)
    user_signals: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        c = self.candidates
        if not isinstance(c, Candidates):
            raise DataError(f"candidates must be a driftrank.types.Candidates, got {type(c).__name__}")
        m = len(c.items)
        off = np.asarray(c.offsets)
        if len(off) and (off[0] != 0 or np.any(np.diff(off) < 0)):
            raise DataError("candidates.offsets must start at 0 and never decrease")
        names = list(c.sources)
        sig = {k: _float_array(k, v) for k, v in self.signals.items()}
        for k, v in sig.items():
            if v.shape[0] != m:
                raise DataError(f"signal {k!r} must have one value per candidate row ({m}), got {v.shape[0]}")
        items = {k: _float_array(k, v) for k, v in self.item_signals.items()}
        max_item = int(c.items.max()) if m else -1
        if m and int(c.items.min()) < 0:
            raise DataError("candidate items must be non-negative item indices (no -1 padding)")
        for k, v in items.items():
            if v.shape[0] <= max_item:
                raise DataError(
                    f"item signal {k!r} covers {v.shape[0]} items, candidates reach item {max_item}"
                )
        users = {k: _float_array(k, v) for k, v in self.user_signals.items()}
        n = len(c.users)
        max_user = int(c.users.max()) if n else -1
        if n and int(c.users.min()) < 0:
            raise DataError("candidate users must be non-negative indices")
        for k, v in users.items():
            if v.shape[0] <= max_user:
                raise DataError(
                    f"user signal {k!r} covers {v.shape[0]} users, candidates reach user {max_user}"
                )
        names += list(sig) + list(items) + list(users)
        dup = sorted({x for x in names if names.count(x) > 1})
        if dup:
            raise DataError(f"signal names must be unique across sources and signals, repeated: {dup}")
        bad = [x for x in names if not x or ":" in x]
        if bad:
            raise DataError(f"signal names must be non-empty and contain no ':', got {bad}")
        object.__setattr__(self, "signals", sig)
        object.__setattr__(self, "item_signals", items)
        object.__setattr__(self, "user_signals", users)

    @classmethod
    def _unchecked(
        cls,
        candidates: Candidates,
        signals: Mapping[str, np.ndarray],
        item_signals: Mapping[str, np.ndarray],
        user_signals: Mapping[str, np.ndarray],
    ) -> FusionInput:
        """An input built without the checks of construction, for the engine's serving path,
        whose inputs are well formed by construction (the checks cost about 0.05 ms of a
        one-user request). Arrays are converted to float32 as construction does."""
        out = object.__new__(cls)
        object.__setattr__(out, "candidates", candidates)
        for name, values in (
            ("signals", signals),
            ("item_signals", item_signals),
            ("user_signals", user_signals),
        ):
            object.__setattr__(
                out, name, {k: np.asarray(v).astype(np.float32, copy=False) for k, v in values.items()}
            )
        return out

    @property
    def n_rows(self) -> int:
        """Number of candidate rows ``m``."""
        return len(self.candidates.items)

    @property
    def groups(self) -> dict[str, SignalKind]:
        """Every signal group in a fixed order (sources, signals, item, user) with its kind."""
        out: dict[str, SignalKind] = dict.fromkeys(self.candidates.sources, "source")
        out.update(dict.fromkeys(self.signals, "signal"))
        out.update(dict.fromkeys(self.item_signals, "item"))
        out.update(dict.fromkeys(self.user_signals, "user"))
        return out

    def keep(self, groups: Collection[str]) -> FusionInput:
        """The same candidates with only the named signal groups (the candidate rows are unchanged)."""
        unknown = sorted(set(groups) - set(self.groups))
        if unknown:
            raise DataError(f"unknown signal groups {unknown}; this input has {list(self.groups)}")
        keep = set(groups)
        c = self.candidates
        cols = [i for i, s in enumerate(c.sources) if s in keep]
        cand = Candidates(
            users=c.users,
            offsets=c.offsets,
            items=c.items,
            scores=c.scores[:, cols],
            ranks=c.ranks[:, cols],
            sources=tuple(c.sources[i] for i in cols),
        )
        return FusionInput(
            cand,
            {k: v for k, v in self.signals.items() if k in keep},
            {k: v for k, v in self.item_signals.items() if k in keep},
            {k: v for k, v in self.user_signals.items() if k in keep},
        )

    def drop(self, groups: Collection[str]) -> FusionInput:
        """The same candidates without the named signal groups."""
        unknown = sorted(set(groups) - set(self.groups))
        if unknown:
            raise DataError(f"unknown signal groups {unknown}; this input has {list(self.groups)}")
        return self.keep([g for g in self.groups if g not in set(groups)])

    def subset(self, positions: np.ndarray) -> FusionInput:
        """The users at ``positions: int[k]`` of the batch (in that order) with their candidate rows."""
        c = self.candidates
        pos = np.asarray(positions, dtype=np.int64)
        if pos.ndim != 1 or (pos.size and (pos.min() < 0 or pos.max() >= len(c.users))):
            raise DataError(f"positions must be a 1-d array of batch positions in [0, {len(c.users)})")
        counts = c.counts()[pos]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        rows = (
            np.concatenate([np.arange(c.offsets[p], c.offsets[p + 1]) for p in pos]).astype(np.int64)
            if pos.size
            else np.zeros(0, dtype=np.int64)
        )
        cand = Candidates(
            users=c.users[pos],
            offsets=offsets,
            items=c.items[rows],
            scores=c.scores[rows],
            ranks=c.ranks[rows],
            sources=c.sources,
        )
        return FusionInput(
            cand, {k: v[rows] for k, v in self.signals.items()}, self.item_signals, self.user_signals
        )


@dataclass(frozen=True)
class Contributions:
    """How much each signal group added to each candidate's fused score.

    ``values: float32[m, n_groups]`` (columns named by ``groups``) and ``base: float32[m]``
    (what the fuser gives a candidate when every signal is missing) add up to the score:
    ``base + values.sum(1) == score`` up to float rounding. ``method`` names the attribution.
    """

    groups: tuple[str, ...]
    values: np.ndarray
    base: np.ndarray
    method: str

    def total(self) -> np.ndarray:
        """``float32[m]``: ``base`` plus every group's contribution (equals the fused score)."""
        return (self.base.astype(np.float64) + self.values.astype(np.float64).sum(axis=1)).astype(np.float32)

    def of(self, group: str) -> np.ndarray:
        """``float32[m]`` contribution of one group."""
        if group not in self.groups:
            raise DataError(f"unknown signal group {group!r}; known: {list(self.groups)}")
        return self.values[:, self.groups.index(group)]


@runtime_checkable
class Fuser(Protocol):
    """Turns per-candidate signals into one score per candidate."""

    def fit(self, inputs: FusionInput, targets: np.ndarray) -> Self:
        """Learn from held-out targets: ``targets: int[n_users]`` item per user of the batch, -1 = none."""
        ...

    def score(self, inputs: FusionInput) -> np.ndarray:
        """``float32[m]`` fused score of every candidate row (higher is better)."""
        ...

    def explain(self, inputs: FusionInput, rows: np.ndarray | None = None) -> Contributions:
        """Per-group contributions for the candidate ``rows: int[r]`` (default: all rows)."""
        ...


def _order(candidates: Candidates, scores: np.ndarray) -> np.ndarray:
    """Row order: by user position, then score descending (-inf after every finite score, NaN
    after that), then item index ascending."""
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (len(candidates.items),):
        raise DataError(f"scores must be float[{len(candidates.items)}], got shape {s.shape}")
    nan = np.isnan(s)
    return np.lexsort((candidates.items, np.where(nan, 0.0, -s), nan, candidates.user_of_row()))


def _top_rows(candidates: Candidates, scores: np.ndarray, k: int) -> np.ndarray | None:
    """``int64[n_users, k]`` candidate rows of each user's top ``k`` (-1 padding) by a partial
    sort of a padded ``[n_users, widest]`` score table, or ``None`` when two finite scores of a
    user are equal within or at the edge of the top ``k`` (their order is then by item index,
    which only :func:`_order` knows) or infinite (ranked after the finite ones, ties by item)."""
    n = len(candidates.users)
    counts = candidates.counts()
    width = int(counts.max()) if n else 0
    rows = np.full((n, k), -1, dtype=np.int64)
    if width == 0:
        return rows
    key = np.negative(np.asarray(scores, dtype=np.float64))
    if np.isinf(key).any():
        return None
    key[np.isnan(key)] = np.inf
    table = padded_rows(candidates.offsets, key)
    kk = min(k + 1, width)  # one past k shows a tie at the edge
    cols = top_order(table, kk)
    top = np.take_along_axis(table, cols, axis=1)
    if np.any((top[:, 1:] == top[:, :-1]) & np.isfinite(top[:, 1:])):
        return None
    keep = min(k, width)
    found = np.isfinite(top[:, :keep])
    rows[:, :keep] = np.where(found, candidates.offsets[:-1, None] + cols[:, :keep], -1)
    return rows


def rank_candidates(candidates: Candidates, scores: np.ndarray, k: int) -> tuple[Ranking, np.ndarray]:
    """Top-``k`` candidates of each user by ``scores: float[m]``; ties go to the lower item index.

    Returns the :class:`~driftrank.types.Ranking` (``int64[n_users, k]``, -1/NaN padded) and
    ``rows: int64[n_users, k]``, the candidate row of each ranked item (-1 at padding), so
    contributions or signals can be read for exactly the items shown. NaN scores are never ranked.
    """
    if not isinstance(k, int | np.integer) or k <= 0:
        raise DataError(f"k must be a positive integer, got {k!r}")
    n = len(candidates.users)
    s = np.asarray(scores, dtype=np.float32)
    if np.shape(scores) != (len(candidates.items),):
        raise DataError(f"scores must be float[{len(candidates.items)}], got shape {np.shape(scores)}")
    rows = _top_rows(candidates, scores, k)
    if rows is None:  # equal scores where they decide the order: sort by item as well
        order = _order(candidates, scores)
        # ``order`` is grouped by user, so user j's sorted rows sit at offsets[j]:offsets[j+1]
        pos_in_user = np.arange(len(order)) - np.repeat(candidates.offsets[:-1], candidates.counts())
        take = pos_in_user < k
        sel = order[take]
        rows = np.full((n, k), -1, dtype=np.int64)
        rows[candidates.user_of_row()[sel], pos_in_user[take]] = sel
    valid = rows >= 0
    valid[valid] = ~np.isnan(s[rows[valid]])
    rows[~valid] = -1
    items = np.full((n, k), -1, dtype=np.int64)
    items[valid] = candidates.items[rows[valid]]
    out = np.full((n, k), np.nan, dtype=np.float32)
    out[valid] = s[rows[valid]]
    return Ranking(items, out), rows


def target_positions(candidates: Candidates, scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each user's target among their candidates by ``scores``, or -1 when absent.

    ``targets: int[n_users]`` (-1 = no target). Ties are broken as in :func:`rank_candidates`.
    """
    t = np.asarray(targets, dtype=np.int64)
    n = len(candidates.users)
    if t.shape != (n,):
        raise DataError(f"targets must be int[{n}] (one item per user of the batch), got shape {t.shape}")
    order = _order(candidates, scores)
    user_of = candidates.user_of_row()
    pos_in_user = np.empty(len(order), dtype=np.int64)
    pos_in_user[order] = np.arange(len(order)) - np.repeat(candidates.offsets[:-1], candidates.counts())
    hit = candidates.items == t[user_of]
    out = np.full(n, -1, dtype=np.int64)
    out[user_of[hit]] = pos_in_user[hit]
    return out


def target_rows(candidates: Candidates, targets: np.ndarray) -> np.ndarray:
    """``int64[n_users]`` candidate row of each user's target, -1 when it is not a candidate."""
    t = np.asarray(targets, dtype=np.int64)
    n = len(candidates.users)
    if t.shape != (n,):
        raise DataError(f"targets must be int[{n}] (one item per user of the batch), got shape {t.shape}")
    user_of = candidates.user_of_row()
    hit = np.flatnonzero(candidates.items == t[user_of])
    out = np.full(n, -1, dtype=np.int64)
    out[user_of[hit]] = hit
    return out


def candidate_metrics(
    candidates: Candidates, scores: np.ndarray, targets: np.ndarray, ks: tuple[int, ...] = (10,)
) -> dict[str, float]:
    """Mean ``HR@k``, ``NDCG@k`` and ``MRR@k`` over the users with a target (``targets >= 0``).

    A target that is not among the user's candidates counts as a miss, so on candidates from a
    full-catalog retrieval these are full-catalog metrics. Also returns ``recall`` (share of
    those users whose target is a candidate) and ``n_users``.
    """
    from driftrank.eval import metrics_at

    t = np.asarray(targets, dtype=np.int64)
    pos = target_positions(candidates, scores, t)
    has = t >= 0
    out: dict[str, float] = {"n_users": float(has.sum())}
    for k in ks:
        for name, v in metrics_at(pos[has], k).items():
            out[name] = float(v.mean()) if v.size else float("nan")
    out["recall"] = float((pos[has] >= 0).mean()) if has.any() else float("nan")
    return out
