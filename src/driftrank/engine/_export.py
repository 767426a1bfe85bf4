"""Rank every user of a saved engine into files: the daily batch job.

Output is a folder of Parquet parts (``part-00000.parquet``, ...), one per chunk of users, the
layout Spark, Ray Data, DuckDB and polars (``pl.scan_parquet("ranks/*.parquet")``) read as one
table; or one CSV file when the path ends in ``.csv``. Either way it is written under a
temporary name and renamed into place at the end, so a reader never sees half a result, and an
existing path is replaced only when it holds a previous output of this function.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from driftrank.errors import DataError

if TYPE_CHECKING:
    from driftrank.engine._engine import Engine

log = logging.getLogger(__name__)

__all__ = ["WriteSummary", "check_known_users", "read_user_ids", "write_rankings"]

# Written into every output folder, so that a later run knows it may replace it.
MARKER = "_DRIFTRANK_RANKINGS"


@dataclass(frozen=True)
class WriteSummary:
    """What :func:`write_rankings` wrote: ``users``, ``rows``, ``seconds``, ``path``, ``parts``."""

    users: int
    rows: int
    seconds: float
    path: Path
    parts: int

    @property
    def users_per_second(self) -> float:
        """Users ranked per wall-clock second."""
        return self.users / self.seconds if self.seconds > 0 else float("inf")


def write_rankings(
    engine: Engine,
    out: str | os.PathLike[str],
    users: Sequence[object] | None = None,
    *,
    k: int = 100,
    chunk_size: int = 4096,
    contributions: bool = False,
    workers: int = 1,
    progress: bool = False,
) -> WriteSummary:
    """Rank ``users`` (default: every user the engine knows) and write one row per (user, rank).

    Columns: ``user_id``, ``rank``, ``item_id``, ``title``, ``score`` and, with
    ``contributions``, one ``+signal`` column per signal group plus ``base``. Users are ranked
    ``chunk_size`` at a time, so memory stays bounded whatever their number. ``out`` ending in
    ``.csv`` gives one CSV file; anything else a folder of Parquet parts.
    """
    target = Path(out)
    if str(out).strip() == "" or target.resolve() == Path(target.resolve().anchor):
        raise DataError(f"out must name a file or folder to create, got {str(out)!r}")
    as_csv = target.suffix.lower() == ".csv"
    check_replaceable(target, as_csv)
    if users is None:
        users = engine.known_users()
    tmp = side_path(target, "tmp")
    start = time.perf_counter()
    rows = parts = 0
    try:
        if not as_csv:
            tmp.mkdir(parents=True)
            (tmp / MARKER).write_text("rankings written by driftrank\n", encoding="utf-8")
        else:
            tmp.parent.mkdir(parents=True, exist_ok=True)
        chunks = engine.rank_tables(
            users, k, chunk_size=chunk_size, contributions=contributions, workers=workers, progress=progress
        )
        with open(tmp, "wb") if as_csv else nullcontext() as handle:
            for table in chunks:
                if as_csv:
                    table.write_csv(handle, include_header=parts == 0)
                else:
                    table.write_parquet(tmp / f"part-{parts:05d}.parquet")
                rows += table.height
                parts += 1
        replace_output(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - start
    log.info("ranked %d users into %d rows in %.1f s (%s)", len(users), rows, seconds, target)
    return WriteSummary(len(users), rows, seconds, target, parts)


def side_path(target: Path, tag: str) -> Path:
    """A hidden name beside ``target``, unique to this writer (``.name.<pid>.<random>.<tag>``)."""
    return target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.{tag}")


def check_known_users(users: Sequence[object], known: Sequence[object], where: str = "") -> None:
    """Refuse ``users`` holding ids outside ``known``, naming how many and the first (its line
    in ``where`` when the ids came from a file, one per line)."""
    known_set = set(known)
    unknown = [j for j, u in enumerate(users) if u not in known_set]
    if unknown:
        first = users[unknown[0]]
        raise DataError(
            f"{where}{len(unknown)} user id(s) the model does not know, the first {first!r}; "
            "rank only users it was fitted on or has observed"
        )


def check_replaceable(target: Path, as_csv: bool) -> None:
    """Refuse to replace anything but an earlier output of :func:`write_rankings`."""
    if not target.exists() and not target.is_symlink():
        return
    if as_csv:
        if not target.is_file():
            raise DataError(f"out {target} exists and is not a file; choose another path")
        with open(target, encoding="utf-8", errors="replace") as f:
            header = f.readline()
        if not header.startswith("user_id,rank,item_id"):
            raise DataError(
                f"out {target} exists and is not a rankings CSV; remove it or choose another path"
            )
        return
    if not target.is_dir() or not (target / MARKER).is_file():
        raise DataError(
            f"out {target} exists and is not a rankings folder written by driftrank; remove it or "
            "choose another path"
        )


def replace_output(tmp: Path, target: Path) -> None:
    """Move ``tmp`` onto ``target`` (a folder is swapped through a side name, then removed)."""
    if tmp.is_dir() and target.is_dir():
        old = side_path(target, "old")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def read_user_ids(path: str | os.PathLike[str], engine: Engine) -> list[object]:
    """User ids from a text or CSV file (one per line; a ``user_id`` header is skipped), typed
    like the engine's ids. Blank lines are skipped; an id the engine does not know is an error
    naming its line."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read user ids from {p}: {exc}") from None
    known = engine.known_users()
    numeric = all(isinstance(u, int) for u in known)
    out: list[object] = []
    line_of: list[int] = []
    for n, line in enumerate(lines, start=1):
        raw = line.split(",", 1)[0].strip()
        if not raw or (n == 1 and raw.lower() in {"user_id", "user", "userid"}):
            continue
        if numeric:
            try:
                out.append(int(raw))
            except ValueError:
                raise DataError(f"{p}, line {n}: user ids are integers here, got {raw!r}") from None
        else:
            out.append(raw)
        line_of.append(n)
    if not out:
        raise DataError(f"{p}: no user ids in it")
    known_set = set(known)
    first = next((j for j, u in enumerate(out) if u not in known_set), None)
    if first is not None:
        check_known_users(out, known, where=f"{p}, line {line_of[first]}: ")
    return out
