"""Turn a :class:`FusionInput` into a scaled feature matrix with named columns."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, Self

import numpy as np

from driftrank.errors import ConfigError, DataError, NotFittedError
from driftrank.fusion._input import FusionInput

__all__ = ["FeatureBuilder", "FeatureConfig", "FeatureMatrix"]

Role = Literal["score", "rank", "value", "missing"]


@dataclass(frozen=True)
class FeatureConfig:
    """How raw signals become features.

    Attributes:
        rank_transform: ``"log"`` turns a 0-based rank ``r`` into ``-log(1 + r)`` (smooth over
            long lists, scales well); ``"reciprocal"`` into ``1 / (1 + r)`` (all the mass on the
            first few places). Both grow with a better rank.
        source_scores: also feed each source's raw score beside its rank (scores carry how
            sure a channel is; ranks are comparable across channels).
        scaling: per-feature scaling learned at fit time over non-missing values:
            ``"robust"`` = (x - median) / IQR (falls back to the standard deviation, then 1,
            when the IQR is 0), ``"standard"`` = (x - mean) / std, ``"none"``.
        clip: scaled values are clipped to ``[-clip, clip]`` so one outlier (a huge score from a
            new channel) cannot dominate a linear scorer.
        log_signals: names of per-candidate, item or user signals to pass through
            ``sign(x) * log(1 + |x|)`` before scaling (counts such as popularity or history length).
    """

    rank_transform: Literal["log", "reciprocal"] = "log"
    source_scores: bool = True
    scaling: Literal["robust", "standard", "none"] = "robust"
    clip: float = 10.0
    log_signals: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.rank_transform not in ("log", "reciprocal"):
            raise ConfigError(f"rank_transform must be 'log' or 'reciprocal', got {self.rank_transform!r}")
        if self.scaling not in ("robust", "standard", "none"):
            raise ConfigError(f"scaling must be 'robust', 'standard' or 'none', got {self.scaling!r}")
        if not (isinstance(self.clip, int | float) and self.clip > 0):
            raise ConfigError(f"clip must be a positive number, got {self.clip!r}")
        if isinstance(self.log_signals, str) or not all(isinstance(x, str) for x in self.log_signals):
            raise ConfigError(f"log_signals must be a tuple of signal names, got {self.log_signals!r}")
        object.__setattr__(self, "log_signals", tuple(self.log_signals))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (tuples become lists)."""
        d = asdict(self)
        d["log_signals"] = list(self.log_signals)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["log_signals"] = tuple(d.get("log_signals", ()))
        return cls(**d)


@dataclass(frozen=True)
class FeatureMatrix:
    """Scaled features of a batch.

    ``x: float32[r, n_features]`` per candidate row; ``u: float32[n_users, n_user_features]``
    per user of the batch; ``user_row: int64[r]`` the row of ``u`` belonging to each row of ``x``.
    Missing values are already filled (see :meth:`FeatureBuilder.baseline`), so nothing is NaN.
    """

    x: np.ndarray
    u: np.ndarray
    user_row: np.ndarray


def _signed_log(v: np.ndarray) -> np.ndarray:
    return np.sign(v) * np.log1p(np.abs(v))


