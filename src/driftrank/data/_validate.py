"""Validation and normalisation of raw frames into the canonical columns of a Dataset."""

from __future__ import annotations

import polars as pl

from driftrank.data._ids import MAX_ID_CHARS
from driftrank.errors import DataError

_INT64_MAX = 2**63 - 1
_EXACT_FLOAT_INT = 2**53


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
    if s.dtype == pl.Boolean:
        raise DataError(f"{source}: column {col!r} holds booleans; ids must be integers or strings")
    if s.dtype.is_float():
        bad = s.is_null() | s.is_nan()
        if bad.any():
            row = _first_bad_row(frame, pl.col(col).is_null() | pl.col(col).is_nan())
            raise DataError(f"{source}: column {col!r} has a missing id at data row {row}")
        # Floats hold integers exactly only up to 2**53: beyond, distinct ids may be one float.
        inexact = s.is_infinite() | (s != s.round(0)) | (s.abs() > _EXACT_FLOAT_INT)
        if inexact.any():
            row = int(inexact.arg_true()[0]) + 1
            raise DataError(
                f"{source}: column {col!r} has id {s[row - 1]!r} at data row {row}, expected an integer "
                f"below 2**53 (write large ids as integers or text, not floats)"
            )
        return frame.with_columns(pl.col(col).cast(pl.Int64))
    if s.null_count():
        row = _first_bad_row(frame, pl.col(col).is_null())
        raise DataError(f"{source}: column {col!r} has a missing id at data row {row}")
    if s.dtype.is_integer():
        if ((s > _INT64_MAX) | (s < -_INT64_MAX - 1)).any():  # beyond int64: keep them exact, as text
            return _check_ids(frame.with_columns(s.cast(pl.String)), col, source)
        return frame.with_columns(pl.col(col).cast(pl.Int64))
    s = s.cast(pl.String).str.strip_chars()
    if (s == "").any():
        row = _first_bad_row(frame.with_columns(s.alias(col)), pl.col(col) == "")
        raise DataError(f"{source}: column {col!r} has an empty id at data row {row}")
    nul = s.str.contains("\x00", literal=True)
    if nul.any():
        row = int(nul.arg_true()[0]) + 1
        raise DataError(f"{source}: column {col!r} has an id with a NUL character at data row {row}")
    long = s.str.len_chars() > MAX_ID_CHARS
    if long.any():
        row = int(long.arg_true()[0]) + 1
        raise DataError(
            f"{source}: column {col!r} has an id of {s.str.len_chars()[row - 1]} characters at data row "
            f"{row}; ids may have at most {MAX_ID_CHARS}"
        )
    integer_like = s.str.contains(r"^-?\d+$")
    if integer_like.all():
        # Integer-looking ids become integers, so "0042" and 42 name the same item in every
        # file, unless one does not fit 64 bits: then all stay text (never rounded through a float).
        as_int = s.cast(pl.Int64, strict=False)
        if as_int.null_count() == 0:
            return frame.with_columns(as_int.alias(col))
        return frame.with_columns(s.alias(col))
    as_float = s.cast(pl.Float64, strict=False)
    if as_float.null_count() == 0:
        # Float-looking ids ("1.0") as written by tools that store ids in float columns.
        return _check_ids(frame.with_columns(as_float.alias(col)), col, source)
    return frame.with_columns(s.alias(col))


# Magnitude bands of numeric timestamps: seconds below 1e11 (year 5138), then milliseconds,
# microseconds, nanoseconds; the divisor that turns each into seconds.
_UNIT_BANDS = (
    (1e11, 1.0, "seconds"),
    (1e14, 1e3, "milliseconds"),
    (1e17, 1e6, "microseconds"),
    (1e20, 1e9, "nanoseconds"),
)
_SLASH_DATE = r"^(\d{1,2})/(\d{1,2})/(\d{4})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?$"


