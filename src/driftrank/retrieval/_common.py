"""Pieces every retrieval channel shares: input checks, the per-user event log, state helpers."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

from driftrank.data import Dataset
from driftrank.errors import ConfigError, DataError, ModelFileError, NotFittedError
from driftrank.types import Ranking, _row_gather, _row_spans, csr_coordinates

SECONDS_PER_DAY = 86400.0
STATE_VERSION = 1

# Exponents of 2 beyond this would overflow float64 on the way; relative weights stay exact
# because every stored weight is re-anchored before it could get there.
_MAX_EXPONENT = 60.0


# ---------------------------------------------------------------------- input checks
def check_users(users: Any) -> np.ndarray:
    """``users`` as ``int64[n]``; raises :class:`DataError` for negative or non-integer input."""
    arr = np.asarray(users)
    if arr.ndim != 1:
        raise DataError(f"users must be a 1-d array of user indices, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise DataError(f"users must be integer user indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise DataError(f"user indices must be >= 0, got {int(arr.min())}")
    return arr


def check_n(n: Any, name: str = "n") -> int:
    """A positive integer count (``n`` candidates, ``k`` items)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise DataError(f"`{name}` must be a positive integer, got {n!r}")
    return int(n)


def check_events(
    users: Any, items: Any, timestamps: Any, n_items: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate a batch of events for ``observe``: ``int64[m]``, ``int64[m]``, ``float64[m]``."""
    u = check_users(users)
    i = np.asarray(items)
    t = np.asarray(timestamps, dtype=np.float64)
    if i.ndim != 1 or t.ndim != 1 or not (len(u) == len(i) == len(t)):
        raise DataError(
            f"users, items and timestamps must be 1-d of one length, got {u.shape}, {i.shape}, {t.shape}"
        )
    if i.size and i.dtype.kind not in "iu":
        raise DataError(f"items must be integer item indices, got dtype {i.dtype}")
    i = i.astype(np.int64, copy=False)
    if i.size and (i.min() < 0 or i.max() >= n_items):
        bad = int(i[(i < 0) | (i >= n_items)][0])
        raise DataError(
            f"item index {bad} is outside the catalog of {n_items} items (call extend_items for new items)"
        )
    if t.size and not np.isfinite(t).all():
        raise DataError("timestamps must be finite unix seconds")
    return u, i, t


def check_items(items: Any, timestamps: Any, n_items: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate one history for ``fold_in``: ``int64[k]`` items, ``float64[k]`` times or None."""
    i = np.asarray(items)
    if i.ndim != 1:
        raise DataError(f"items must be a 1-d array of item indices, got shape {i.shape}")
    if i.size and i.dtype.kind not in "iu":
        raise DataError(f"items must be integer item indices, got dtype {i.dtype}")
    i = i.astype(np.int64, copy=False)
    if i.size and (i.min() < 0 or i.max() >= n_items):
        bad = int(i[(i < 0) | (i >= n_items)][0])
        raise DataError(f"item index {bad} is outside the catalog of {n_items} items")
    if timestamps is None:
        return i, None
    t = np.asarray(timestamps, dtype=np.float64)
    if t.shape != i.shape:
        raise DataError(f"timestamps must match items, got shapes {t.shape} and {i.shape}")
    if t.size and not np.isfinite(t).all():
        raise DataError("timestamps must be finite unix seconds")
    return i, t


def check_positive(name: str, value: float | None, *, allow_none: bool = False) -> None:
    """Config check: ``value`` is a positive finite number (or None when allowed)."""
    if value is None and allow_none:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (value > 0 and math.isfinite(value))
    ):
        raise ConfigError(
            f"{name} must be a positive number{' or None' if allow_none else ''}, got {value!r}"
        )


def check_nonnegative(name: str, value: float) -> None:
    """Config check: ``value`` is a finite number >= 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (value >= 0 and math.isfinite(value))
    ):
        raise ConfigError(f"{name} must be a number >= 0, got {value!r}")


def check_int(name: str, value: int, lo: int = 1) -> None:
    """Config check: ``value`` is an integer >= ``lo``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")