class FeatureBuilder:
    """Learns per-feature scaling on a :class:`FusionInput` and builds :class:`FeatureMatrix`.

    Per source ``s`` of the candidates: ``s:score`` (if ``source_scores``), ``s:rank`` and
    ``s:missing`` (1 where the source did not retrieve the item). Per candidate, item or user
    signal ``n``: ``n:value`` and ``n:missing``. Missing source scores and ranks are filled with
    the worst value seen at fit time (the item sits below the end of that list); other missing
    values with the fitted centre (0 after scaling); the indicator tells a model which it is.
    User features go to ``u`` (they are constant within a user), everything else to ``x``.
    """

    def __init__(self, config: FeatureConfig | None = None) -> None:
        self.config = config or FeatureConfig()
        self.layout_: dict[str, tuple[str, ...]] | None = None
        self.names_: tuple[str, ...] = ()
        self.groups_: tuple[str, ...] = ()
        self.roles_: tuple[Role, ...] = ()
        self.user_names_: tuple[str, ...] = ()
        self.user_groups_: tuple[str, ...] = ()
        self.center_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None
        self.fill_: np.ndarray | None = None
        self.x_src_ = np.zeros(0, dtype=np.int64)
        self.x_is_missing_ = np.zeros(0, dtype=bool)
        self.u_src_ = np.zeros(0, dtype=np.int64)
        self.u_is_missing_ = np.zeros(0, dtype=bool)

    # ------------------------------------------------------------------ layout
    def _set_layout(self, layout: dict[str, tuple[str, ...]]) -> None:
        names: list[str] = []
        groups: list[str] = []
        roles: list[Role] = []
        for s in layout["sources"]:
            cols: tuple[Role, ...] = (
                ("score", "rank", "missing") if self.config.source_scores else ("rank", "missing")
            )
            for r in cols:
                names.append(f"{s}:{r}")
                groups.append(s)
                roles.append(r)
        for s in layout["signals"] + layout["item_signals"] + layout["user_signals"]:
            vcols: tuple[Role, ...] = ("value", "missing")
            for r in vcols:
                names.append(f"{s}:{r}")
                groups.append(s)
                roles.append(r)
        n_user = 2 * len(layout["user_signals"])
        n_x = len(names) - n_user
        self.layout_ = layout
        self.names_ = tuple(names[:n_x])
        self.groups_ = tuple(groups[:n_x])
        self.user_names_ = tuple(names[n_x:])
        self.user_groups_ = tuple(groups[n_x:])
        self.roles_ = tuple(roles)
        # each feature reads value column ``src``: its own value, or for an indicator the value
        # column of its group (indicators always follow their group's values)
        src: list[int] = []
        vi = -1
        for r in roles:
            if r != "missing":
                vi += 1
            src.append(vi)
        is_miss = np.array([r == "missing" for r in roles], dtype=bool)
        src_arr = np.array(src, dtype=np.int64)
        n_xv = int((~is_miss[:n_x]).sum())
        self.x_src_, self.x_is_missing_ = src_arr[:n_x], is_miss[:n_x]
        self.u_src_, self.u_is_missing_ = src_arr[n_x:] - n_xv, is_miss[n_x:]

    @staticmethod
    def layout_of(inputs: FusionInput) -> dict[str, tuple[str, ...]]:
        """The signal names of ``inputs`` by kind."""
        return {
            "sources": tuple(inputs.candidates.sources),
            "signals": tuple(inputs.signals),
            "item_signals": tuple(inputs.item_signals),
            "user_signals": tuple(inputs.user_signals),
        }

    @property
    def candidate_groups(self) -> tuple[str, ...]:
        """Signal groups with candidate-level features, in feature order."""
        return tuple(dict.fromkeys(self.groups_))

    @property
    def user_group_names(self) -> tuple[str, ...]:
        """User signal groups, in feature order."""
        return tuple(dict.fromkeys(self.user_groups_))

    def _check(self, inputs: FusionInput) -> dict[str, tuple[str, ...]]:
        if self.layout_ is None or self.center_ is None:
            raise NotFittedError("FeatureBuilder used before fit")
        have = self.layout_of(inputs)
        for kind, names in self.layout_.items():
            if set(have[kind]) != set(names):
                raise DataError(
                    f"fusion was fitted with {kind} {sorted(names)}, the input has {sorted(have[kind])}; "
                    "pass every fitted signal (NaN where it is unknown) and no others"
                )
        return self.layout_

    # ------------------------------------------------------------------ raw values
    def _raw(self, inputs: FusionInput, rows: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Transformed, unscaled value columns (NaN = missing) of x (``float64[r]`` each) and of
        u (``float64[n_users]`` each)."""
        assert self.layout_ is not None
        c = inputs.candidates
        cfg = self.config
        log = set(cfg.log_signals)
        cols: list[np.ndarray] = []
        src_pos = {s: i for i, s in enumerate(c.sources)}
        items = c.items[rows]
        ranks = c.ranks[rows]
        negative = ranks < 0  # NaN compares False
        if negative.any():
            s = c.sources[int(np.flatnonzero(negative.any(axis=0))[0])]
            raise DataError(f"ranks of source {s!r} must be >= 0 (0-based) or NaN")
        for s in self.layout_["sources"]:
            j = src_pos[s]
            if cfg.source_scores:
                cols.append(c.scores[rows, j].astype(np.float64))
            r = ranks[:, j].astype(np.float64)
            cols.append(-np.log1p(r) if cfg.rank_transform == "log" else 1.0 / (1.0 + r))
        for s in self.layout_["signals"]:
            v = inputs.signals[s][rows].astype(np.float64)
            cols.append(_signed_log(v) if s in log else v)
        for s in self.layout_["item_signals"]:
            v = inputs.item_signals[s][items].astype(np.float64)
            cols.append(_signed_log(v) if s in log else v)
        ucols: list[np.ndarray] = []
        for s in self.layout_["user_signals"]:
            v = inputs.user_signals[s][c.users].astype(np.float64)
            ucols.append(_signed_log(v) if s in log else v)
        return cols, ucols

    def _value_roles(self) -> list[Role]:
        return [r for r in self.roles_ if r != "missing"]

    # ------------------------------------------------------------------ fit / transform
    def fit(self, inputs: FusionInput) -> Self:
        """Learn the layout (signal names) and each value feature's centre, scale and fill."""
        self._set_layout(self.layout_of(inputs))
        xr, ur = self._raw(inputs, np.arange(inputs.n_rows))
        # user statistics count each user of the batch once, not once per candidate
        n_xv = len(xr)
        n_all = n_xv + len(ur)
        center = np.zeros(n_all)
        scale = np.ones(n_all)
        fill_raw = np.full(n_all, np.nan)
        roles = self._value_roles()
        for j in range(n_all):
            col = xr[j] if j < n_xv else ur[j - n_xv]
            v = col[~np.isnan(col)]
            if v.size == 0:
                continue
            if self.config.scaling == "robust":
                q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75])
                c, s = med, q3 - q1
                if not s > 1e-12:
                    s = v.std()
            elif self.config.scaling == "standard":
                c, s = v.mean(), v.std()
            else:
                c, s = 0.0, 1.0
            center[j] = c
            scale[j] = s if s > 1e-12 else 1.0
            if roles[j] in ("score", "rank"):
                if roles[j] == "rank" and self.config.rank_transform == "log":
                    # one place below the longest list seen
                    fill_raw[j] = -np.log1p(np.expm1(-v.min()) + 1.0)
                elif roles[j] == "rank":
                    fill_raw[j] = 1.0 / (1.0 / v.min() + 1.0)
                else:
                    fill_raw[j] = v.min()
        self.center_ = center
        self.scale_ = scale
        z = np.clip((fill_raw - center) / scale, -self.config.clip, self.config.clip)
        self.fill_ = np.where(np.isnan(fill_raw), 0.0, z)
        return self

    def _assemble(self, raw: list[np.ndarray], n: int, start: int, user: bool) -> np.ndarray:
        """Scaled values (filled where missing) and missing indicators, in the feature order.

        ``raw`` holds one column per value feature. They are stacked feature-major (each
        feature's values contiguous, several times faster than masked 2-d indexing on the
        row-major result) and scaled in a handful of whole-array operations, so the cost per
        call does not grow with the number of features (it matters for one-user requests).
        """
        assert self.fill_ is not None and self.center_ is not None and self.scale_ is not None
        src, is_miss = (self.u_src_, self.u_is_missing_) if user else (self.x_src_, self.x_is_missing_)
        if len(src) == 0:
            return np.empty((n, 0), dtype=np.float32)
        stop = start + len(raw)
        values = np.stack(raw).astype(np.float64, copy=False).reshape(len(raw), n)  # [V, n]
        miss = np.isnan(values)
        clip = self.config.clip
        z = (values - self.center_[start:stop, None]) / self.scale_[start:stop, None]
        np.clip(z, -clip, clip, out=z)
        np.copyto(z, np.broadcast_to(self.fill_[start:stop, None], z.shape), where=miss)
        # Each output feature is a value (z) or a missing indicator of one raw column, written
        # straight into float32 (no float64 [F, n] intermediate).
        out = np.empty((len(src), n), dtype=np.float32)
        out[~is_miss] = z[src[~is_miss]]
        out[is_miss] = miss[src[is_miss]]
        return np.ascontiguousarray(out.T)

    def transform(self, inputs: FusionInput, rows: np.ndarray | None = None) -> FeatureMatrix:
        """Features of the candidate ``rows: int[r]`` (default all) and of every user of the batch."""
        self._check(inputs)
        r = np.arange(inputs.n_rows) if rows is None else np.asarray(rows, dtype=np.int64)
        if r.ndim != 1 or (r.size and (r.min() < 0 or r.max() >= inputs.n_rows)):
            raise DataError(f"rows must be a 1-d array of candidate rows in [0, {inputs.n_rows})")
        xr, ur = self._raw(inputs, r)
        x = self._assemble(xr, len(r), 0, user=False)
        u = self._assemble(ur, len(inputs.candidates.users), len(xr), user=True)
        return FeatureMatrix(x, u, inputs.candidates.user_of_row()[r].astype(np.int64))

    def baseline(self) -> tuple[np.ndarray, np.ndarray]:
        """The features of a candidate and a user whose every signal is missing.

        ``(x0: float32[n_features], u0: float32[n_user_features])``; attributions measure
        differences from this point.
        """
        if self.layout_ is None:
            raise NotFittedError("FeatureBuilder used before fit")
        n_xv = int((~self.x_is_missing_).sum())
        n_uv = int((~self.u_is_missing_).sum())
        x0 = self._assemble([np.full(1, np.nan)] * n_xv, 1, 0, user=False)[0]
        u0 = self._assemble([np.full(1, np.nan)] * n_uv, 1, n_xv, user=True)[0]
        return x0, u0

    # ------------------------------------------------------------------ state
    def get_state(self, prefix: str = "features.") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(config, arrays)``: the config, the layout and the fitted scaling."""
        if self.layout_ is None or self.center_ is None or self.scale_ is None or self.fill_ is None:
            raise NotFittedError("FeatureBuilder.get_state called before fit")
        config = {"config": self.config.to_dict(), "layout": {k: list(v) for k, v in self.layout_.items()}}
        arrays = {
            f"{prefix}center": self.center_.copy(),
            f"{prefix}scale": self.scale_.copy(),
            f"{prefix}fill": self.fill_.copy(),
        }
        return config, arrays

    @classmethod
    def from_state(
        cls, config: dict[str, Any], arrays: dict[str, np.ndarray], prefix: str = "features."
    ) -> FeatureBuilder:
        """Rebuild a fitted builder from :meth:`get_state`."""
        try:
            fb = cls(FeatureConfig.from_dict(config["config"]))
            fb._set_layout({k: tuple(v) for k, v in config["layout"].items()})
            fb.center_ = np.asarray(arrays[f"{prefix}center"], dtype=np.float64)
            fb.scale_ = np.asarray(arrays[f"{prefix}scale"], dtype=np.float64)
            fb.fill_ = np.asarray(arrays[f"{prefix}fill"], dtype=np.float64)
        except (KeyError, TypeError) as e:
            raise ConfigError(f"feature builder state is incomplete or malformed: {e}") from e
        n_values = len([r for r in fb.roles_ if r != "missing"])
        if not (len(fb.center_) == len(fb.scale_) == len(fb.fill_) == n_values):
            raise ConfigError(
                f"feature builder state has {len(fb.center_)} scaling entries, layout needs {n_values}"
            )
        return fb
