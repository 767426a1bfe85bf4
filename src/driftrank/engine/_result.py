"""Rankings as one table: a row per (user, rank), for files, data frames and other systems."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import polars as pl

from driftrank.errors import ConfigError

if TYPE_CHECKING:
    from driftrank.engine._engine import RankResult

__all__ = ["TableFormat", "results_table"]

TableFormat = Literal["polars", "pandas"]


def results_table(
    results: Sequence[RankResult], *, contributions: bool = False, format: TableFormat = "polars"
) -> Any:
    """One row per (user, rank) of ``results``, best first within each user.

    Columns: ``user_id``, ``rank`` (1-based), ``item_id``, ``title``, ``score``, and with
    ``contributions`` one ``+signal`` column per signal group (how much it added to the score;
    the score is their sum plus ``base``). Users with fewer results than ``k`` have fewer rows.
    ``format="pandas"`` returns a pandas frame (pandas must be installed).
    """
    if format not in ("polars", "pandas"):
        raise ConfigError(f"format must be 'polars' or 'pandas', got {format!r}")
    counts = np.array([len(r) for r in results], dtype=np.int64)
    total = int(counts.sum())
    cols: dict[str, Any] = {
        "user_id": _repeat_ids([r.user for r in results], counts),
        "rank": np.concatenate([np.arange(1, n + 1, dtype=np.int32) for n in counts.tolist()])
        if len(results)
        else np.zeros(0, np.int32),
        "item_id": _concat([r.item_ids for r in results]),
        "title": [t for r in results for t in r.titles],
        "score": _concat([r.scores for r in results], np.float32),
    }
    if contributions:
        groups: list[str] = []
        for r in results:
            for g in r.contributions:
                if g not in groups:
                    groups.append(g)
        for g in groups:
            # A group a result does not have (a text query's signals, say) contributed nothing.
            cols[f"+{g}"] = _concat(
                [r.contributions.get(g, np.zeros(len(r), np.float32)) for r in results], np.float32
            )
        cols["base"] = _concat([r.base for r in results], np.float32)
    assert all(len(v) == total for v in cols.values())
    if format == "pandas":
        try:
            import pandas as pd
        except ImportError:
            raise ConfigError("format='pandas' needs pandas: pip install pandas") from None
        return pd.DataFrame(cols)
    return pl.DataFrame(cols)


def _concat(parts: list[np.ndarray], dtype: Any = None) -> np.ndarray:
    if not parts:
        return np.zeros(0, dtype=dtype or np.int64)
    out = np.concatenate(parts)
    return out.astype(dtype, copy=False) if dtype is not None else out


def _repeat_ids(users: list[object], counts: np.ndarray) -> Any:
    """Each user id repeated once per row, as a numpy array for numbers, a list otherwise."""
    if users and all(isinstance(u, (int, np.integer)) and not isinstance(u, bool) for u in users):
        return np.repeat(np.asarray(users, dtype=np.int64), counts)
    return [u for u, n in zip(users, counts.tolist(), strict=True) for _ in range(n)]
