"""Chronological offline A/B replay of an interaction log."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from driftrank._progress import bar as progress_bar
from driftrank.data import Dataset
from driftrank.errors import ConfigError
from driftrank.eval import PairedComparison, bootstrap_ci, metrics_at, paired_bootstrap, target_ranks
from driftrank.replay._online import Configuration, OnlineRanker
from driftrank.replay._report import METRICS, Curve, ReplayReport, SideTiming
from driftrank.types import Ranking

__all__ = ["ReplayConfig", "replay"]

Update = Literal["window", "event"]
CIUnit = Literal["event", "user"]


@dataclass(frozen=True)
class ReplayConfig:
    """Settings of a :func:`replay`.

    Attributes:
        start_fraction: the replay starts at the time of the event at this quantile of the log
            (events sorted by time, ties by source row); everything strictly earlier is the
            initial training set. Default (when ``start_time`` is not given either) 0.8: fit on
            the first 80% of the log, replay the rest.
        start_time: an absolute start (unix seconds) instead of ``start_fraction``.
        window_events: events per report window (the unit of the curves). Default (when
            ``window_seconds`` is not given either) 1000. A remainder of fewer than half a window
            at the end of the log joins the last full window.
        window_seconds: windows of fixed duration instead (e.g. ``86400`` for days); empty
            windows are left out.
        k: length of each ranked list; metrics are HR@k, NDCG@k, MRR@k.
        update: ``"window"``: every event of a window is ranked before the models observe any
            of them (a model deployed once per window, as in a batch-updated system);
            ``"event"``: each event is ranked, then observed, one at a time (fully online, one
            ``rank`` call per event: slow for expensive models).
        refit_every: after every this many windows, refit both models from scratch on every
            event so far; ``None`` never refits (models only ``observe``).
        max_windows: stop after this many windows (``None`` = until the log ends).
        list_reuse: with ``update="window"``, rank each user once per window (at their first
            event of it, ``k + n - 1`` items for a user with ``n`` events in the window) and
            serve each later event of theirs that list minus the user's earlier events of the
            window, cut to ``k``. Far fewer ``rank`` calls on logs where users have sessions of
            many events (ml-100k), at the price of ignoring ``at`` changes within a window and
            assuming that excluding items does not reorder the others (true of score-sorted
            rankers). ``False`` ranks every event with its exact exclusion (in rounds).
        exclude_seen: never recommend an item the user has interacted with before the event;
            events that repeat such an item cannot be hit and are then not scored (they are
            still observed).
        n_boot, level: bootstrap resamples and confidence level of every interval.
        ci_unit: resampling unit of the overall paired comparison (always of the mean over
            events): ``"event"`` resamples events as if independent; ``"user"`` resamples whole
            users with all their events (a cluster bootstrap), which accounts for one user's
            events being correlated: wider, more honest intervals when users have many events.
        batch_size: most users per ``rank`` call.
        seed: passed to each configuration's factory and used for every bootstrap.
    """

    start_fraction: float | None = None
    start_time: float | None = None
    window_events: int | None = None
    window_seconds: float | None = None
    k: int = 10
    update: Update = "window"
    list_reuse: bool = False
    refit_every: int | None = None
    max_windows: int | None = None
    exclude_seen: bool = True
    n_boot: int = 1000
    level: float = 0.95
    ci_unit: CIUnit = "event"
    batch_size: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        # Neither given: the defaults (start at 80% of the log, windows of 1000 events).
        if self.start_fraction is None and self.start_time is None:
            object.__setattr__(self, "start_fraction", 0.8)
        if self.window_events is None and self.window_seconds is None:
            object.__setattr__(self, "window_events", 1000)
        if (self.start_fraction is None) == (self.start_time is None):
            raise ConfigError(
                "set exactly one of start_fraction and start_time, got "
                f"start_fraction={self.start_fraction}, start_time={self.start_time}"
            )
        if self.start_fraction is not None and not 0.0 < self.start_fraction < 1.0:
            raise ConfigError(f"start_fraction must be in (0, 1), got {self.start_fraction}")
        if self.start_time is not None and not math.isfinite(self.start_time):
            raise ConfigError(f"start_time must be a finite unix time, got {self.start_time}")
        if (self.window_events is None) == (self.window_seconds is None):
            raise ConfigError(
                "set exactly one of window_events and window_seconds, got "
                f"window_events={self.window_events}, window_seconds={self.window_seconds}"
            )
        if self.window_events is not None and not (
            isinstance(self.window_events, int) and self.window_events > 0
        ):
            raise ConfigError(f"window_events must be a positive integer, got {self.window_events!r}")
        if self.window_seconds is not None and not self.window_seconds > 0:
            raise ConfigError(f"window_seconds must be positive, got {self.window_seconds}")
        _positive_int("k", self.k)
        _positive_int("batch_size", self.batch_size)
        _positive_int("n_boot", self.n_boot)
        if self.refit_every is not None:
            _positive_int("refit_every", self.refit_every)
        if self.max_windows is not None:
            _positive_int("max_windows", self.max_windows)
        if self.update not in ("window", "event"):
            raise ConfigError(f"update must be 'window' or 'event', got {self.update!r}")
        if self.list_reuse and self.update != "window":
            raise ConfigError("list_reuse needs update='window' (with update='event' every event is ranked)")
        if self.ci_unit not in ("event", "user"):
            raise ConfigError(f"ci_unit must be 'event' or 'user', got {self.ci_unit!r}")
        if not 0.0 < self.level < 1.0:
            raise ConfigError(f"level must be in (0, 1), got {self.level}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of the settings."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ReplayConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown replay option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


# ---------------------------------------------------------------------- the log in time order
@dataclass(frozen=True)
class _Timeline:
    """The interaction rows of a dataset in global time order, cut into train and windows."""

    order: np.ndarray  # int64[n] frame positions, oldest first (ties by source row)
    n_train: int  # order[:n_train] is the initial training set
    bounds: np.ndarray  # int64[n_windows + 1] offsets into order[n_train:]
    repeat: np.ndarray  # bool[n] per frame position: the user had this item before

    @property
    def n_windows(self) -> int:
        return len(self.bounds) - 1

    def window(self, w: int) -> np.ndarray:
        return self.order[self.n_train + self.bounds[w] : self.n_train + self.bounds[w + 1]]


def _timeline(ds: Dataset, cfg: ReplayConfig) -> _Timeline:
    ts = ds.timestamps
    n = len(ts)
    if n == 0:
        raise ConfigError("the dataset has no interactions to replay")
    order = np.lexsort((ds.interactions["row"].to_numpy(), ts)).astype(np.int64)
    sorted_ts = ts[order]
    if cfg.start_time is not None:
        start = float(cfg.start_time)
    else:
        assert cfg.start_fraction is not None
        start = float(sorted_ts[min(n - 1, math.floor(cfg.start_fraction * n))])
    n_train = int(np.searchsorted(sorted_ts, start, side="left"))
    if n_train == 0:
        raise ConfigError(
            f"no events before the replay start ({start}); the first event is at {sorted_ts[0]}: "
            "choose a later start"
        )
    if n_train == n:
        raise ConfigError(f"no events at or after the replay start ({start}); the last is at {sorted_ts[-1]}")
    rest = sorted_ts[n_train:]
    if cfg.window_events is not None:
        bounds = np.arange(0, len(rest), cfg.window_events, dtype=np.int64)
        if len(bounds) > 1 and len(rest) - bounds[-1] < cfg.window_events / 2:
            # A short remainder would make a last point with a huge interval: merge it.
            bounds = bounds[:-1]
        bounds = np.append(bounds, len(rest))
    else:
        assert cfg.window_seconds is not None
        bins = np.floor((rest - start) / cfg.window_seconds).astype(np.int64)
        change = np.flatnonzero(np.diff(bins)) + 1  # empty windows vanish: only non-empty bins
        bounds = np.concatenate([[0], change, [len(rest)]]).astype(np.int64)
    if cfg.max_windows is not None:
        bounds = bounds[: cfg.max_windows + 1]
    # An event repeats if its (user, item) pair occurred earlier in time order.
    key = ds.user_index[order].astype(np.int64) * ds.n_items + ds.item_index[order]
    _, first = np.unique(key, return_index=True)
    repeat_sorted = np.ones(n, dtype=bool)
    repeat_sorted[first] = False
    repeat = np.empty(n, dtype=bool)
    repeat[order] = repeat_sorted
    return _Timeline(order, n_train, bounds, repeat)


# ---------------------------------------------------------------------- one side of the A/B
class _Side:
    """A model plus its timing counters."""

    def __init__(self, config: Configuration, seed: int) -> None:
        self.name = config.name
        self.model: OnlineRanker = config.build(seed)
        self.timing = SideTiming()

    def fit(self, ds: Dataset) -> None:
        t = time.perf_counter()
        self.model.fit(ds)
        self.timing.fit_seconds += time.perf_counter() - t
        self.timing.n_fits += 1

    def rank(
        self, users: np.ndarray, k: int, exclude: sp.csr_matrix, at: np.ndarray, batch: int
    ) -> np.ndarray:
        out = np.full((len(users), k), -1, dtype=np.int64)
        t = time.perf_counter()
        for s in range(0, len(users), batch):
            e = min(len(users), s + batch)
            r: Ranking = self.model.rank(users[s:e], k, exclude=exclude, at=at[s:e])
            if r.items.shape != (e - s, k):
                raise ValueError(f"{self.name}: rank returned shape {r.items.shape}, expected {(e - s, k)}")
            out[s:e] = r.items
        self.timing.rank_seconds += time.perf_counter() - t
        self.timing.n_ranked += len(users)
        return out

    def observe(self, users: np.ndarray, items: np.ndarray, ts: np.ndarray) -> None:
        t = time.perf_counter()
        self.model.observe(users, items, ts)
        self.timing.observe_seconds += time.perf_counter() - t


@dataclass
class _Step:
    """The events of one rank-then-observe step (arrays aligned, time order)."""

    rows: np.ndarray
    users: np.ndarray
    items: np.ndarray
    ts: np.ndarray


def _rank_step(
    sides: tuple[_Side, _Side],
    step: _Step,
    seen: sp.csr_matrix,
    cfg: ReplayConfig,
    prior: tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Rank every event of ``step`` with both models, which have not observed any of them.

    ``seen`` holds everything before the current window, ``prior`` the ``(users, items)`` of
    the window's events before this step. A user can have several events in one step; they
    are ranked in rounds (the user's 1st event of the step, then the 2nd, ...) so that each
    event's exclusion holds exactly that user's events before it. Rows of users outside a
    round hold their history before the window.
    """
    m = len(step.rows)
    k = cfg.k
    lists = (np.full((m, k), -1, dtype=np.int64), np.full((m, k), -1, dtype=np.int64))
    occ = _occurrence(step.users)
    if cfg.list_reuse and m:
        _rank_reusing_lists(sides, step, occ, seen, cfg, lists)
        return lists
    n_users, n_items = seen.shape
    # Earlier events of the window, then this step's; prior ones precede every round.
    all_users = np.concatenate([prior[0], step.users])
    all_items = np.concatenate([prior[1], step.items])
    all_occ = np.concatenate([np.full(len(prior[0]), -1, dtype=np.int64), occ])
    for r in range(int(occ.max()) + 1 if m else 0):
        now = np.flatnonzero(occ == r)
        if cfg.exclude_seen:
            in_round = np.zeros(n_users, dtype=bool)
            in_round[step.users[now]] = True
            earlier = (all_occ < r) & in_round[all_users]
            exclude = _extend_rows(seen, all_users[earlier], all_items[earlier]) if earlier.any() else seen
        else:
            exclude = sp.csr_matrix((n_users, n_items), dtype=np.float32)
        for side, out in zip(sides, lists):
            out[now] = side.rank(step.users[now], k, exclude, step.ts[now], cfg.batch_size)
    return lists


