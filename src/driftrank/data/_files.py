"""A generic loader for anyone's interaction logs: CSV/TSV/Parquet with a column mapping."""

from __future__ import annotations

import csv
import logging
import os
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import polars as pl

from driftrank.data._dataset import Catalog, Dataset, MissingItemPolicy
from driftrank.errors import DataError

log = logging.getLogger(__name__)

# Header names recognised without a mapping, lower-cased with "_", "-" and " " removed.
_ALIASES: dict[str, tuple[str, ...]] = {
    "user": ("userid", "user", "uid", "customerid", "visitorid", "sessionid", "clientid", "memberid"),
    "item": (
        "itemid",
        "item",
        "iid",
        "movieid",
        "productid",
        "articleid",
        "trackid",
        "bookid",
        "isbn",
        "asin",
        "sku",
        "contentid",
    ),
    "time": ("timestamp", "time", "ts", "datetime", "date", "eventtime", "createdat", "unixtime", "t"),
    "rating": ("rating", "score", "stars", "value"),
    "weight": ("weight", "count", "quantity", "plays", "playcount"),
}
_TEXT_ALIASES = ("title", "name", "description", "overview", "summary", "text")
_GENRE_ALIASES = ("genres", "genre", "category", "categories", "tags", "keywords")


def _norm(col: str) -> str:
    return col.lower().replace("_", "").replace("-", "").replace(" ", "").split(":")[0]


@dataclass(frozen=True)
class ColumnMap:
    """Which source columns hold what. ``None`` = detect from common header names.

    Attributes:
        user, item, time: interaction columns (required in the data, detected when ``None``).
        rating, weight: optional interaction columns.
        item_id: the id column of the item table (default: the same name as ``item``).
        item_text: item table columns joined into the item's text (e.g. ``["title", "plot"]``).
        item_genres: an item table column of categories (list, or ``|``/``,`` separated).
        user_id: the id column of the user table (default: the same name as ``user``).
        user_features: user table columns to keep as features (default: all others).
    """

    user: str | None = None
    item: str | None = None
    time: str | None = None
    rating: str | None = None
    weight: str | None = None
    item_id: str | None = None
    item_text: tuple[str, ...] = ()
    item_genres: str | None = None
    user_id: str | None = None
    user_features: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, spec: str | dict[str, Any] | ColumnMap | None) -> ColumnMap:
        """From a mapping or a ``"user=uid,item=sku,time=ts,item_text=title+plot"`` string."""
        if spec is None:
            return cls()
        if isinstance(spec, ColumnMap):
            return spec
        if isinstance(spec, str):
            pairs: dict[str, Any] = {}
            for part in filter(None, (p.strip() for p in spec.split(","))):
                key, sep, value = part.partition("=")
                if not sep:
                    raise DataError(f"column mapping: expected key=column, got {part!r}")
                pairs[key.strip()] = value.strip()
            spec = pairs
        known = {f.name for f in fields(cls)}
        unknown = set(spec) - known
        if unknown:
            raise DataError(
                f"column mapping: unknown key(s) {sorted(unknown)}; expected some of {sorted(known)}"
            )
        values = dict(spec)
        for key in ("item_text", "user_features"):
            v = values.get(key)
            if isinstance(v, str):
                values[key] = tuple(x for x in v.replace("+", " ").split() if x)
            elif v is not None:
                values[key] = tuple(v)
        return cls(**values)


def read_table(path: str | os.PathLike[str], *, sep: str | None = None) -> pl.DataFrame:
    """Read a CSV/TSV/DAT/Parquet file with every column as written (strings for text files).

    The separator is sniffed from the first lines when not given (``,``, tab, ``;``, ``|``, or
    ``::`` as in MovieLens ``.dat`` files). Errors name the file.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: the file is empty")
    if p.suffix.lower() in (".parquet", ".pq"):
        try:
            return pl.read_parquet(p)
        except Exception as exc:
            raise DataError(f"{p}: not a readable Parquet file ({exc})") from None
    text = _decode(p, p.read_bytes())
    head = "\n".join(text.splitlines()[:20])
    if not head.strip():
        raise DataError(f"{p}: the file is empty")
    multi = None
    if sep is None:
        if "::" in head:
            sep, multi = "\x1f", "::"
        else:
            try:
                sep = csv.Sniffer().sniff(head, delimiters=",\t;|").delimiter
            except csv.Error:
                sep = "\t" if "\t" in head else ","
    elif len(sep) > 1:
        sep, multi = "\x1f", sep
    if multi:
        text = text.replace(multi, sep)
    first = text.splitlines()[0]
    cells = first.split(sep)
    # A header is a first line whose cells are not all numbers.
    has_header = not all(_is_number(c) for c in cells)
    try:
        frame = pl.read_csv(
            text.encode("utf-8"),
            separator=sep,
            has_header=has_header,
            infer_schema=False,
            quote_char='"',
        )
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{p}: cannot be parsed with separator {sep!r}: {exc}") from None
    if not has_header:
        frame.columns = [f"column_{i}" for i in range(frame.width)]
    return frame


def _decode(p: Path, raw: bytes) -> str:
    """The file's text: UTF-8 (a byte-order mark is dropped), or Latin-1 for a file with no
    UTF-8 multi-byte character at all (older data sets such as MovieLens 100K). A UTF-8 file
    with a few bytes that are not UTF-8 is refused naming the line, not re-read as Latin-1
    (which would garble every accented character of it)."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad_at = exc.start
    lenient = raw.decode("utf-8", errors="replace")
    if any(ord(c) > 127 and c != "\ufffd" for c in lenient):
        line = raw.count(b"\n", 0, bad_at) + 1
        raise DataError(
            f"{p}: line {line} has byte 0x{raw[bad_at]:02x} that is not UTF-8, while the rest of the file "
            "is UTF-8; fix that line or re-save the file as UTF-8"
        ) from None
    log.info("%s: not UTF-8; read as Latin-1", p)
    return raw.decode("latin-1")


