"""Factor models: user vectors by weighted least squares on fixed item vectors (fold-in).

A user's vector is the ridge regression of their history onto the item vectors ``Y``
(Hu, Koren & Volinsky's implicit-feedback objective with the item side held fixed)::

    x = argmin_x  sum_i c_i (p_i - x.y_i)^2 + reg * |x|^2
    c_i = 1 + alpha * W_i,   p_i = 1 if the user has item i else 0
    W_i = sum over the user's events on i of 2^(-(t_last - t) / half_life)   (1 per event without decay)

so ``x = (YᵀY + reg I + alpha Σ W_i y_i y_iᵀ)⁻¹ Σ (1 + alpha W_i) y_i``. ``YᵀY + reg I`` is the
same for every user and computed once, which makes a fold-in cost O(k d² + d³) for a history
of k events and d factors, whatever the catalog size.

For online updates each user keeps sufficient statistics: ``S = alpha Σ w̃ y yᵀ``,
``b1 = alpha Σ w̃ y`` with weights relative to an anchor time τ (``w̃ = 2^((t - τ)/h)``), and
``b0 = Σ_distinct y``. Since ``2^(-(t_last - t)/h) = 2^(-(t_last - τ)/h) · w̃``, a new event is
one rank-one update and the vector equals the fold-in of the full history.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.linalg.lapack import dposv

from driftrank._linalg import matmul_t
from driftrank.data import Dataset
from driftrank.errors import ModelFileError
from driftrank.retrieval._base import Channel
from driftrank.retrieval._common import (
    SECONDS_PER_DAY,
    EventLog,
    check_items,
    check_users,
    need,
    not_fitted,
    single_thread_blas,
    user_last_times,
)

__all__ = ["FactorChannel", "FoldIn"]

# Re-anchor a user's statistics when the newest event is this many half-lives past the anchor,
# long before 2^x could overflow.
_REANCHOR = 30.0
# Users whose sufficient statistics stay in memory (d² floats each); others are rebuilt from
# their event log when they next get events, which gives the same vector.
_STATS_CACHE = 4096


def _spd_solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve ``a x = b`` for symmetric positive definite ``a`` (Cholesky).

    LAPACK's ``posv`` called directly costs a few microseconds of overhead where
    ``np.linalg.solve`` (LU through the gufunc machinery) costs tens."""
    _, x, info = dposv(a, b, lower=0, overwrite_a=0, overwrite_b=0)
    if info != 0:  # not positive definite: only possible with a broken state, fall back to LU
        return np.linalg.solve(a, b)
    return np.asarray(x)


class _UserStats:
    """Sufficient statistics of one user's history (see the module docstring)."""

    __slots__ = ("anchor", "b0", "b1", "distinct", "s", "t_last")

    def __init__(self, d: int) -> None:
        self.anchor = -np.inf
        self.t_last = -np.inf
        self.s = np.zeros((d, d))
        self.b1 = np.zeros(d)
        self.b0 = np.zeros(d)
        self.distinct: set[int] = set()