def check_name(value: str) -> None:
    """Config check: a channel name is a non-empty identifier-like string (used as a key)."""
    if not isinstance(value, str) or not value or "/" in value:
        raise ConfigError(f"name must be a non-empty string without '/', got {value!r}")


# ---------------------------------------------------------------------- BLAS threads
_CONTROLLER: Any = None


def single_thread_blas() -> Any:
    """A context that runs BLAS/LAPACK on one thread.

    Fold-in works on d x d systems (d ~ 100): a threaded BLAS only adds synchronisation there,
    and on a busy machine a 2-thread solve was measured 5-20x slower than a 1-thread one. The
    controller is built once (scanning the loaded libraries costs about a millisecond); when
    every BLAS already runs one thread (``OPENBLAS_NUM_THREADS=1``, or inside the caller's own
    ``threadpool_limits``) nothing is changed, otherwise the limit costs tens of microseconds."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController().select(user_api="blas")
    if all(lib.num_threads == 1 for lib in _CONTROLLER.lib_controllers):
        return contextlib.nullcontext()
    return _CONTROLLER.limit(limits=1)


# ---------------------------------------------------------------------- decay
def decay_weights(times: np.ndarray, ref: float, half_life_days: float | None) -> np.ndarray:
    """``float64[k]`` weights ``2^(-(ref - t) / half_life)`` (all 1 without a half-life).

    Events after ``ref`` weigh more than 1: the weights of any two events keep their ratio
    whatever ``ref`` is, which is what makes online updates exact (see the docs)."""
    if half_life_days is None:
        return np.ones(len(times), dtype=np.float64)
    expo = (np.asarray(times, dtype=np.float64) - ref) / (half_life_days * SECONDS_PER_DAY)
    return np.exp2(np.clip(expo, -1074.0, _MAX_EXPONENT))


def user_last_times(dataset: Dataset) -> np.ndarray:
    """``float64[n_users]`` time of each user's newest event (-inf for users without events)."""
    out = np.full(dataset.n_users, -np.inf)
    if dataset.n_interactions:
        np.maximum.at(out, dataset.user_index, dataset.timestamps)
    return out