def _extend_rows(seen: sp.csr_matrix, users: np.ndarray, items: np.ndarray) -> sp.csr_matrix:
    """``seen`` with ``items[j]`` added to row ``users[j]``, built by splicing the CSR arrays
    (O(nnz) memory copies; scipy's sparse addition costs ~10x more per call, which adds up to
    most of the replay time when every event is its own step)."""
    order = np.argsort(users, kind="stable")
    users, items = users[order], items[order]
    indices = np.insert(seen.indices, seen.indptr[users + 1], items.astype(seen.indices.dtype))
    counts = np.bincount(users, minlength=seen.shape[0])
    indptr = seen.indptr.copy()
    indptr[1:] += np.cumsum(counts).astype(indptr.dtype)
    data = np.ones(len(indices), dtype=np.float32)
    return sp.csr_matrix((data, indices, indptr), shape=seen.shape)


def _rank_reusing_lists(
    sides: tuple[_Side, _Side],
    step: _Step,
    occ: np.ndarray,
    seen: sp.csr_matrix,
    cfg: ReplayConfig,
    lists: tuple[np.ndarray, np.ndarray],
) -> None:
    """``list_reuse``: one list per user of the step, trimmed per event (see ReplayConfig)."""
    k = cfg.k
    first = np.flatnonzero(occ == 0)
    users = step.users[first]
    n_ev = np.bincount(step.users, minlength=int(users.max()) + 1)[users]
    # Users needing longer lists are grouped into a few length buckets (powers of two) so the
    # number of rank calls stays logarithmic in the longest session.
    extra = n_ev - 1 if cfg.exclude_seen else np.zeros_like(n_ev)
    bucket = np.where(extra > 0, 2 ** np.ceil(np.log2(np.maximum(extra, 1))).astype(np.int64), 0)
    exclude = seen if cfg.exclude_seen else sp.csr_matrix(seen.shape, dtype=np.float32)
    pos_of_user = {int(u): j for j, u in enumerate(users)}
    by_user: dict[int, list[int]] = {}
    for j, u in enumerate(step.users.tolist()):
        by_user.setdefault(u, []).append(j)
    for side, out in zip(sides, lists):
        full: list[np.ndarray | None] = [None] * len(users)
        for bk in np.unique(bucket):
            sel = np.flatnonzero(bucket == bk)
            ranked = side.rank(users[sel], k + int(bk), exclude, step.ts[first[sel]], cfg.batch_size)
            for j, row in zip(sel.tolist(), ranked):
                full[j] = row
        for u, events in by_user.items():
            row = full[pos_of_user[u]]
            assert row is not None
            ev = np.asarray(events)
            if not cfg.exclude_seen or len(ev) == 1:
                out[ev] = row[:k]
                continue
            # first[q]: index among the user's window events at which list item q occurs (n if
            # never); event r keeps the list items not among its r predecessors.
            its = step.items[ev]
            sorter = np.argsort(its, kind="stable")
            at = np.minimum(np.searchsorted(its[sorter], row), len(ev) - 1)
            first_occ = np.where(its[sorter][at] == row, sorter[at], len(ev))
            keep = first_occ[None, :] >= np.arange(len(ev))[:, None]
            slot = np.cumsum(keep, axis=1) - 1
            put = keep & (slot < k)
            r_idx, q_idx = np.nonzero(put)
            out[ev[r_idx], slot[r_idx, q_idx]] = row[q_idx]