class FoldIn:
    """Solves user vectors against fixed item vectors ``Y: float[n_fit_items, d]``.

    ``regularization`` (> 0) is the ridge term, ``alpha`` the confidence of an observed item,
    ``half_life_days`` the decay of an event's weight with its age relative to the user's
    newest event (None = no decay).
    """

    def __init__(
        self, item_vectors: np.ndarray, regularization: float, alpha: float, half_life_days: float | None
    ):
        self.y = np.ascontiguousarray(item_vectors, dtype=np.float64)
        self.n_fit, self.d = self.y.shape
        self.regularization = float(regularization)
        self.alpha = float(alpha)
        self.half_life_s = None if half_life_days is None else float(half_life_days) * SECONDS_PER_DAY
        self.gram = self.y.T @ self.y + self.regularization * np.eye(self.d)

    def _decay(self, times: np.ndarray, ref: float) -> np.ndarray:
        if self.half_life_s is None:
            return np.ones(len(times))
        return np.exp2(np.minimum((times - ref) / self.half_life_s, 1000.0))

    def solve(self, items: np.ndarray, times: np.ndarray | None) -> np.ndarray | None:
        """``float64[d]`` vector of a history (``items: int64[k]``, ``times: float64[k]`` or None),
        or None when none of its items has a vector. Items beyond the fitted ones are ignored."""
        if len(items) == 0:
            return None
        if times is None or self.half_life_s is None:
            w = np.ones(len(items))
        else:
            w = self._decay(times, float(times.max()))
        fitted = items < self.n_fit
        if not fitted.all():
            items, w = items[fitted], w[fitted]
        if len(items) == 0:
            return None
        uniq, inv = np.unique(items, return_inverse=True)
        big_w = np.bincount(inv, weights=w, minlength=len(uniq))
        yh = self.y[uniq]
        # Yᵀ diag(alpha W) Y as (√(alpha W) Y)ᵀ(√(alpha W) Y): numpy hands that to BLAS syrk.
        yw = yh * np.sqrt(self.alpha * big_w)[:, None]
        a = yw.T @ yw
        a += self.gram
        return _spd_solve(a, (1.0 + self.alpha * big_w) @ yh)

    def stats(self, items: np.ndarray, times: np.ndarray) -> _UserStats:
        """Sufficient statistics of a history (the same vector as :meth:`solve`)."""
        st = _UserStats(self.d)
        self.update(st, items, times)
        return st

    def update(self, st: _UserStats, items: np.ndarray, times: np.ndarray) -> None:
        """Add events to ``st`` in place."""
        if len(items) == 0:
            return
        t_new = float(times.max())
        if self.half_life_s is not None:
            if not np.isfinite(st.anchor):
                st.anchor = t_new
            elif (t_new - st.anchor) / self.half_life_s > _REANCHOR:
                scale = float(np.exp2((st.anchor - t_new) / self.half_life_s))
                st.s *= scale
                st.b1 *= scale
                st.anchor = t_new
        st.t_last = max(st.t_last, t_new)
        fitted = items < self.n_fit
        items, times = items[fitted], times[fitted]
        if len(items) == 0:
            return
        w = self._decay(times, st.anchor) if self.half_life_s is not None else np.ones(len(items))
        uniq, inv = np.unique(items, return_inverse=True)
        big_w = np.bincount(inv, weights=w, minlength=len(uniq))
        yh = self.y[uniq]
        yw = yh * np.sqrt(self.alpha * big_w)[:, None]
        st.s += yw.T @ yw
        st.b1 += (self.alpha * big_w) @ yh
        new = [k for k, i in enumerate(uniq.tolist()) if i not in st.distinct]
        if new:
            st.b0 += self.y[uniq[new]].sum(axis=0)
            st.distinct.update(uniq[new].tolist())

    def vector(self, st: _UserStats) -> np.ndarray | None:
        """The user vector from statistics, or None when the history has no fitted item."""
        if not st.distinct:
            return None
        scale = (
            1.0 if self.half_life_s is None else float(np.exp2(-(st.t_last - st.anchor) / self.half_life_s))
        )
        return _spd_solve(self.gram + scale * st.s, st.b0 + scale * st.b1)