def _is_number(cell: str) -> bool:
    try:
        float(cell.strip().strip('"'))
        return True
    except ValueError:
        return False


def _pick(frame: pl.DataFrame, given: str | None, role: str, source: str, *, required: bool) -> str | None:
    if given is not None:
        if given not in frame.columns:
            raise DataError(
                f"{source}: the {role} column {given!r} is missing; found columns {frame.columns}"
            )
        return given
    by_norm = {_norm(c): c for c in frame.columns}
    for alias in _ALIASES[role]:
        if alias in by_norm:
            return by_norm[alias]
    if required:
        if frame.columns and all(c.startswith("column_") for c in frame.columns) and frame.width >= 3:
            # Headerless user,item,(rating,)time files, as MovieLens' own.
            order = {"user": 0, "item": 1, "time": 3 if frame.width >= 4 else 2}
            return frame.columns[order[role]]
        raise DataError(
            f"{source}: cannot find the {role} column; found columns {frame.columns}. "
            f"Name it with a column mapping, e.g. {role}=<column>"
        )
    if role == "rating" and all(c.startswith("column_") for c in frame.columns) and frame.width >= 4:
        return frame.columns[2]
    return None


def load_interactions(
    interactions: str | os.PathLike[str] | Any,
    items: str | os.PathLike[str] | Any | None = None,
    users: str | os.PathLike[str] | Any | None = None,
    *,
    columns: str | dict[str, Any] | ColumnMap | None = None,
    name: str | None = None,
    sep: str | None = None,
    missing_items: MissingItemPolicy = "error",
    catalog: Catalog = "interacted",
    collapse_duplicates: bool = False,
) -> Dataset:
    """Load anyone's data: interactions (+ items, + users) from files or frames.

    Files may be CSV, TSV, ``;``/``|``/``::``-separated text, or Parquet; ids may be integers or
    strings; timestamps unix seconds, milliseconds, or date-times. Columns are found by common
    header names (``user_id``, ``userId``, ``item``, ``movieId``, ``timestamp``, ``date``, ...)
    unless ``columns`` names them. Every malformed row raises :class:`DataError` with the file,
    column and first offending row.
    """
    cmap = ColumnMap.parse(columns)
    src = str(interactions) if isinstance(interactions, (str, os.PathLike)) else "interactions"
    frame = (
        read_table(interactions, sep=sep)
        if isinstance(interactions, (str, os.PathLike))
        else _frame(interactions, src)
    )
    if frame.height == 0:
        raise DataError(f"{src}: no data rows")
    ucol = _pick(frame, cmap.user, "user", src, required=True)
    icol = _pick(frame, cmap.item, "item", src, required=True)
    tcol = _pick(frame, cmap.time, "time", src, required=True)
    rcol = _pick(frame, cmap.rating, "rating", src, required=False)
    wcol = _pick(frame, cmap.weight, "weight", src, required=False)
    if len({ucol, icol, tcol}) < 3:
        raise DataError(f"{src}: user, item and time must be different columns, got {ucol}, {icol}, {tcol}")
    sel = [pl.col(ucol).alias("user_id"), pl.col(icol).alias("item_id"), pl.col(tcol).alias("timestamp")]  # type: ignore[arg-type]
    if rcol and rcol not in (ucol, icol, tcol):
        sel.append(pl.col(rcol).alias("rating"))
    if wcol and wcol not in (ucol, icol, tcol, rcol):
        sel.append(pl.col(wcol).alias("weight"))
    inter = frame.select(sel)

    item_frame = None
    isrc = "items"
    if items is not None:
        isrc = str(items) if isinstance(items, (str, os.PathLike)) else "items"
        raw_items = (
            read_table(items, sep=sep) if isinstance(items, (str, os.PathLike)) else _frame(items, isrc)
        )
        item_frame = _items_frame(raw_items, cmap, icol, isrc)  # type: ignore[arg-type]
    user_frame = None
    if users is not None:
        usrc = str(users) if isinstance(users, (str, os.PathLike)) else "users"
        raw_users = (
            read_table(users, sep=sep) if isinstance(users, (str, os.PathLike)) else _frame(users, usrc)
        )
        id_col = (
            cmap.user_id
            or (ucol if ucol in raw_users.columns else None)
            or _pick(raw_users, None, "user", usrc, required=True)
        )
        feats = (
            list(cmap.user_features)
            if cmap.user_features is not None
            else [c for c in raw_users.columns if c != id_col]
        )
        missing = [c for c in [id_col, *feats] if c not in raw_users.columns]
        if missing:
            raise DataError(f"{usrc}: missing column(s) {missing}; found {raw_users.columns}")
        user_frame = raw_users.select(pl.col(id_col).alias("user_id"), *feats)  # type: ignore[arg-type]
    ds_name = name or (
        Path(str(interactions)).stem if isinstance(interactions, (str, os.PathLike)) else "dataset"
    )
    ds = Dataset.from_frames(
        inter,
        item_frame,
        user_frame,
        name=ds_name,
        missing_items=missing_items,
        catalog=catalog,
        collapse_duplicates=collapse_duplicates,
        source=src,
        items_source=isrc,
    )
    _warn_missing_texts(ds, items is not None, isrc)
    return ds


