"""Validation and normalisation of raw frames into the canonical columns of a Dataset."""

from __future__ import annotations

import polars as pl

from driftrank.errors import DataError

# Numbers above this are taken as milliseconds (year 5138 in seconds); above 1e14, microseconds.
_MS_THRESHOLD = 1e11
_US_THRESHOLD = 1e14


def _first_bad_row(frame: pl.DataFrame, bad: pl.Expr) -> int:
    """1-based data row (header not counted) of the first row matching ``bad``."""
    idx = frame.with_row_index("__r").filter(bad)["__r"]
    return int(idx[0]) + 1


def require_columns(frame: pl.DataFrame, columns: list[str], source: str) -> None:
    """Raise :class:`DataError` naming the missing columns and what was found."""
    if frame.height == 0:
        raise DataError(f"{source}: no data rows (expected columns {columns})")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; expected {columns}, found {frame.columns}")


def _check_ids(frame: pl.DataFrame, col: str, source: str) -> pl.DataFrame:
    s = frame[col]
    if s.dtype.is_float():
        bad = s.is_null() | s.is_nan()
        if bad.any():
            row = _first_bad_row(frame, pl.col(col).is_null() | pl.col(col).is_nan())
            raise DataError(f"{source}: column {col!r} has a missing id at data row {row}")
        if (s != s.round(0)).any():
            row = _first_bad_row(frame, pl.col(col) != pl.col(col).round(0))
            raise DataError(f"{source}: column {col!r} has a non-integer id {s[row - 1]!r} at data row {row}")
        return frame.with_columns(pl.col(col).cast(pl.Int64))
    if s.null_count():
        row = _first_bad_row(frame, pl.col(col).is_null())
        raise DataError(f"{source}: column {col!r} has a missing id at data row {row}")
    if s.dtype.is_integer():
        return frame.with_columns(pl.col(col).cast(pl.Int64))
    s = s.cast(pl.String).str.strip_chars()
    as_float = s.cast(pl.Float64, strict=False)
    if as_float.null_count() == 0 and not s.str.contains(r"^-?\d{1,18}$").all():
        # Float-looking ids ("1.0", "nan") as written by tools that store ids in float columns.
        return _check_ids(frame.with_columns(as_float.alias(col)), col, source)
    if (s == "").any():
        row = _first_bad_row(frame.with_columns(s.alias(col)), pl.col(col) == "")
        raise DataError(f"{source}: column {col!r} has an empty id at data row {row}")
    # Integer-looking ids become integers, so "0042" and 42 name the same item in every file.
    if s.str.contains(r"^-?\d{1,18}$").all():
        return frame.with_columns(s.cast(pl.Int64).alias(col))
    return frame.with_columns(s.alias(col))


def parse_timestamps(frame: pl.DataFrame, col: str, source: str) -> pl.Series:
    """Unix seconds (float64) from numbers (s, ms or us, by magnitude), datetimes or date strings."""
    s = frame[col]
    if s.null_count():
        row = _first_bad_row(frame, pl.col(col).is_null())
        raise DataError(f"{source}: column {col!r} has a missing timestamp at data row {row}")
    if s.dtype == pl.Datetime or isinstance(s.dtype, pl.Datetime):
        return s.dt.epoch("us").cast(pl.Float64) / 1e6
    if s.dtype == pl.Date:
        return s.cast(pl.Datetime("us")).dt.epoch("us").cast(pl.Float64) / 1e6
    if s.dtype.is_numeric():
        out = s.cast(pl.Float64)
    else:
        text = s.cast(pl.String).str.strip_chars()
        num = text.cast(pl.Float64, strict=False)
        if num.null_count() == 0:
            out = num
        else:
            best: pl.Series | None = None
            for fmt in (None, "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d", "%d/%m/%Y %H:%M"):
                try:
                    cand = text.str.to_datetime(format=fmt, strict=False, time_unit="us")
                except pl.exceptions.PolarsError:  # format could not be inferred; try the next
                    continue
                if best is None or cand.null_count() < best.null_count():
                    best = cand
            if best is None or best.null_count():
                bad = best.is_null() & num.is_null() if best is not None else num.is_null()
                row = int(bad.arg_true()[0]) + 1
                raise DataError(
                    f"{source}: column {col!r} has an unparsable timestamp {text[row - 1]!r} at data "
                    f"row {row}; expected unix seconds/milliseconds or an ISO date-time"
                )
            parsed = best
            if getattr(parsed.dtype, "time_zone", None) is not None:
                parsed = parsed.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
            return parsed.dt.epoch("us").cast(pl.Float64) / 1e6
    if out.is_nan().any() or out.is_infinite().any():
        row = _first_bad_row(
            frame.with_columns(out.alias("__t")), pl.col("__t").is_nan() | pl.col("__t").is_infinite()
        )
        raise DataError(f"{source}: column {col!r} has a non-finite timestamp at data row {row}")
    mx = out.abs().max()
    if mx is not None and float(mx) > _US_THRESHOLD:  # type: ignore[arg-type]
        out = out / 1e6
    elif mx is not None and float(mx) > _MS_THRESHOLD:  # type: ignore[arg-type]
        out = out / 1e3
    return out