# ---------------------------------------------------------------------- event log
class EventLog:
    """Every user's events in time order: the fitted data plus whatever ``observe`` added.

    The fitted part is kept as CSR-like arrays (``indptr``, ``items``, ``times``); a user that
    ``add`` touches gets their whole history as arrays of their own, so an update costs
    O(that user's events) and reading a history stays a lookup.
    """

    def __init__(self, indptr: np.ndarray, items: np.ndarray, times: np.ndarray) -> None:
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.items = np.asarray(items, dtype=np.int64)
        self.times = np.asarray(times, dtype=np.float64)
        # user -> (items, times): the complete history of users with added events
        self.extra: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.n_users = len(self.indptr) - 1

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> EventLog:
        """The time-ordered sequences of ``dataset``."""
        seq = dataset.sequences
        return cls(seq.indptr, seq.items, seq.timestamps)

    def user(self, u: int) -> tuple[np.ndarray, np.ndarray]:
        """``int64[k]`` items and ``float64[k]`` times of user ``u``, oldest first (stable by
        arrival). The log's own arrays: do not modify them."""
        more = self.extra.get(u)
        if more is not None:
            return more
        if u < len(self.indptr) - 1:
            lo, hi = self.indptr[u], self.indptr[u + 1]
            return self.items[lo:hi], self.times[lo:hi]
        return np.zeros(0, np.int64), np.zeros(0, np.float64)

    def length(self, u: int) -> int:
        """Number of events of user ``u``."""
        more = self.extra.get(u)
        if more is not None:
            return len(more[0])
        return int(self.indptr[u + 1] - self.indptr[u]) if u < len(self.indptr) - 1 else 0

    def _spans(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(stop, lengths)``: where each of ``users: int64[b]``'s events end in the CSR
        arrays and how many there are (0 for users past them; the users ``add`` moved to
        ``extra`` are the callers' to handle)."""
        starts, lengths = _row_spans(self.indptr, users)
        return starts + lengths, lengths

    def recent(self, users: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        """``(items int64[b, width], lengths int64[b])``: the ``width`` latest items of each of
        ``users: int[b]``, newest first (-1 past the start of a history), and each user's
        number of events. One gather for the users the log holds as CSR rows."""
        users = np.asarray(users, dtype=np.int64)
        stop, lengths = self._spans(users)
        pos = stop[:, None] - 1 - np.arange(width)  # [b, width], newest first
        ok = pos >= (stop - lengths)[:, None]
        out = np.where(ok, self.items[np.where(ok, pos, 0)] if len(self.items) else -1, -1)
        for j in np.flatnonzero([u in self.extra for u in users.tolist()] if self.extra else []).tolist():
            it = self.extra[int(users[j])][0]
            tail = it[::-1][:width]
            out[j] = -1
            out[j, : len(tail)] = tail
            lengths[j] = len(it)
        return out, lengths

    def latest(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(lengths int64[b], last float64[b])``: each of ``users``' number of events and the
        time of their latest one (NaN without events)."""
        users = np.asarray(users, dtype=np.int64)
        if len(users) == 1:  # a single request: a lookup, not array steps
            times = self.user(int(users[0]))[1]
            return np.array([len(times)]), np.array([times[-1] if len(times) else np.nan])
        stop, lengths = self._spans(users)
        last = np.full(len(users), np.nan)
        has = lengths > 0
        last[has] = self.times[stop[has] - 1]
        if self.extra:
            for j, u in enumerate(users.tolist()):
                more = self.extra.get(u)
                if more is not None:
                    lengths[j] = len(more[1])
                    last[j] = more[1][-1] if len(more[1]) else np.nan
        return lengths, last

    def seen(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, items)``: ``int64[m]`` coordinates of the distinct items of each of ``users:
        int[b]`` (row ``j`` = ``users[j]``), by row, each row's items ascending: what
        ``np.unique`` of each history gives, for the whole batch in one sort."""
        users = np.asarray(users, dtype=np.int64)
        if len(users) == 1:  # a single request: skip the batch bookkeeping
            cols = np.unique(self.user(int(users[0]))[0])
            return np.zeros(len(cols), dtype=np.int64), cols
        take, ptr = _row_gather(self.indptr, users)
        rows = np.repeat(np.arange(len(users), dtype=np.int64), np.diff(ptr))
        items = self.items[take]
        if self.extra:
            held = [j for j, u in enumerate(users.tolist()) if u in self.extra]
            if held:
                apart = np.isin(rows, held)
                rows, items = rows[~apart], items[~apart]
                more = [self.extra[int(users[j])][0] for j in held]
                rows = np.concatenate([rows, *(np.full(len(m), j, np.int64) for j, m in zip(held, more))])
                items = np.concatenate([items, *more])
        width = int(items.max()) + 1 if len(items) else 1
        keys = np.unique(rows * width + items)
        return keys // width, keys % width

    def add(self, users: np.ndarray, items: np.ndarray, times: np.ndarray) -> None:
        """Append events (arrays of one length); users beyond the log grow it. Each goes in
        time order among its user's events, after those of equal time."""
        new: dict[int, tuple[list[int], list[float]]] = {}
        for u, i, t in zip(users.tolist(), items.tolist(), times.tolist(), strict=True):
            lst = new.setdefault(u, ([], []))
            lst[0].append(i)
            lst[1].append(t)
        for u, (it, ts) in new.items():
            old_i, old_t = self.user(u)
            all_i = np.concatenate([old_i, np.asarray(it, dtype=np.int64)])
            all_t = np.concatenate([old_t, np.asarray(ts, dtype=np.float64)])
            if len(all_t) > 1 and np.any(np.diff(all_t) < 0):
                order = np.argsort(all_t, kind="stable")
                all_i, all_t = all_i[order], all_t[order]
            self.extra[u] = (all_i, all_t)
        if len(users):
            self.n_users = max(self.n_users, int(users.max()) + 1)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The whole log as CSR-like arrays (``indptr``, ``items``, ``times``), for saving."""
        if not self.extra:
            return {"indptr": self.indptr, "items": self.items, "times": self.times}
        lengths = np.array([self.length(u) for u in range(self.n_users)], dtype=np.int64)
        indptr = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        items = np.empty(indptr[-1], dtype=np.int64)
        times = np.empty(indptr[-1], dtype=np.float64)
        for u in range(self.n_users):
            it, ts = self.user(u)
            items[indptr[u] : indptr[u + 1]] = it
            times[indptr[u] : indptr[u + 1]] = ts
        return {"indptr": indptr, "items": items, "times": times}


# ---------------------------------------------------------------------- serving helpers
def exclude_coordinates(
    exclude: sp.csr_matrix | None, users: np.ndarray, n_items: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """The entries of the rows of ``exclude`` for ``users``, as ``(rows, cols)`` coordinates
    (row ``j`` = ``users[j]``), for :func:`~driftrank.types.topk` over ``n_items`` columns.

    Users beyond its rows (new users) exclude nothing; columns past ``n_items`` (items the
    caller knows of but this channel was not told about yet) are dropped, they are never
    returned anyway; a matrix narrower than the catalog excludes nothing among the new items.
    No matrix is built: that would cost more than a one-user request's top-k.
    """
    if exclude is None:
        return None
    if not sp.issparse(exclude):
        raise DataError(
            f"exclude must be a scipy sparse matrix [n_users, n_items], got {type(exclude).__name__}"
        )
    rows, cols = csr_coordinates(exclude.tocsr(), users)
    if exclude.shape[1] > n_items:
        keep = cols < n_items
        rows, cols = rows[keep], cols[keep]
    return rows, cols


def empty_ranking(n_users: int, n: int) -> Ranking:
    """A ranking with nothing in it: ``-1`` items and NaN scores."""
    return Ranking(np.full((n_users, n), -1, dtype=np.int64), np.full((n_users, n), np.nan, dtype=np.float32))


# ---------------------------------------------------------------------- persistence
def config_to_dict(config: Any) -> dict[str, Any]:
    """A frozen config dataclass as a JSON-able dict (tuples become lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        out[f.name] = _jsonable(v)
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def config_from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """Rebuild a config dataclass from :func:`config_to_dict` output (lists become tuples)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ModelFileError(f"{cls.__name__}: unknown config key(s) {sorted(unknown)}")
    kwargs = {k: _tupled(v) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ConfigError) as exc:
        raise ModelFileError(f"{cls.__name__}: invalid saved config ({exc})") from None


def _tupled(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_tupled(x) for x in v)
    return v


def check_state(config: Mapping[str, Any], kind: str) -> None:
    """Refuse a state written for another class or by an incompatible version."""
    if config.get("type") != kind:
        raise ModelFileError(f"state is of type {config.get('type')!r}, expected {kind!r}")
    if config.get("version") != STATE_VERSION:
        raise ModelFileError(
            f"{kind} state has format version {config.get('version')!r}; this driftrank reads {STATE_VERSION}"
        )


def need(arrays: Mapping[str, np.ndarray], key: str, kind: str) -> np.ndarray:
    """``arrays[key]`` or a :class:`ModelFileError` naming what is missing."""
    if key not in arrays:
        raise ModelFileError(f"{kind} state lacks array {key!r}")
    return np.asarray(arrays[key])


def not_fitted(kind: str, what: str) -> NotFittedError:
    """The error raised when a channel serves before ``fit``."""
    return NotFittedError(f"{kind}.{what} called before fit")