def _numeric_seconds(frame: pl.DataFrame, out: pl.Series, col: str, source: str) -> pl.Series:
    """Unix seconds from numbers, the unit (s, ms, us, ns) read from their magnitude; one unit
    per column, so a column mixing units is refused at the first row that differs."""
    if out.is_nan().any() or out.is_infinite().any():
        row = _first_bad_row(
            frame.with_columns(out.alias("__t")), pl.col("__t").is_nan() | pl.col("__t").is_infinite()
        )
        raise DataError(f"{source}: column {col!r} has a non-finite timestamp at data row {row}")
    mag = out.abs()
    band = pl.Series([0] * len(out), dtype=pl.Int32)
    for j, (limit, _, _) in enumerate(_UNIT_BANDS):
        band = pl.select(pl.when(mag >= limit).then(j + 1).otherwise(band)).to_series()
    if int(band.max() or 0) >= len(_UNIT_BANDS):  # type: ignore[arg-type]
        row = int((band >= len(_UNIT_BANDS)).arg_true()[0]) + 1
        raise DataError(
            f"{source}: column {col!r} has timestamp {out[row - 1]!r} at data row {row}, too large for "
            "unix seconds, milliseconds, microseconds or nanoseconds"
        )
    first = int(band[0])
    differ = band != first
    if differ.any():
        row = int(differ.arg_true()[0]) + 1
        raise DataError(
            f"{source}: column {col!r} mixes time units: data row 1 ({out[0]!r}) reads as "
            f"{_UNIT_BANDS[first][2]}, data row {row} ({out[row - 1]!r}) as "
            f"{_UNIT_BANDS[int(band[row - 1])][2]}; give one unit per column"
        )
    divisor = _UNIT_BANDS[first][1]
    return out / divisor if divisor != 1.0 else out


def _slash_dates(text: pl.Series, col: str, source: str) -> pl.Series:
    """Unix seconds from ``dd/mm/yyyy`` or ``mm/dd/yyyy`` dates (optional ``HH:MM[:SS]``): the
    order must show in the data (a day above 12), else they are refused as ambiguous."""
    parts = text.str.extract_groups(_SLASH_DATE)
    first = parts.struct.field("1").cast(pl.Int32)
    second = parts.struct.field("2").cast(pl.Int32)
    day_first = bool((first > 12).any())
    month_first = bool((second > 12).any())
    if day_first and month_first:
        r1 = int((first > 12).arg_true()[0]) + 1
        r2 = int((second > 12).arg_true()[0]) + 1
        raise DataError(
            f"{source}: column {col!r} has day-first dates ({text[r1 - 1]!r}, data row {r1}) and "
            f"month-first dates ({text[r2 - 1]!r}, data row {r2}); write ISO dates (YYYY-MM-DD)"
        )
    if not day_first and not month_first:
        raise DataError(
            f"{source}: column {col!r} has dates like {text[0]!r} (data row 1) that read as day/month "
            "or as month/day, and no date in the column tells which; write ISO dates (YYYY-MM-DD)"
        )
    day, month = (first, second) if day_first else (second, first)
    frame = pl.DataFrame(
        {
            "y": parts.struct.field("3").cast(pl.Int32),
            "m": month,
            "d": day,
            "H": parts.struct.field("4").cast(pl.Int32).fill_null(0),
            "M": parts.struct.field("5").cast(pl.Int32).fill_null(0),
            "S": parts.struct.field("6").cast(pl.Int32).fill_null(0),
        }
    )
    bad = (
        (frame["m"] > 12)
        | (frame["m"] < 1)
        | (frame["d"] < 1)
        | (frame["d"] > 31)
        | (frame["H"] > 23)
        | (frame["M"] > 59)
        | (frame["S"] > 59)
    )
    if bad.any():
        row = int(bad.arg_true()[0]) + 1
        raise DataError(
            f"{source}: column {col!r} has an impossible date {text[row - 1]!r} at data row {row}"
        )
    dt = frame.select(
        pl.datetime(
            pl.col("y"), pl.col("m"), pl.col("d"), pl.col("H"), pl.col("M"), pl.col("S"), time_unit="us"
        )
    ).to_series()
    if dt.null_count():
        row = int(dt.is_null().arg_true()[0]) + 1
        raise DataError(
            f"{source}: column {col!r} has an impossible date {text[row - 1]!r} at data row {row}"
        )
    return dt.dt.epoch("us").cast(pl.Float64) / 1e6


