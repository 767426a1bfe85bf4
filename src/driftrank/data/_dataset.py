"""The :class:`Dataset`: interactions, item texts and features, user features, vocabularies."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np
import polars as pl
import scipy.sparse as sp

from driftrank.data._ids import IdMap
from driftrank.errors import DataError

__all__ = ["Dataset", "Sequences"]

MissingItemPolicy = Literal["error", "keep"]
Catalog = Literal["interacted", "all"]

# Canonical column names of the frames a Dataset holds.
INTERACTION_SCHEMA = {
    "user": pl.Int32,
    "item": pl.Int32,
    "timestamp": pl.Float64,
    "rating": pl.Float32,
    "weight": pl.Float32,
    "row": pl.Int64,
}


@dataclass(frozen=True)
class Sequences:
    """Per-user interaction sequences in time order (CSR layout).

    ``items[indptr[u]:indptr[u+1]]`` is user ``u``'s history, oldest first, with ties in time
    broken by source row order. Shapes: ``indptr: int64[n_users+1]``, ``items: int32[n]``,
    ``timestamps: float64[n]`` (unix seconds).
    """

    indptr: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray

    def user(self, u: int) -> tuple[np.ndarray, np.ndarray]:
        """Items and timestamps of user ``u``, oldest first."""
        lo, hi = self.indptr[u], self.indptr[u + 1]
        return self.items[lo:hi], self.timestamps[lo:hi]

    def lengths(self) -> np.ndarray:
        """History length per user, ``int64[n_users]``."""
        return np.diff(self.indptr)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Interactions between users and items, with item texts/features and user features.

    Build one with :meth:`from_frames` (or a loader such as :func:`driftrank.load_dataset`);
    that is the only place where raw ids are mapped to indices.

    Attributes:
        interactions: columns ``user`` (int32 index), ``item`` (int32 index), ``timestamp``
            (float64 unix seconds), ``rating`` (float32, null when absent), ``weight`` (float32,
            1 unless given), ``row`` (int64 position in the source); sorted by user, then time,
            ties by source row.
        items: one row per item index in order: ``item``, ``item_id`` (raw), ``title``,
            ``text`` (what the language model reads), ``genres`` (list of str), ``year``
            (int32, null when unknown), ``tags`` (list of str).
        users: ``user``, ``user_id`` and feature columns, or ``None`` when the data has none.
        user_ids, item_ids: the vocabularies.
        name: a label for reports.
    """

    interactions: pl.DataFrame
    items: pl.DataFrame
    user_ids: IdMap
    item_ids: IdMap
    users: pl.DataFrame | None = None
    name: str = "dataset"
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_frames(
        cls,
        interactions: Any,
        items: Any = None,
        users: Any = None,
        *,
        name: str = "dataset",
        missing_items: MissingItemPolicy = "error",
        catalog: Catalog = "interacted",
        collapse_duplicates: bool = False,
        source: str = "interactions",
        items_source: str = "items",
    ) -> Dataset:
        """Build a dataset from frames with canonical raw columns.

        ``interactions`` needs ``user_id``, ``item_id``, ``timestamp`` (numbers = unix seconds,
        or datetimes) and may have ``rating`` and ``weight``. ``items`` needs ``item_id`` and
        may have ``title``, ``text``, ``genres`` (list or ``|``/space separated), ``year``,
        ``tags``. ``users`` needs ``user_id``; its other columns are features. pandas frames
        are accepted too. Rows keep their source order as the time tie-breaker.

        ``missing_items`` says what to do with interactions on items absent from ``items``:
        ``"error"`` raises :class:`DataError`, ``"keep"`` keeps them with empty text.
        ``catalog="all"`` also keeps items of the item table that nobody interacted with.
        Duplicated (user, item) events are kept unless ``collapse_duplicates`` (then the last
        event wins its timestamp and the ratings are kept from it).
        """
        from driftrank.data._validate import (
            normalise_interactions,
            normalise_items,
            normalise_users,
        )

        inter = normalise_interactions(_to_polars(interactions, source), source=source)
        item_frame = (
            normalise_items(_to_polars(items, items_source), source=items_source)
            if items is not None
            else None
        )
        user_frame = (
            normalise_users(_to_polars(users, "users"), source="users") if users is not None else None
        )

        if collapse_duplicates:
            inter = inter.unique(subset=["user_id", "item_id"], keep="last", maintain_order=True)

        # Item vocabulary: interacted items in first-seen order, plus (catalog="all") the rest.
        item_order = inter["item_id"].unique(maintain_order=True)
        if item_frame is not None:
            known = set(item_frame["item_id"].to_list())
            missing = [x for x in item_order.to_list() if x not in known]
            if missing and missing_items == "error":
                first = inter.with_row_index("__r").filter(pl.col("item_id") == missing[0])["__r"][0]
                raise DataError(
                    f"{source}: column 'item_id' has {len(missing)} item(s) missing from the item "
                    f"table {items_source!r}, first {missing[0]!r} at data row {first + 1}; pass "
                    "missing_items='keep' to keep them with empty text"
                )
            if catalog == "all":
                extra = item_frame.filter(~pl.col("item_id").is_in(item_order.implode()))["item_id"]
                item_order = pl.concat([item_order, extra])
        item_ids = IdMap(item_order.to_numpy(), "item")
        user_ids = IdMap(inter["user_id"].unique(maintain_order=True).to_numpy(), "user")

        item_table = _build_item_table(item_ids, item_frame)
        inter_idx = _index_interactions(inter, user_ids, item_ids)
        user_table = None
        if user_frame is not None:
            user_table = _build_user_table(user_ids, user_frame)
        return cls(inter_idx, item_table, user_ids, item_ids, user_table, name)

    # ------------------------------------------------------------------ sizes
    @property
    def n_users(self) -> int:
        """Number of users in the vocabulary."""
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        """Number of items in the catalog."""
        return len(self.item_ids)

    @property
    def n_interactions(self) -> int:
        """Number of interaction rows."""
        return self.interactions.height

    # ------------------------------------------------------------------ arrays
    @cached_property
    def user_index(self) -> np.ndarray:
        """``int32[n_interactions]`` user index of each interaction row."""
        return _ro(self.interactions["user"].to_numpy())

    @cached_property
    def item_index(self) -> np.ndarray:
        """``int32[n_interactions]`` item index of each interaction row."""
        return _ro(self.interactions["item"].to_numpy())

    @cached_property
    def timestamps(self) -> np.ndarray:
        """``float64[n_interactions]`` unix seconds of each interaction row."""
        return _ro(self.interactions["timestamp"].to_numpy())

    @cached_property
    def weights(self) -> np.ndarray:
        """``float32[n_interactions]`` weight of each interaction row."""
        return _ro(self.interactions["weight"].to_numpy())

    @cached_property
    def sequences(self) -> Sequences:
        """The per-user time-ordered sequences (interactions are stored in that order)."""
        counts = np.bincount(self.user_index, minlength=self.n_users)
        indptr = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return Sequences(indptr, self.item_index, self.timestamps)

    @cached_property
    def item_texts(self) -> list[str]:
        """The text of each item, in index order."""
        return self.items["text"].to_list()

    @cached_property
    def item_popularity(self) -> np.ndarray:
        """``int64[n_items]`` number of interactions per item."""
        return np.bincount(self.item_index, minlength=self.n_items)

    def to_csr(self, values: np.ndarray | None = None, *, binary: bool = False) -> sp.csr_matrix:
        """User-item matrix ``float32[n_users, n_items]`` (CSR), duplicates summed.

        ``values`` gives one value per interaction row (default: the ``weight`` column);
        ``binary=True`` gives 1 for every observed pair.
        """
        data = self.weights if values is None else np.asarray(values, dtype=np.float32)
        if data.shape != (self.n_interactions,):
            raise ValueError(
                f"values must have one entry per interaction ({self.n_interactions}), got shape {data.shape}"
            )
        m = sp.csr_matrix(
            (data.astype(np.float32), (self.user_index, self.item_index)),
            shape=(self.n_users, self.n_items),
            dtype=np.float32,
        )
        m.sum_duplicates()
        if binary:
            m.data[:] = 1.0
        return m

    @cached_property
    def seen(self) -> sp.csr_matrix:
        """Binary CSR of the (user, item) pairs present: what rankers exclude."""
        return self.to_csr(binary=True)

    # ------------------------------------------------------------------ derived datasets
    def with_interactions(self, interactions: pl.DataFrame, name: str | None = None) -> Dataset:
        """The same vocabularies, items and users over another set of interaction rows."""
        return Dataset(
            interactions.sort(["user", "timestamp", "row"], maintain_order=True),
            self.items,
            self.user_ids,
            self.item_ids,
            self.users,
            name or self.name,
            dict(self.meta),
        )

    def filter_rows(self, mask: np.ndarray, name: str | None = None) -> Dataset:
        """Keep the interaction rows where ``mask`` (``bool[n_interactions]``) is true."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (self.n_interactions,):
            raise ValueError(f"mask must have shape ({self.n_interactions},), got {mask.shape}")
        return Dataset(
            self.interactions.filter(pl.Series(mask)),
            self.items,
            self.user_ids,
            self.item_ids,
            self.users,
            name or self.name,
            dict(self.meta),
        )

    def describe(self) -> dict[str, Any]:
        """Counts, time span and density, as a dict (also used in reports)."""
        t = self.timestamps
        lengths = self.sequences.lengths()
        n_pairs = int(self.seen.nnz)
        first = float(t.min()) if len(t) else math.nan
        last = float(t.max()) if len(t) else math.nan
        return {
            "name": self.name,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_interactions": self.n_interactions,
            "n_distinct_pairs": n_pairs,
            "density": n_pairs / max(1, self.n_users * self.n_items),
            "first_timestamp": first,
            "last_timestamp": last,
            "time_span_days": (last - first) / 86400.0 if len(t) else 0.0,
            "history_length": {
                "min": int(lengths.min()) if len(lengths) else 0,
                "median": float(np.median(lengths)) if len(lengths) else 0.0,
                "max": int(lengths.max()) if len(lengths) else 0,
            },
            "has_ratings": bool(self.interactions["rating"].null_count() < self.n_interactions),
            "has_user_features": self.users is not None,
            "has_tags": bool(self.items["tags"].list.len().sum() > 0),
        }

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, users={self.n_users}, items={self.n_items}, "
            f"interactions={self.n_interactions})"
        )


# ---------------------------------------------------------------------- helpers
def _ro(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def _to_polars(frame: Any, source: str) -> pl.DataFrame:
    if isinstance(frame, pl.DataFrame):
        return frame
    if isinstance(frame, pl.LazyFrame):
        return frame.collect()
    mod = type(frame).__module__
    if mod.startswith("pandas"):
        return _from_pandas(frame, source)
    if isinstance(frame, dict):
        return pl.DataFrame(frame)
    raise DataError(f"{source}: expected a polars or pandas DataFrame, got {type(frame).__name__}")


def _from_pandas(frame: Any, source: str) -> pl.DataFrame:
    """A polars copy of a pandas frame; an object column mixing kinds of values (ints and
    strings, say) is refused naming its first odd row, rather than left to a converter."""
    for col in frame.columns:
        if frame[col].dtype != object:
            continue
        kinds: dict[str, int] = {}
        for row, v in enumerate(frame[col].tolist(), start=1):
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            kind = "number" if isinstance(v, (int, float)) and not isinstance(v, bool) else type(v).__name__
            kinds.setdefault(kind, row)
            if len(kinds) > 1:
                (k0, r0), (k1, r1) = sorted(kinds.items(), key=lambda kv: kv[1])
                raise DataError(
                    f"{source}: column {col!r} mixes value types: data row {r0} holds a {k0}, data row "
                    f"{r1} a {k1}; convert the column to one type (e.g. .astype(str))"
                )
    try:
        return pl.from_pandas(frame)
    except Exception as exc:  # pyarrow/polars raise many types for unconvertible columns
        raise DataError(
            f"{source}: the pandas frame cannot be converted ({type(exc).__name__}: {exc})"
        ) from None


def _index_interactions(inter: pl.DataFrame, user_ids: IdMap, item_ids: IdMap) -> pl.DataFrame:
    u = pl.Series("user", user_ids.indices(inter["user_id"].to_list()), dtype=pl.Int32)
    i = pl.Series("item", item_ids.indices(inter["item_id"].to_list()), dtype=pl.Int32)
    out = pl.DataFrame(
        [
            u,
            i,
            inter["timestamp"].cast(pl.Float64),
            inter["rating"].cast(pl.Float32),
            inter["weight"].cast(pl.Float32),
            pl.Series("row", np.arange(inter.height, dtype=np.int64)),
        ]
    )
    return out.sort(["user", "timestamp", "row"], maintain_order=True)


def _build_item_table(item_ids: IdMap, frame: pl.DataFrame | None) -> pl.DataFrame:
    base = pl.DataFrame(
        {
            "item": np.arange(len(item_ids), dtype=np.int32),
            "item_id": item_ids.ids,
        }
    )
    if frame is None:
        frame = pl.DataFrame(
            {"item_id": item_ids.ids},
        ).with_columns(
            pl.lit("").alias("title"),
            pl.lit("").alias("text"),
            pl.lit([], dtype=pl.List(pl.String)).alias("genres"),
            pl.lit(None, dtype=pl.Int32).alias("year"),
            pl.lit([], dtype=pl.List(pl.String)).alias("tags"),
        )
    frame = frame.with_columns(pl.col("item_id").cast(base["item_id"].dtype, strict=False))
    out = base.join(frame, on="item_id", how="left", maintain_order="left")
    out = out.with_columns(
        pl.col("title").fill_null(""),
        pl.col("text").fill_null(""),
        pl.col("genres").fill_null(pl.lit([], dtype=pl.List(pl.String))),
        pl.col("tags").fill_null(pl.lit([], dtype=pl.List(pl.String))),
    )
    return out


def _build_user_table(user_ids: IdMap, frame: pl.DataFrame) -> pl.DataFrame:
    base = pl.DataFrame({"user": np.arange(len(user_ids), dtype=np.int32), "user_id": user_ids.ids})
    frame = frame.with_columns(pl.col("user_id").cast(base["user_id"].dtype, strict=False))
    return base.join(frame, on="user_id", how="left", maintain_order="left")
