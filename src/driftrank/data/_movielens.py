"""Loaders for the MovieLens data sets, in GroupLens's official layouts and RecBole's atomic files."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import polars as pl

from driftrank.data._dataset import Dataset
from driftrank.data._download import resolve
from driftrank.errors import DataError

ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip
ML1M_AGES = {1: "under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+"}
ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
]  # fmt: skip
TOP_TAGS = 5


def _read(
    path: Path,
    *,
    sep: str,
    header: bool,
    names: list[str] | None = None,
    encoding: str = "utf-8",
    multi_sep: str | None = None,
) -> pl.DataFrame:
    """Read a delimited text file as strings; ``multi_sep`` (e.g. ``::``) is folded to ``sep``."""
    try:
        raw = path.read_bytes().decode(encoding)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid {encoding} text ({exc})") from None
    if multi_sep:
        raw = raw.replace(multi_sep, sep)
    if not raw.strip():
        raise DataError(f"{path}: the file is empty")
    try:
        return pl.read_csv(
            io.BytesIO(raw.encode("utf-8")),
            separator=sep,
            has_header=header,
            new_columns=names,
            quote_char=None,
            infer_schema=False,
            truncate_ragged_lines=False,
        )
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{path}: cannot be parsed with separator {sep!r}: {exc}") from None


def _has(*files: str) -> Callable[[Path], bool]:
    return lambda p: all((p / f).is_file() for f in files)


def _has_ml100k(p: Path) -> bool:
    return _has("u.data", "u.item")(p) or _has("ml-100k.inter", "ml-100k.item")(p)


def load_ml100k(path: Path, name: str = "ml-100k") -> Dataset:
    """MovieLens 100K from official ``u.data/u.item/u.user`` or RecBole ``ml-100k.inter/.item/.user``."""
    if (path / "u.data").is_file():
        inter = _read(
            path / "u.data", sep="\t", header=False, names=["user_id", "item_id", "rating", "timestamp"]
        )
        items_raw = _read(
            path / "u.item",
            sep="|",
            header=False,
            encoding="latin-1",
            names=["item_id", "title", "release", "video", "url", *[f"g{i}" for i in range(19)]],
        )
        genres = [
            [g for g, flag in zip(ML100K_GENRES, row, strict=True) if flag == "1"]
            for row in items_raw.select([f"g{i}" for i in range(19)]).iter_rows()
        ]
        items = items_raw.select("item_id", "title").with_columns(
            pl.Series("genres", genres, dtype=pl.List(pl.String)),
            pl.col("title").str.extract(r"\((\d{4})\)\s*$").alias("year"),
        )
        users = None
        if (path / "u.user").is_file():
            users = _read(
                path / "u.user",
                sep="|",
                header=False,
                names=["user_id", "age", "gender", "occupation", "zip_code"],
            )
    else:
        inter = _read(path / "ml-100k.inter", sep="\t", header=True)
        inter = inter.rename(lambda c: c.split(":")[0]).rename({"user_id": "user_id", "item_id": "item_id"})
        items_raw = _read(path / "ml-100k.item", sep="\t", header=True).rename(lambda c: c.split(":")[0])
        items = items_raw.select(
            "item_id",
            pl.col("movie_title").alias("title"),
            pl.col("release_year").alias("year"),
            pl.col("class").fill_null("").str.split(" ").alias("genres"),
        ).with_columns(
            # RecBole splits "Children's" and "Film-Noir" intact but its titles lack the year.
            pl.when(pl.col("year").is_not_null() & (pl.col("year") != ""))
            .then(pl.col("title") + " (" + pl.col("year") + ")")
            .otherwise(pl.col("title"))
            .alias("title")
        )
        users = None
        if (path / "ml-100k.user").is_file():
            users = _read(path / "ml-100k.user", sep="\t", header=True).rename(lambda c: c.split(":")[0])
    if users is not None:
        users = users.with_columns(pl.col("age").cast(pl.Int32, strict=False))
    return Dataset.from_frames(inter, items, users, name=name, source=str(path), items_source=str(path))


def _has_ml1m(p: Path) -> bool:
    return _has("ratings.dat", "movies.dat")(p) or _has("interactions.tsv", "items.tsv")(p)


def load_ml1m(path: Path, name: str = "ml-1m") -> Dataset:
    """MovieLens 1M from the official ``ratings.dat/movies.dat/users.dat`` (``::``-separated),
    or the 5-core sequential-recommendation set as ``interactions.tsv/items.tsv/users.tsv``
    (tab-separated with headers; the events in each user's time order, no ratings)."""
    if not (path / "ratings.dat").is_file() and (path / "interactions.tsv").is_file():
        return _load_ml1m_tsv(path, name)
    inter = _read(
        path / "ratings.dat",
        sep="\x1f",
        header=False,
        multi_sep="::",
        encoding="latin-1",
        names=["user_id", "item_id", "rating", "timestamp"],
    )
    items = _read(
        path / "movies.dat",
        sep="\x1f",
        header=False,
        multi_sep="::",
        encoding="latin-1",
        names=["item_id", "title", "genres"],
    )
    users = None
    if (path / "users.dat").is_file():
        users = _ml1m_users(
            _read(
                path / "users.dat",
                sep="\x1f",
                header=False,
                multi_sep="::",
                names=["user_id", "gender", "age", "occupation", "zip_code"],
            )
        )
    return Dataset.from_frames(
        inter,
        items,
        users,
        name=name,
        source=str(path / "ratings.dat"),
        items_source=str(path / "movies.dat"),
    )


def _ml1m_users(users: pl.DataFrame) -> pl.DataFrame:
    """Ages as numbers and occupations by name (GroupLens codes them 0..20)."""
    return users.with_columns(
        pl.col("age").cast(pl.Int32, strict=False),
        pl.col("occupation")
        .cast(pl.Int32, strict=False)
        .map_elements(
            lambda i: ML1M_OCCUPATIONS[i] if 0 <= i < len(ML1M_OCCUPATIONS) else "other",
            return_dtype=pl.String,
        ),
    )


def _load_ml1m_tsv(path: Path, name: str) -> Dataset:
    inter = _read(path / "interactions.tsv", sep="\t", header=True)
    items = _read(path / "items.tsv", sep="\t", header=True)
    users = None
    if (path / "users.tsv").is_file():
        users = _ml1m_users(_read(path / "users.tsv", sep="\t", header=True))
    return Dataset.from_frames(
        inter,
        items,
        users,
        name=name,
        source=str(path / "interactions.tsv"),
        items_source=str(path / "items.tsv"),
    )


def load_ml_latest_small(path: Path, name: str = "ml-latest-small") -> Dataset:
    """MovieLens latest-small from ``ratings.csv/movies.csv`` (+ the top user tags of ``tags.csv``)."""
    inter = pl.read_csv(path / "ratings.csv", infer_schema=False).rename(
        {"userId": "user_id", "movieId": "item_id"}
    )
    items = pl.read_csv(path / "movies.csv", infer_schema=False).rename({"movieId": "item_id"})
    if (path / "tags.csv").is_file():
        tags = (
            pl.read_csv(path / "tags.csv", infer_schema=False)
            .with_columns(pl.col("tag").str.strip_chars().str.to_lowercase())
            .filter(pl.col("tag") != "")
            .group_by("movieId", "tag")
            .agg(pl.len().alias("n"), pl.col("timestamp").min().alias("first"))
            .sort(["movieId", "n", "first", "tag"], descending=[False, True, False, False])
            .group_by("movieId", maintain_order=True)
            .agg(pl.col("tag").head(TOP_TAGS).alias("tags"))
            .rename({"movieId": "item_id"})
        )
        items = items.join(tags, on="item_id", how="left", maintain_order="left")
    return Dataset.from_frames(
        inter, items, None, name=name, source=str(path / "ratings.csv"), items_source=str(path / "movies.csv")
    )


LOADERS: dict[str, tuple[Callable[[Path, str], Dataset], Callable[[Path], bool]]] = {
    "ml-100k": (load_ml100k, _has_ml100k),
    "ml-1m": (load_ml1m, _has_ml1m),
    "ml-latest-small": (load_ml_latest_small, _has("ratings.csv", "movies.csv")),
}


def load_dataset(
    name: str, data_home: str | os.PathLike[str] | None = None, *, download: bool = True
) -> Dataset:
    """Load a named data set: ``"ml-100k"``, ``"ml-1m"`` or ``"ml-latest-small"``.

    The files are looked up in ``data_home`` (the folder itself or its ``<name>/`` child), then
    ``$DRIFTRANK_DATA_HOME/<name>``, then the cache folder (``$DRIFTRANK_CACHE`` or
    ``~/.cache/driftrank``), then downloaded from GroupLens with a checksum check when
    ``download`` is true and the machine is online. ``"synthetic"`` returns the seeded
    drifting-interests generator's default data set.
    """
    if name == "synthetic":
        from driftrank.data._synthetic import make_drifting

        return make_drifting()
    if name not in LOADERS:
        raise DataError(f"unknown data set {name!r}; expected one of {sorted(LOADERS)} or 'synthetic'")
    loader, has_files = LOADERS[name]
    folder = resolve(name, data_home, has_files, download_ok=download)
    return loader(folder, name)
