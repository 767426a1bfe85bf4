"""The evaluation protocol: fit, rank the whole catalog, score every user with a target."""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from driftrank._atomic import atomic_path
from driftrank._progress import bar as progress_bar
from driftrank.data import Dataset
from driftrank.eval._metrics import coverage, metrics_at, target_ranks
from driftrank.eval._split import Split, Targets
from driftrank.types import Ranker, Ranking

log = logging.getLogger(__name__)

__all__ = ["EvalResult", "evaluate", "rank_targets", "write_predictions"]

Stage = Literal["validation", "test"]


@dataclass
class EvalResult:
    """Metrics of one ranker on one stage.

    ``metrics`` maps names (``"NDCG@10"``, ``"HR@20"``, ``"coverage@10"``, ...) to the mean over
    users; ``per_user`` keeps each user's values (aligned with ``users``) for paired tests.
    ``ranked`` holds each user's top list (item indices) so predictions can be exported.
    """

    metrics: dict[str, float]
    per_user: dict[str, np.ndarray]
    users: np.ndarray
    ranked: np.ndarray
    fit_seconds: float
    rank_seconds: float
    extra: dict[str, object] = field(default_factory=dict)


def rank_targets(
    ranker: Ranker,
    history: Dataset,
    targets: Targets,
    k: int,
    *,
    batch_size: int = 256,
    progress: bool = False,
) -> tuple[Ranking, float]:
    """Rank the catalog for every target user, excluding what ``history`` says they have seen.

    Returns the ranking (rows aligned with ``targets``) and the seconds spent ranking.
    """
    seen = history.seen
    n = len(targets)
    items = np.full((n, k), -1, dtype=np.int64)
    scores = np.full((n, k), np.nan, dtype=np.float32)
    start = time.perf_counter()
    for s in progress_bar(range(0, n, batch_size), enabled=progress, desc="rank", unit="batch", leave=False):
        e = min(n, s + batch_size)
        users = targets.users[s:e]
        r = ranker.rank(users, k, exclude=seen, at=targets.timestamps[s:e])
        if r.items.shape != (e - s, k):
            raise ValueError(
                f"{type(ranker).__name__}.rank returned shape {r.items.shape}, expected {(e - s, k)}"
            )
        items[s:e] = r.items
        scores[s:e] = r.scores
    return Ranking(items, scores), time.perf_counter() - start


def evaluate(
    ranker: Ranker,
    split: Split,
    *,
    stage: Stage = "test",
    ks: Sequence[int] = (10, 20),
    fit: bool = True,
    progress: bool = False,
) -> EvalResult:
    """Fit ``ranker`` and measure it on one stage of ``split``.

    Test: fit on train+validation, rank each test user's target against every item not in
    their train+validation history. Validation: fit on train, exclude train items. Metrics are
    averaged over all users with a target; a user the ranker returns nothing for scores 0.
    ``fit=False`` reuses an already fitted ranker.
    """
    if not ks or any(int(k) <= 0 for k in ks):
        raise ValueError(f"ks must be positive integers, got {list(ks)}")
    history = split.train_valid if stage == "test" else split.train
    targets = split.test if stage == "test" else split.validation
    fit_seconds = 0.0
    if fit:
        t = time.perf_counter()
        ranker.fit(history)
        fit_seconds = time.perf_counter() - t
    kmax = max(ks)
    ranking, rank_seconds = rank_targets(ranker, history, targets, kmax, progress=progress)
    ranks = target_ranks(ranking.items, targets.items)
    per_user: dict[str, np.ndarray] = {}
    for k in sorted(ks):
        per_user.update(metrics_at(ranks, k))
    metrics = {name: float(v.mean()) if v.size else 0.0 for name, v in per_user.items()}
    for k in sorted(ks):
        metrics[f"coverage@{k}"] = coverage(ranking.items, k, history.n_items)
    return EvalResult(metrics, per_user, targets.users, ranking.items, fit_seconds, rank_seconds)


def write_predictions(
    path: str | os.PathLike[str], dataset: Dataset, users: np.ndarray, ranked: np.ndarray
) -> Path:
    """Write ``user_id,items`` CSV: raw user id, then raw item ids best first, space-separated.

    Written to a temporary file and renamed, so a crash leaves no half file.
    """
    p = Path(path)
    uids = dataset.user_ids.ids
    iids = dataset.item_ids.ids
    with atomic_path(p) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["user_id", "items"])
        for u, row in zip(users, ranked, strict=True):
            w.writerow([uids[u], " ".join(str(iids[i]) for i in row if i >= 0)])
    return p