def _looks_like_date(value: str) -> bool:
    if pl.Series([value]).str.contains(_SLASH_DATE)[0]:
        return True
    try:
        return pl.Series([value]).str.to_datetime(strict=False, time_unit="us").null_count() == 0
    except pl.exceptions.PolarsError:
        return False


def parse_timestamps(frame: pl.DataFrame, col: str, source: str) -> pl.Series:
    """Unix seconds (float64) from numbers (s, ms, us or ns, by magnitude, one unit per column),
    datetimes, ISO date strings, or ``dd/mm/yyyy``/``mm/dd/yyyy`` dates whose order the data
    shows. A column mixing units, or numbers with date strings, is refused naming the row."""
    s = frame[col]
    if s.null_count():
        row = _first_bad_row(frame, pl.col(col).is_null())
        raise DataError(f"{source}: column {col!r} has a missing timestamp at data row {row}")
    if s.dtype == pl.Datetime or isinstance(s.dtype, pl.Datetime):
        if getattr(s.dtype, "time_zone", None) is not None:
            s = s.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        return s.dt.epoch("us").cast(pl.Float64) / 1e6
    if s.dtype == pl.Date:
        return s.cast(pl.Datetime("us")).dt.epoch("us").cast(pl.Float64) / 1e6
    if s.dtype == pl.Boolean:
        raise DataError(f"{source}: column {col!r} holds booleans, expected timestamps")
    if s.dtype.is_numeric():
        return _numeric_seconds(frame, s.cast(pl.Float64), col, source)
    text = s.cast(pl.String).str.strip_chars()
    num = text.cast(pl.Float64, strict=False)
    if num.null_count() == 0:
        return _numeric_seconds(frame, num, col, source)
    if num.null_count() < len(num):
        is_num = num.is_not_null()
        row = int((is_num != is_num[0]).arg_true()[0]) + 1
        odd = text[row - 1] if is_num[0] else text[0]
        if not _looks_like_date(odd):
            row = row if is_num[0] else 1
            raise DataError(
                f"{source}: column {col!r} has an unparsable timestamp {odd!r} at data row {row}; "
                "expected unix seconds/milliseconds or an ISO date-time"
            )
        kinds = ("a number", "a date string")
        raise DataError(
            f"{source}: column {col!r} mixes numeric and date-string timestamps: data row 1 "
            f"({text[0]!r}) is {kinds[0 if is_num[0] else 1]}, data row {row} ({text[row - 1]!r}) "
            f"{kinds[0 if is_num[row - 1] else 1]}; give one kind per column"
        )
    slash = text.str.contains(_SLASH_DATE)
    if slash.any():
        if not slash.all():
            row = int((slash != slash[0]).arg_true()[0]) + 1
            raise DataError(
                f"{source}: column {col!r} mixes dd/mm/yyyy-style dates with other formats: data row 1 "
                f"{text[0]!r}, data row {row} {text[row - 1]!r}"
            )
        return _slash_dates(text, col, source)
    best: pl.Series | None = None
    for fmt in (None, "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            cand = text.str.to_datetime(format=fmt, strict=False, time_unit="us")
        except pl.exceptions.PolarsError:  # format could not be inferred; try the next
            continue
        if best is None or cand.null_count() < best.null_count():
            best = cand
    if best is None or best.null_count():
        bad = best.is_null() if best is not None else num.is_null()
        row = int(bad.arg_true()[0]) + 1
        raise DataError(
            f"{source}: column {col!r} has an unparsable timestamp {text[row - 1]!r} at data "
            f"row {row}; expected unix seconds/milliseconds or an ISO date-time"
        )
    parsed = best
    if getattr(parsed.dtype, "time_zone", None) is not None:
        parsed = parsed.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return parsed.dt.epoch("us").cast(pl.Float64) / 1e6


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
