"""Logged bandit feedback (a :class:`BanditLog`) and the Open Bandit Dataset loader."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from driftrank.errors import DataError, DataNotFoundError

__all__ = ["BanditLog", "load_obd"]

Behavior = Literal["random", "bts"]


@dataclass(frozen=True, eq=False)
class BanditLog:
    """Rounds of logged bandit feedback: a context, the action the logging policy took at a
    slot, its probability, and the reward.

    One row = one decision: at slot ``positions[i]`` the logging policy showed item
    ``actions[i]``, which it chose with probability ``propensities[i]`` (the marginal
    probability of that item at that slot given the context), and the user clicked or not.

    Attributes:
        actions: ``int64[n]`` action (item) index in ``[0, n_actions)``.
        positions: ``int64[n]`` 0-based slot in ``[0, n_positions)``.
        rewards: ``float64[n]`` observed reward (OBD: click 0/1).
        propensities: ``float64[n]`` logging probability of ``actions[i]`` at ``positions[i]``.
        timestamps: ``float64[n]`` unix seconds of each round.
        user_features: ``int64[n, n_user_features]`` category code of each (hashed)
            categorical user feature; ``user_categories[f]`` names the codes of feature ``f``.
        affinities: ``float32[n, n_actions]`` user-item affinity of the round's user with
            every action (OBD: past interactions), or ``float32[n, 0]``.
        item_features: ``float64[n_actions, d]`` numeric item descriptors (OBD: the numeric
            feature standardised, then one-hot columns of each hashed categorical feature).
        item_feature_names: the ``d`` column names.
        action_ids: raw id of each action index.
        n_positions: number of slots.
        name: a label for reports (``"obd/random/all"``).
    """

    actions: np.ndarray
    positions: np.ndarray
    rewards: np.ndarray
    propensities: np.ndarray
    timestamps: np.ndarray
    user_features: np.ndarray
    user_categories: tuple[tuple[str, ...], ...]
    affinities: np.ndarray
    item_features: np.ndarray
    item_feature_names: tuple[str, ...]
    action_ids: np.ndarray
    n_positions: int
    name: str = "bandit-log"

    def __post_init__(self) -> None:
        n = len(self.actions)
        for field_name in ("positions", "rewards", "propensities", "timestamps"):
            if getattr(self, field_name).shape != (n,):
                raise DataError(
                    f"{self.name}: {field_name} must have shape ({n},), got {getattr(self, field_name).shape}"
                )
        k = len(self.action_ids)
        if n and (self.actions.min() < 0 or self.actions.max() >= k):
            raise DataError(
                f"{self.name}: actions must be in [0, {k}), got {self.actions.min()}..{self.actions.max()}"
            )
        if n and (self.positions.min() < 0 or self.positions.max() >= self.n_positions):
            raise DataError(
                f"{self.name}: positions must be in [0, {self.n_positions}), got "
                f"{self.positions.min()}..{self.positions.max()}"
            )
        if n and not (np.all(self.propensities > 0) and np.all(self.propensities <= 1 + 1e-9)):
            bad = int(np.flatnonzero(~((self.propensities > 0) & (self.propensities <= 1 + 1e-9)))[0])
            raise DataError(
                f"{self.name}: propensities must be in (0, 1], got {self.propensities[bad]} at round {bad}"
            )
        if not np.all(np.isfinite(self.rewards)):
            raise DataError(f"{self.name}: rewards must be finite")
        if self.user_features.ndim != 2 or self.user_features.shape[0] != n:
            raise DataError(f"{self.name}: user_features must be [{n}, f], got {self.user_features.shape}")
        if len(self.user_categories) != self.user_features.shape[1]:
            raise DataError(
                f"{self.name}: {self.user_features.shape[1]} user feature columns but "
                f"{len(self.user_categories)} category lists"
            )
        if (
            self.affinities.ndim != 2
            or self.affinities.shape[0] != n
            or self.affinities.shape[1] not in (0, k)
        ):
            raise DataError(
                f"{self.name}: affinities must be [{n}, {k}] or [{n}, 0], got {self.affinities.shape}"
            )
        if self.item_features.ndim != 2 or self.item_features.shape[0] != k:
            raise DataError(f"{self.name}: item_features must be [{k}, d], got {self.item_features.shape}")

    @property
    def n_rounds(self) -> int:
        """Number of logged rounds."""
        return len(self.actions)

    @property
    def n_actions(self) -> int:
        """Number of actions (items)."""
        return len(self.action_ids)

    def __len__(self) -> int:
        return self.n_rounds

    def subset(self, index: np.ndarray) -> BanditLog:
        """The rounds selected by ``index`` (``bool[n]`` mask or ``int`` positions), same actions."""
        idx = np.asarray(index)
        if idx.dtype == bool:
            if idx.shape != (self.n_rounds,):
                raise ValueError(f"mask must have shape ({self.n_rounds},), got {idx.shape}")
            idx = np.flatnonzero(idx)
        return BanditLog(
            self.actions[idx],
            self.positions[idx],
            self.rewards[idx],
            self.propensities[idx],
            self.timestamps[idx],
            self.user_features[idx],
            self.user_categories,
            self.affinities[idx],
            self.item_features,
            self.item_feature_names,
            self.action_ids,
            self.n_positions,
            self.name,
        )

    def user_onehot(self) -> np.ndarray:
        """``float64[n, sum_f n_categories_f]``: the user features one-hot encoded."""
        widths = [len(c) for c in self.user_categories]
        out = np.zeros((self.n_rounds, sum(widths)), dtype=np.float64)
        offset = 0
        rows = np.arange(self.n_rounds)
        for f, w in enumerate(widths):
            codes = self.user_features[:, f]
            ok = (codes >= 0) & (codes < w)
            out[rows[ok], offset + codes[ok]] = 1.0
            offset += w
        return out

    def is_uniform(self, rtol: float = 1e-6) -> bool:
        """Whether every propensity is ``1 / n_actions`` (a uniform-random logging policy)."""
        return bool(np.allclose(self.propensities, 1.0 / self.n_actions, rtol=rtol, atol=0.0))


def _obd_home(data_home: str | os.PathLike[str] | None) -> Path:
    if data_home is not None:
        p = Path(data_home)
        return p / "obd" if (p / "obd").is_dir() else p
    env = os.environ.get("DRIFTRANK_DATA_HOME")
    if not env:
        raise DataNotFoundError(
            "Open Bandit Dataset: pass data_home (the folder holding obd/ or obd itself) or set "
            "DRIFTRANK_DATA_HOME"
        )
    return Path(env) / "obd"


def _numeric_column(df: Any, col: str, dtype: Any, path: Path) -> np.ndarray:
    """Column ``col`` of polars frame ``df`` as ``dtype`` numbers; a value that is not one
    (text, a fraction where an integer belongs) raises :class:`DataError` naming it and its row."""
    import polars as pl

    s = df[col]
    out = s.cast(dtype, strict=False)
    if dtype == pl.Int64 and s.dtype.is_float():
        out = out.set(s != s.round(0), None)  # type: ignore[arg-type]
    bad = out.is_null() & s.is_not_null()
    if bad.any():
        row = int(bad.arg_true()[0])
        kind = "an integer" if dtype == pl.Int64 else "a number"
        raise DataError(f"{path}: column {col!r} must hold {kind}, got {s[row]!r} at data row {row + 1}")
    return out.to_numpy()


def load_obd(
    behavior: Behavior = "random",
    campaign: str = "all",
    data_home: str | os.PathLike[str] | None = None,
    *,
    user_categories: tuple[tuple[str, ...], ...] | None = None,
) -> BanditLog:
    """Read the Open Bandit Dataset log of one logging policy and campaign.

    Reads ``{data_home}/obd/{behavior}/{campaign}/{campaign}.csv`` and ``item_context.csv``
    beside it (``data_home`` defaults to ``$DRIFTRANK_DATA_HOME``; it may also point at the
    ``obd`` folder itself). Positions 1..3 become slots 0..2; timestamps become unix seconds;
    hashed user features become category codes in sorted order of their hash strings, or in
    the order of ``user_categories`` (e.g. another log's, so that two logs share one encoding:
    the hashes agree between OBD's random and BTS logs; unknown values get code -1).
    ``item_features``: ``item_feature_0`` standardised, then one-hot of the hashed ones.

    Raises:
        DataNotFoundError: the files are not there.
        DataError: a column is missing or a value is invalid (the message names file and row).
    """
    import polars as pl

    if behavior not in ("random", "bts"):
        raise DataError(f"behavior must be 'random' or 'bts', got {behavior!r}")
    folder = _obd_home(data_home) / behavior / campaign
    log_path = folder / f"{campaign}.csv"
    ctx_path = folder / "item_context.csv"
    for p in (log_path, ctx_path):
        if not p.is_file():
            raise DataNotFoundError(f"Open Bandit Dataset file not found: {p}")
    try:
        df = pl.read_csv(log_path, infer_schema_length=10000)
        ctx = pl.read_csv(ctx_path, infer_schema_length=10000)
    except pl.exceptions.PolarsError as e:
        raise DataError(f"{log_path}: cannot be parsed as CSV: {e}") from None
    need = ["timestamp", "item_id", "position", "click", "propensity_score"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise DataError(f"{log_path}: missing column(s) {missing}; found {df.columns[:8]}...")
    if df.height == 0:
        raise DataError(f"{log_path}: no rows")
    if "item_id" not in ctx.columns:
        raise DataError(f"{ctx_path}: missing column 'item_id'")
    for c in need[1:]:
        nulls = df[c].null_count()
        if nulls:
            row = int(np.flatnonzero(df[c].is_null().to_numpy())[0])
            raise DataError(
                f"{log_path}: column {c!r} has {nulls} empty value(s), first at data row {row + 1}"
            )

    action_ids = np.sort(_numeric_column(ctx, "item_id", pl.Int64, ctx_path))
    if len(np.unique(action_ids)) != len(action_ids):
        raise DataError(f"{ctx_path}: duplicated item_id values")
    raw_items = _numeric_column(df, "item_id", pl.Int64, log_path)
    actions = np.searchsorted(action_ids, raw_items)
    bad = (actions >= len(action_ids)) | (action_ids[np.minimum(actions, len(action_ids) - 1)] != raw_items)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{log_path}: item_id {raw_items[row]} at data row {row + 1} is not in {ctx_path.name}"
        )
    pos = _numeric_column(df, "position", pl.Int64, log_path)
    if pos.min() < 1:
        row = int(np.argmin(pos))
        raise DataError(f"{log_path}: position must be 1-based, got {pos[row]} at data row {row + 1}")
    click = _numeric_column(df, "click", pl.Float64, log_path)
    if not np.isin(click, (0.0, 1.0)).all():
        row = int(np.flatnonzero(~np.isin(click, (0.0, 1.0)))[0])
        raise DataError(f"{log_path}: click must be 0 or 1, got {click[row]} at data row {row + 1}")
    prop = _numeric_column(df, "propensity_score", pl.Float64, log_path)
    badp = ~((prop > 0) & (prop <= 1))
    if badp.any():
        row = int(np.flatnonzero(badp)[0])
        raise DataError(
            f"{log_path}: propensity_score must be in (0, 1], got {prop[row]} at data row {row + 1}"
        )
    try:
        ts = df["timestamp"].cast(pl.String).str.to_datetime(time_zone="UTC").dt.epoch("us").to_numpy() / 1e6
    except pl.exceptions.PolarsError as e:
        raise DataError(f"{log_path}: column 'timestamp' is not a date-time: {e}") from None

    ucols = sorted(
        (c for c in df.columns if c.startswith("user_feature_")), key=lambda c: int(c.rsplit("_", 1)[1])
    )
    if user_categories is not None and len(user_categories) != len(ucols):
        raise DataError(
            f"{log_path}: {len(ucols)} user feature columns but user_categories has {len(user_categories)}"
        )
    cats: list[tuple[str, ...]] = []
    codes = np.zeros((df.height, len(ucols)), dtype=np.int64)
    for f, c in enumerate(ucols):
        values = df[c].cast(pl.String).fill_null("").to_numpy().astype(str)
        vocab = tuple(sorted(set(values.tolist()))) if user_categories is None else tuple(user_categories[f])
        lookup = {v: j for j, v in enumerate(vocab)}
        codes[:, f] = [lookup.get(v, -1) for v in values]
        cats.append(vocab)
    acols = [f"user-item_affinity_{j}" for j in action_ids]
    if all(c in df.columns for c in acols):
        aff = df.select(acols).cast(pl.Float32).to_numpy().astype(np.float32)
    else:
        aff = np.zeros((df.height, 0), dtype=np.float32)

    ctx = ctx.with_columns(pl.col("item_id").cast(pl.Int64)).sort("item_id")
    blocks: list[np.ndarray] = []
    names: list[str] = []
    for c in ctx.columns:
        if c in ("item_id", "") or c.startswith("__") or not c.startswith("item_feature"):
            continue
        col = ctx[c]
        if col.dtype.is_numeric():
            v = col.cast(pl.Float64).fill_null(0.0).to_numpy()
            sd = v.std()
            blocks.append(((v - v.mean()) / (sd if sd > 0 else 1.0))[:, None])
            names.append(c)
        else:
            values = col.cast(pl.String).fill_null("").to_numpy().astype(str)
            vocab_i = sorted(set(values.tolist()))
            onehot = (values[:, None] == np.asarray(vocab_i)[None, :]).astype(np.float64)
            blocks.append(onehot)
            names.extend(f"{c}={j}" for j in range(len(vocab_i)))
    item_features = np.hstack(blocks) if blocks else np.zeros((len(action_ids), 0))
    return BanditLog(
        actions=actions.astype(np.int64),
        positions=pos - 1,
        rewards=click,
        propensities=prop,
        timestamps=ts.astype(np.float64),
        user_features=codes,
        user_categories=tuple(cats),
        affinities=aff,
        item_features=item_features,
        item_feature_names=tuple(names),
        action_ids=action_ids,
        n_positions=int(pos.max()),
        name=f"obd/{behavior}/{campaign}",
    )