def _numeric(frame: pl.DataFrame, col: str, source: str) -> pl.Series:
    s = frame[col]
    if not s.dtype.is_numeric():
        num = s.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
        bad = num.is_null() & s.is_not_null()
        if bad.any():
            row = int(bad.arg_true()[0]) + 1
            raise DataError(
                f"{source}: column {col!r} has a non-numeric value {s[row - 1]!r} at data row {row}"
            )
        s = num
    s = s.cast(pl.Float32)
    if s.is_nan().any():
        row = int(s.is_nan().arg_true()[0]) + 1
        raise DataError(f"{source}: column {col!r} has NaN at data row {row}")
    return s


def normalise_interactions(frame: pl.DataFrame, *, source: str) -> pl.DataFrame:
    """Canonical ``user_id, item_id, timestamp, rating, weight`` columns, validated."""
    require_columns(frame, ["user_id", "item_id", "timestamp"], source)
    frame = _check_ids(frame, "user_id", source)
    frame = _check_ids(frame, "item_id", source)
    ts = parse_timestamps(frame, "timestamp", source)
    rating = (
        _numeric(frame, "rating", source)
        if "rating" in frame.columns
        else pl.Series("rating", [None] * frame.height, dtype=pl.Float32)
    )
    if "weight" in frame.columns:
        weight = _numeric(frame, "weight", source)
        if weight.null_count():
            row = int(weight.is_null().arg_true()[0]) + 1
            raise DataError(f"{source}: column 'weight' has a missing value at data row {row}")
        if (weight < 0).any():
            row = int((weight < 0).arg_true()[0]) + 1
            raise DataError(
                f"{source}: column 'weight' must be >= 0, got {weight[row - 1]} at data row {row}"
            )
    else:
        weight = pl.Series("weight", [1.0] * frame.height, dtype=pl.Float32)
    return pl.DataFrame(
        [
            frame["user_id"],
            frame["item_id"],
            ts.alias("timestamp"),
            rating.alias("rating"),
            weight.alias("weight"),
        ]
    )


def _split_list(frame: pl.DataFrame, col: str, sep: str) -> pl.Series:
    s = frame[col]
    if isinstance(s.dtype, pl.List):
        return s.cast(pl.List(pl.String)).list.eval(pl.element().str.strip_chars()).alias(col)
    s = s.cast(pl.String).fill_null("")
    return s.str.split(sep).list.eval(pl.element().str.strip_chars().filter(pl.element() != "")).alias(col)


def compose_text(title: str, year: int | None, genres: list[str], tags: list[str]) -> str:
    """The text a language model reads for an item: title (year). Genres: ... Tags: ..."""
    parts = [title.strip()]
    if year is not None and f"({year})" not in title:
        parts[0] = f"{parts[0]} ({year})".strip()
    if genres:
        parts.append("Genres: " + ", ".join(genres) + ".")
    if tags:
        parts.append("Tags: " + ", ".join(tags) + ".")
    return " ".join(p for p in parts if p)


def normalise_items(frame: pl.DataFrame, *, source: str, genre_sep: str = "|") -> pl.DataFrame:
    """Canonical ``item_id, title, text, genres, year, tags`` columns, validated."""
    require_columns(frame, ["item_id"], source)
    frame = _check_ids(frame, "item_id", source)
    dup = frame["item_id"].is_duplicated()
    if dup.any():
        row = int(dup.arg_true()[1]) + 1
        raise DataError(
            f"{source}: column 'item_id' repeats id {frame['item_id'][row - 1]!r} at data row {row}"
        )
    n = frame.height
    title = (
        frame["title"].cast(pl.String).fill_null("")
        if "title" in frame.columns
        else pl.Series("title", [""] * n)
    )
    genres = (
        _split_list(frame, "genres", genre_sep)
        if "genres" in frame.columns
        else pl.Series("genres", [[]] * n, dtype=pl.List(pl.String))
    )
    tags = (
        _split_list(frame, "tags", "|")
        if "tags" in frame.columns
        else pl.Series("tags", [[]] * n, dtype=pl.List(pl.String))
    )
    if "year" in frame.columns:
        year = frame["year"].cast(pl.String).str.extract(r"(\d{4})").cast(pl.Int32)
    else:
        year = title.str.extract(r"\((\d{4})\)\s*$").cast(pl.Int32)
    if "text" in frame.columns:
        text = frame["text"].cast(pl.String).fill_null("")
    else:
        text = pl.Series(
            "text",
            [
                compose_text(t, y, g, tg)
                for t, y, g, tg in zip(
                    title.to_list(), year.to_list(), genres.to_list(), tags.to_list(), strict=True
                )
            ],
        )
    genres = genres.list.eval(pl.element().filter(pl.element() != "(no genres listed)"))
    return pl.DataFrame(
        [
            frame["item_id"],
            title.alias("title"),
            text.alias("text"),
            genres.alias("genres"),
            year.alias("year"),
            tags.alias("tags"),
        ]
    )


def normalise_users(frame: pl.DataFrame, *, source: str) -> pl.DataFrame:
    """``user_id`` plus feature columns, validated."""
    require_columns(frame, ["user_id"], source)
    frame = _check_ids(frame, "user_id", source)
    dup = frame["user_id"].is_duplicated()
    if dup.any():
        row = int(dup.arg_true()[1]) + 1
        raise DataError(
            f"{source}: column 'user_id' repeats id {frame['user_id'][row - 1]!r} at data row {row}"
        )
    return frame