class FactorChannel(Channel):
    """A channel whose scores are ``user_vector · item_vector`` (ALS, BPR, LightFM).

    A user's vector is ``fold(history) @ M + offset_u``:

    * ``fold`` is the weighted least squares of :class:`FoldIn` on the trained item vectors;
    * ``M`` (d x d) is the identity, unless the channel serves the user vectors its training
      produced (``user_vectors="trained"``): then ``M`` is the ridge regression that maps
      fold-in vectors onto the trained ones across the training users (a calibration: LightFM's
      trained vectors live on another scale than least-squares fits);
    * ``offset_u`` is what is left of a training user's trained vector after that map (0 for
      fold-in serving and for users who arrive later), so training users keep exactly their
      trained vector until they get new events, and afterwards move by what the events add.

    Everything is linear in per-user sufficient statistics, so an online update equals the
    fold-in of the whole history (plus the user's fixed offset). Subclasses implement
    ``_train(dataset, weights) -> item_vectors`` (setting ``self._trained_users`` to serve
    trained vectors) and ``_fold_params``.
    """

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._items_vec: np.ndarray | None = None  # float32[n_fit, d]
        self._users_vec = np.zeros((0, 0), dtype=np.float32)  # float32[n_users, d]
        self._has_vec = np.zeros(0, dtype=bool)
        self._fold: FoldIn | None = None
        self._map: np.ndarray | None = None  # float64[d, d], None = identity
        self._offset: np.ndarray | None = None  # float32[n_train_users, d]
        self._stats: OrderedDict[int, _UserStats] = OrderedDict()
        self._trained_users: np.ndarray | None = None

    # ------------------------------------------------------------------ to implement
    def _train(self, dataset: Dataset, weights: np.ndarray) -> np.ndarray:
        """Fit the model; return the item vectors ``float32[n_items, d]`` fold-in solves against.

        ``weights: float64[n_interactions]`` are the events' decay weights (relative to each
        user's newest event)."""
        raise NotImplementedError

    def _fold_params(self) -> tuple[float, float]:
        """``(regularization, alpha)`` of the fold-in least squares."""
        raise NotImplementedError

    # ------------------------------------------------------------------ fitting
    def event_weights(self, dataset: Dataset) -> np.ndarray:
        """``float64[n_interactions]`` each event's weight ``2^(-age/half_life)``, its age taken
        relative to its user's newest event (all 1 without a half-life)."""
        h = self.config.half_life_days
        if h is None:
            return np.ones(dataset.n_interactions)
        last = user_last_times(dataset)
        age = last[dataset.user_index] - dataset.timestamps
        return np.exp2(-age / (h * SECONDS_PER_DAY))

    def _fit(self, dataset: Dataset) -> None:
        w = self.event_weights(dataset)
        self._trained_users = None
        items_vec = np.ascontiguousarray(self._train(dataset, w), dtype=np.float32)
        trained, self._trained_users = self._trained_users, None
        self._set_items(items_vec)
        log = EventLog.from_dataset(dataset)
        d = items_vec.shape[1]
        folded = np.zeros((dataset.n_users, d))
        has = np.zeros(dataset.n_users, dtype=bool)
        with single_thread_blas():
            for u in range(dataset.n_users):
                v = self._raw_solve(*log.user(u))
                if v is not None:
                    folded[u], has[u] = v, True
        self._users_vec = folded.astype(np.float32)
        self._has_vec = has
        if trained is not None and has.any():
            self._calibrate(folded[has], np.asarray(trained, dtype=np.float64)[has])
            offset = np.zeros((dataset.n_users, d), dtype=np.float32)
            offset[has] = trained[has] - (folded[has] @ self._map)
            self._offset = offset
            self._users_vec = np.where(has[:, None], trained, 0.0).astype(np.float32)

    def _calibrate(self, folded: np.ndarray, trained: np.ndarray) -> None:
        """Ridge map ``M`` with ``folded @ M ≈ trained`` (ridge 1e-3 of the mean eigenvalue)."""
        g = folded.T @ folded
        ridge = 1e-3 * max(float(np.trace(g)) / g.shape[0], 1e-12)
        self._map = np.linalg.solve(g + ridge * np.eye(g.shape[0]), folded.T @ trained)

    def _set_items(self, items_vec: np.ndarray) -> None:
        reg, alpha = self._fold_params()
        self._items_vec = np.array(items_vec, dtype=np.float32, copy=True)  # never alias the model's
        self._items_vec.setflags(write=False)
        self._fold = FoldIn(items_vec, reg, alpha, self.config.half_life_days)
        self._map = None
        self._offset = None
        self._stats = OrderedDict()

    def _raw_solve(self, items: np.ndarray, times: np.ndarray | None) -> np.ndarray | None:
        assert self._fold is not None
        return self._fold.solve(items, times)

    def _mapped(self, vec: np.ndarray | None) -> np.ndarray | None:
        if vec is None or self._map is None:
            return vec
        return vec @ self._map

    def _set_user(self, u: int, vec: np.ndarray | None) -> None:
        if u >= len(self._has_vec):
            grow = max(u + 1, 2 * len(self._has_vec)) - len(self._has_vec)
            self._users_vec = np.vstack(
                [self._users_vec, np.zeros((grow, self._users_vec.shape[1]), np.float32)]
            )
            self._has_vec = np.concatenate([self._has_vec, np.zeros(grow, dtype=bool)])
        if vec is None:
            self._has_vec[u] = False
            self._users_vec[u] = 0.0
        else:
            self._has_vec[u] = True
            self._users_vec[u] = vec

    # ------------------------------------------------------------------ vectors
    @property
    def n_factors(self) -> int:
        """Length of the user and item vectors."""
        return 0 if self._items_vec is None else int(self._items_vec.shape[1])

    @property
    def item_vectors(self) -> np.ndarray:
        """``float32[n_fitted_items, d]`` item vectors (read-only); items added later have none."""
        if self._items_vec is None:
            raise not_fitted(type(self).__name__, "item_vectors")
        return self._items_vec

    def user_vectors(self, users: np.ndarray) -> np.ndarray:
        """``float32[b, d]`` serving vectors of ``users``; NaN rows for users without one."""
        self._events("user_vectors")
        users = check_users(users)
        out = np.full((len(users), self.n_factors), np.nan, dtype=np.float32)
        ok = self._has_vector(users)
        out[ok] = self._users_vec[users[ok]]
        return out

    def _has_vector(self, users: np.ndarray) -> np.ndarray:
        known = users < len(self._has_vec)
        ok = np.zeros(len(users), dtype=bool)
        ok[known] = self._has_vec[users[known]]
        return ok

    def fold_in(self, items: np.ndarray, timestamps: np.ndarray | None = None) -> np.ndarray:
        """The vector ``float32[d]`` of a user with history ``items: int64[k]`` (any order) at
        ``timestamps: float64[k]`` (unix s; None = all equally recent).

        Zeros when no item of the history has a vector (empty history, only new items).
        Costs O(k d² + d³), independent of the catalog size. A training user's served vector
        differs from the fold-in of their history only by their fixed offset (zero unless the
        channel serves trained vectors).
        """
        self._events("fold_in")
        it, ts = check_items(items, timestamps, self._n_items)
        with single_thread_blas():
            vec = self._mapped(self._raw_solve(it, ts))
        if vec is None:
            return np.zeros(self.n_factors, dtype=np.float32)
        return vec.astype(np.float32)

    # ------------------------------------------------------------------ serving
    def _scores(self, users: np.ndarray) -> np.ndarray:
        assert self._items_vec is not None
        n_fit = self._items_vec.shape[0]
        ok = self._has_vector(users)
        if ok.all() and n_fit == self._n_items:
            # The common case: one matrix product straight into the result.
            return matmul_t(self._users_vec[users], self._items_vec)
        out = np.full((len(users), self._n_items), np.nan, dtype=np.float32)
        if ok.any():
            out[ok, :n_fit] = matmul_t(self._users_vec[users[ok]], self._items_vec)
        return out

    # ------------------------------------------------------------------ online
    def _observe(self, log: EventLog, users: np.ndarray, items: np.ndarray, times: np.ndarray) -> None:
        order = np.argsort(users, kind="stable")
        bounds = np.flatnonzero(np.diff(users[order])) + 1
        with single_thread_blas():
            for grp in np.split(order, bounds):
                self._observe_user(log, int(users[grp[0]]), items[grp], times[grp])

    def _observe_user(self, log: EventLog, u: int, items: np.ndarray, times: np.ndarray) -> None:
        fold = self._fold
        assert fold is not None
        st = self._stats.get(u)
        if st is None:
            st = fold.stats(*log.user(u))
            self._stats[u] = st
            if len(self._stats) > _STATS_CACHE:
                self._stats.popitem(last=False)
        else:
            self._stats.move_to_end(u)
        fold.update(st, items, times)
        vec = self._mapped(fold.vector(st))
        if vec is not None and self._offset is not None and u < len(self._offset):
            vec = vec + self._offset[u]
        self._set_user(u, vec)

    def _extend_items(self, n_new: int) -> None:
        """Nothing to grow: items beyond the trained vectors are scored NaN (no signal)."""

    # ------------------------------------------------------------------ state
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        assert self._items_vec is not None
        n, d = self.n_users, self.n_factors
        users_vec = np.zeros((n, d), dtype=np.float32)
        has = np.zeros(n, dtype=bool)
        m = min(n, len(self._has_vec))
        users_vec[:m], has[:m] = self._users_vec[:m], self._has_vec[:m]
        arrays = {"item_vectors": self._items_vec, "user_vectors": users_vec, "has_vector": has}
        if self._map is not None:
            arrays["fold_map"] = self._map
        if self._offset is not None:
            arrays["offsets"] = self._offset
        return {}, arrays

    def _load_state(self, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        kind = type(self).__name__
        items_vec = need(arrays, "item_vectors", kind).astype(np.float32)
        users_vec = need(arrays, "user_vectors", kind).astype(np.float32)
        has = need(arrays, "has_vector", kind).astype(bool)
        if items_vec.ndim != 2 or users_vec.ndim != 2 or users_vec.shape[1] != items_vec.shape[1]:
            raise ModelFileError(
                f"{kind} state has mismatched vector shapes {items_vec.shape}, {users_vec.shape}"
            )
        if len(has) != len(users_vec) or items_vec.shape[0] > self._n_items:
            raise ModelFileError(f"{kind} state has inconsistent user or item counts")
        d = items_vec.shape[1]
        self._set_items(np.ascontiguousarray(items_vec))
        if "fold_map" in arrays:
            fmap = np.asarray(arrays["fold_map"], dtype=np.float64)
            if fmap.shape != (d, d):
                raise ModelFileError(f"{kind} state has a fold_map of shape {fmap.shape}, expected {(d, d)}")
            self._map = fmap.copy()
        if "offsets" in arrays:
            off = np.asarray(arrays["offsets"], dtype=np.float32)
            if off.ndim != 2 or off.shape[1] != d:
                raise ModelFileError(f"{kind} state has offsets of shape {off.shape}")
            self._offset = off.copy()
        self._users_vec = np.ascontiguousarray(users_vec).copy()
        self._has_vec = has.copy()