def _warn_missing_texts(ds: Dataset, had_items: bool, source: str) -> None:
    """Say once when items have no text: the interest vectors, the re-ranker's text features,
    the text cold start and the LLM then read empty strings, and rank far worse."""
    empty = sum(1 for t in ds.item_texts if not t.strip())
    if empty == 0:
        return
    if not had_items:
        msg = (
            f"{ds.name}: no item table, so the {ds.n_items:,} items have no titles or texts and the "
            "text-based parts of the engine (interest vectors, text cold start, the re-ranker's text "
            "features) have nothing to read; pass items=FILE (--items on the command line) with a "
            "title or text column"
        )
    elif empty == ds.n_items:
        msg = (
            f"{source}: no item has a title or text (looked for columns {list(_TEXT_ALIASES)}); name "
            "them with columns='item_text=title+description'"
        )
    else:
        msg = f"{source}: {empty:,} of {ds.n_items:,} items have no title or text; they are ranked from their events only"
    warnings.warn(msg, UserWarning, stacklevel=3)


def _frame(obj: Any, source: str) -> pl.DataFrame:
    from driftrank.data._dataset import _to_polars

    return _to_polars(obj, source)


def _items_frame(raw: pl.DataFrame, cmap: ColumnMap, item_col: str, source: str) -> pl.DataFrame:
    id_col = cmap.item_id or (item_col if item_col in raw.columns else None)
    if id_col is None:
        by_norm = {_norm(c): c for c in raw.columns}
        id_col = next((by_norm[a] for a in _ALIASES["item"] if a in by_norm), None)
    if id_col is None or id_col not in raw.columns:
        raise DataError(
            f"{source}: cannot find the item id column; found {raw.columns}. Use item_id=<column>"
        )
    by_norm = {_norm(c): c for c in raw.columns}
    text_cols = list(cmap.item_text) or [by_norm[a] for a in _TEXT_ALIASES if a in by_norm][:1]
    missing = [c for c in text_cols if c not in raw.columns]
    if missing:
        raise DataError(f"{source}: item text column(s) {missing} missing; found {raw.columns}")
    genre_col = cmap.item_genres or next((by_norm[a] for a in _GENRE_ALIASES if a in by_norm), None)
    out = raw.select(pl.col(id_col).alias("item_id"))
    if text_cols:
        out = out.with_columns(raw[text_cols[0]].cast(pl.String).fill_null("").alias("title"))
    if genre_col and genre_col in raw.columns:
        g = raw[genre_col]
        if g.dtype == pl.String:
            sample = " ".join(g.drop_nulls().head(50).to_list())
            gsep = "|" if "|" in sample else ","
            g = g.str.split(gsep).list.eval(pl.element().str.strip_chars().filter(pl.element() != ""))
        out = out.with_columns(g.alias("genres"))
    if len(text_cols) > 1:
        from driftrank.data._validate import compose_text

        extra = raw.select([pl.col(c).cast(pl.String).fill_null("") for c in text_cols[1:]])
        genres = out["genres"].to_list() if "genres" in out.columns else [[] for _ in range(out.height)]
        texts = [
            " ".join([compose_text(t, None, g or [], []), *[e for e in ex if e]])
            for t, g, ex in zip(out["title"].to_list(), genres, extra.iter_rows(), strict=True)
        ]
        out = out.with_columns(pl.Series("text", texts))
    return out


__all__ = ["ColumnMap", "load_interactions", "read_table"]