def _observe_step(sides: tuple[_Side, _Side], step: _Step) -> None:
    for side in sides:
        side.observe(step.users, step.items, step.ts)


def _run_step(
    sides: tuple[_Side, _Side],
    step: _Step,
    seen: sp.csr_matrix,
    cfg: ReplayConfig,
    score: bool,
    prior: tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray] | None:
    """Rank (when scored), then observe: the order that keeps each event out of its own ranking."""
    lists = _rank_step(sides, step, seen, cfg, prior) if score else None
    _observe_step(sides, step)
    return lists


def _occurrence(users: np.ndarray) -> np.ndarray:
    """``int64[m]``: how many earlier entries of ``users`` equal each entry (0 for the first)."""
    m = len(users)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(users, kind="stable")
    su = users[order]
    starts = np.r_[0, np.flatnonzero(np.diff(su)) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, m]))
    occ = np.empty(m, dtype=np.int64)
    occ[order] = np.arange(m) - group_start
    return occ


def _add_events(seen: sp.csr_matrix, users: np.ndarray, items: np.ndarray) -> sp.csr_matrix:
    delta = sp.csr_matrix(
        (np.ones(len(users), dtype=np.float32), (users, items)), shape=seen.shape, dtype=np.float32
    )
    out = (seen + delta).tocsr()
    out.data[:] = 1.0
    return out


