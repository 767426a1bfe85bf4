"""Ranking metrics with one held-out target per user."""

from __future__ import annotations

import numpy as np

__all__ = ["coverage", "metrics_at", "target_ranks"]


def target_ranks(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based position of each user's target in their list, or -1 when absent.

    ``ranked: int[n_users, k]`` (-1 = padding), ``targets: int[n_users]``.
    """
    ranked = np.asarray(ranked)
    targets = np.asarray(targets)
    if ranked.ndim != 2 or ranked.shape[0] != targets.shape[0]:
        raise ValueError(f"ranked must be [n_users, k] with n_users={targets.shape[0]}, got {ranked.shape}")
    hit = ranked == targets[:, None]
    pos = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
    return pos.astype(np.int64)


def metrics_at(ranks: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-user ``HR@k``, ``NDCG@k`` (ideal DCG = 1) and ``MRR@k`` from 0-based target ranks.

    A user whose target is missing (-1) or ranked at k or below scores 0.
    """
    if k <= 0:
        raise ValueError(f"k must be a positive integer, got {k}")
    r = np.asarray(ranks)
    inside = (r >= 0) & (r < k)
    rr = np.where(inside, r, 0).astype(np.float64)
    return {
        f"HR@{k}": inside.astype(np.float64),
        f"NDCG@{k}": np.where(inside, 1.0 / np.log2(rr + 2.0), 0.0),
        f"MRR@{k}": np.where(inside, 1.0 / (rr + 1.0), 0.0),
    }


def coverage(ranked: np.ndarray, k: int, n_items: int) -> float:
    """Share of the catalog that appears in at least one user's top-``k``."""
    top = np.asarray(ranked)[:, :k]
    return float(np.unique(top[top >= 0]).size / max(1, n_items))