def _user_bootstrap(
    va: np.ndarray, vb: np.ndarray, users: np.ndarray, cfg: ReplayConfig, seed: int
) -> PairedComparison:
    """Paired comparison of the per-event means, resampling whole users (a cluster bootstrap):
    the estimand stays the mean over events, while the interval accounts for one user's events
    being correlated. ``n`` is the number of users; the p-value is computed as in
    :func:`driftrank.eval.paired_bootstrap` (centred bootstrap distribution)."""
    _, inv = np.unique(users, return_inverse=True)
    n_users = int(inv.max()) + 1
    count = np.bincount(inv, minlength=n_users).astype(np.float64)
    diff_sum = np.bincount(inv, weights=vb - va, minlength=n_users)
    observed = float((vb - va).mean())
    rng = np.random.default_rng(seed)
    means = np.empty(cfg.n_boot)
    chunk = max(1, 2_000_000 // n_users)
    for s in range(0, cfg.n_boot, chunk):
        e = min(cfg.n_boot, s + chunk)
        idx = rng.integers(0, n_users, size=(e - s, n_users))
        means[s:e] = diff_sum[idx].sum(axis=1) / count[idx].sum(axis=1)
    alpha = (1.0 - cfg.level) / 2.0
    p = float((np.sum(np.abs(means - observed) >= abs(observed)) + 1) / (cfg.n_boot + 1))
    return PairedComparison(
        float(va.mean()), float(vb.mean()), observed,
        float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)), min(1.0, p), n_users,
    )  # fmt: skip


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


# ---------------------------------------------------------------------- the replay
def replay(
    a: Configuration,
    b: Configuration,
    dataset: Dataset,
    config: ReplayConfig | None = None,
    *,
    windows: Iterable[int] | None = None,
    progress: bool = False,
    **options: Any,
) -> ReplayReport:
    """Replay ``dataset`` in time order and compare configurations ``a`` and ``b`` on it.

    Both models are built with ``config.seed`` and fitted on every event before the start;
    then, window after window, each model ranks the top-``k`` for each event's user at the
    event's time (never having observed that event: see ``ReplayConfig.update``), excluding
    what the user had seen before, and then ``observe``\\ s the events. An event scores a hit
    when its item is in the list. Optionally both models are refitted from scratch every
    ``refit_every`` windows on everything so far.

    Args:
        a, b: the configurations to compare (differences are ``b - a``).
        dataset: the log; its ``timestamp`` column defines the order (ties by source row).
        config: the settings; keyword ``options`` override its fields
            (``replay(a, b, ds, window_events=500, k=20)``).
        windows: score only these window indices (0-based). Earlier windows are still walked
            through (observed, refitted on the same schedule) without ranking, so the selected
            windows get exactly the numbers of a full run, at a fraction of its cost.
        progress: show a progress bar over windows.

    Returns:
        A :class:`ReplayReport` with per-window curves (mean and bootstrap CI of HR/NDCG/MRR
        for a, b and their paired difference), overall paired comparisons, coverage, novelty
        and timing.
    """
    cfg = config or ReplayConfig()
    if options:
        known = {f.name for f in dataclasses.fields(ReplayConfig)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown replay option(s) {unknown}; known: {sorted(known)}")
        # Giving one of a pair of alternatives replaces the other.
        for one, other in (("start_time", "start_fraction"), ("window_seconds", "window_events")):
            for x, y in ((one, other), (other, one)):
                if options.get(x) is not None and y not in options:
                    options[y] = None
        cfg = dataclasses.replace(cfg, **options)
    for c, label in ((a, "a"), (b, "b")):
        if not isinstance(c, Configuration):
            raise ConfigError(f"{label} must be a Configuration, got {type(c).__name__}")

    tl = _timeline(dataset, cfg)
    if windows is None:
        selected = np.arange(tl.n_windows)
    else:
        selected = np.unique(np.asarray(list(windows), dtype=np.int64))
        if selected.size == 0:
            raise ConfigError("windows selects nothing; pass None for all windows")
        if selected.min() < 0 or selected.max() >= tl.n_windows:
            raise ConfigError(
                f"windows must be in [0, {tl.n_windows}) for this log and config, got {selected.tolist()}"
            )
    last = int(selected.max())
    want = set(selected.tolist())

    train_mask = np.zeros(dataset.n_interactions, dtype=bool)
    train_mask[tl.order[: tl.n_train]] = True
    train = dataset.filter_rows(train_mask)
    sides = (_Side(a, cfg.seed), _Side(b, cfg.seed))
    for side in sides:
        side.fit(train)
    seen = train.seen.astype(np.float32)
    counts = train.item_popularity.astype(np.float64)

    users_all = dataset.user_index.astype(np.int64)
    items_all = dataset.item_index.astype(np.int64)
    ts_all = dataset.timestamps
    ev_rows: list[np.ndarray] = []
    ev_win: list[np.ndarray] = []
    ev_ranks: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    win_cov: tuple[list[float], list[float]] = ([], [])
    win_nov: tuple[list[float], list[float]] = ([], [])
    win_info: list[tuple[int, float, float, int, int]] = []
    all_items: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    nov_sum = [0.0, 0.0]
    nov_n = [0, 0]
    n_items = dataset.n_items

    bar = progress_bar(range(last + 1), enabled=progress, desc="replay", unit="window")
    for w in bar:
        rows = tl.window(w)
        score = w in want
        steps = [rows] if cfg.update == "window" else [rows[j : j + 1] for j in range(len(rows))]
        lists_w: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
        # Novelty is measured against what was known at the window start.
        info = -np.log2((counts + 1.0) / (counts.sum() + n_items))
        done = 0  # events of this window already processed (the "prior" of the next step)
        for step_rows in steps:
            step = _Step(step_rows, users_all[step_rows], items_all[step_rows], ts_all[step_rows])
            prior = (users_all[rows[:done]], items_all[rows[:done]])
            lists = _run_step(sides, step, seen, cfg, score, prior)
            done += len(step_rows)
            if lists is not None:
                for j in range(2):
                    lists_w[j].append(lists[j])
        seen = _add_events(seen, users_all[rows], items_all[rows])
        np.add.at(counts, items_all[rows], 1.0)
        if score:
            scored = ~tl.repeat[rows] if cfg.exclude_seen else np.ones(len(rows), dtype=bool)
            ev_rows.append(rows[scored])
            ev_win.append(np.full(int(scored.sum()), w, dtype=np.int64))
            for j in range(2):
                ranked = np.concatenate(lists_w[j]) if lists_w[j] else np.zeros((0, cfg.k), np.int64)
                ev_ranks[j].append(target_ranks(ranked[scored], items_all[rows][scored]))
                shown = ranked[ranked >= 0]
                all_items[j].append(np.unique(shown))
                win_cov[j].append(float(np.unique(shown).size / max(1, n_items)))
                win_nov[j].append(float(info[shown].mean()) if shown.size else float("nan"))
                nov_sum[j] += float(info[shown].sum())
                nov_n[j] += int(shown.size)
            win_info.append(
                (w, float(ts_all[rows[0]]), float(ts_all[rows[-1]]), int(scored.sum()), int((~scored).sum()))
            )
        if cfg.refit_every is not None and (w + 1) % cfg.refit_every == 0 and w < last:
            upto = tl.n_train + int(tl.bounds[w + 1])
            mask = np.zeros(dataset.n_interactions, dtype=bool)
            mask[tl.order[:upto]] = True
            so_far = dataset.filter_rows(mask)
            for side in sides:
                side.fit(so_far)
    bar.close()

    return _build_report(
        a.name,
        b.name,
        dataset,
        cfg,
        tl,
        ev_rows,
        ev_win,
        ev_ranks,
        win_info,
        win_cov,
        win_nov,
        all_items,
        nov_sum,
        nov_n,
        sides,
    )


def _build_report(
    name_a: str,
    name_b: str,
    dataset: Dataset,
    cfg: ReplayConfig,
    tl: _Timeline,
    ev_rows: list[np.ndarray],
    ev_win: list[np.ndarray],
    ev_ranks: tuple[list[np.ndarray], list[np.ndarray]],
    win_info: list[tuple[int, float, float, int, int]],
    win_cov: tuple[list[float], list[float]],
    win_nov: tuple[list[float], list[float]],
    all_items: tuple[list[np.ndarray], list[np.ndarray]],
    nov_sum: list[float],
    nov_n: list[int],
    sides: tuple[_Side, _Side],
) -> ReplayReport:
    rows = np.concatenate(ev_rows) if ev_rows else np.zeros(0, np.int64)
    win = np.concatenate(ev_win) if ev_win else np.zeros(0, np.int64)
    per_event: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] = (
        metrics_at(np.concatenate(ev_ranks[0]) if ev_ranks[0] else np.zeros(0, np.int64), cfg.k),
        metrics_at(np.concatenate(ev_ranks[1]) if ev_ranks[1] else np.zeros(0, np.int64), cfg.k),
    )
    w_index = np.array([x[0] for x in win_info], dtype=np.int64)
    curves: dict[str, dict[str, Curve]] = {}
    overall = {}
    users = dataset.user_index[rows].astype(np.int64)
    for mi, base in enumerate(METRICS):
        name = f"{base}@{cfg.k}"
        va, vb = per_event[0][name], per_event[1][name]
        cols: dict[str, list[tuple[float, float, float]]] = {"a": [], "b": [], "diff": []}
        for w in w_index:
            sel = win == w
            xa, xb = va[sel], vb[sel]
            if not xa.size:
                nan = float("nan")
                for key in cols:
                    cols[key].append((nan, nan, nan))
                continue
            s = _seed(cfg.seed, int(w), mi)
            lo, hi = bootstrap_ci(xa, n_boot=cfg.n_boot, level=cfg.level, seed=s)
            cols["a"].append((float(xa.mean()), lo, hi))
            lo, hi = bootstrap_ci(xb, n_boot=cfg.n_boot, level=cfg.level, seed=s + 1)
            cols["b"].append((float(xb.mean()), lo, hi))
            pc = paired_bootstrap(xa, xb, n_boot=cfg.n_boot, level=cfg.level, seed=s + 2)
            cols["diff"].append((pc.diff, pc.ci_low, pc.ci_high))
        curves[name] = {key: Curve.from_rows(v) for key, v in cols.items()}
        if cfg.ci_unit == "user" and rows.size:
            overall[name] = _user_bootstrap(va, vb, users, cfg, _seed(cfg.seed, mi))
        else:
            overall[name] = paired_bootstrap(
                va, vb, n_boot=cfg.n_boot, level=cfg.level, seed=_seed(cfg.seed, mi)
            )
    n_items = dataset.n_items
    cov_all = tuple(
        float(np.unique(np.concatenate(x)).size / max(1, n_items)) if x else float("nan") for x in all_items
    )
    nov_all = tuple(s / n if n else float("nan") for s, n in zip(nov_sum, nov_n))
    return ReplayReport(
        names=(name_a, name_b),
        dataset=dataset.name,
        config=cfg,
        start_time=float(dataset.timestamps[tl.order[tl.n_train]]),
        n_train_events=tl.n_train,
        n_windows_total=tl.n_windows,
        windows=w_index,
        window_start=np.array([x[1] for x in win_info], dtype=np.float64),
        window_end=np.array([x[2] for x in win_info], dtype=np.float64),
        window_events=np.array([x[3] for x in win_info], dtype=np.int64),
        window_skipped=np.array([x[4] for x in win_info], dtype=np.int64),
        curves=curves,
        overall=overall,
        coverage=(np.array(win_cov[0]), np.array(win_cov[1])),
        novelty=(np.array(win_nov[0]), np.array(win_nov[1])),
        coverage_overall=(cov_all[0], cov_all[1]),
        novelty_overall=(nov_all[0], nov_all[1]),
        timing=(sides[0].timing, sides[1].timing),
        event_rows=rows,
        event_windows=win,
        event_metrics=per_event,
    )
