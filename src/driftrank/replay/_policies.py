"""Evaluation policies as action distributions over the rounds of a log."""

from __future__ import annotations

import numpy as np

from driftrank.errors import ConfigError, DataError
from driftrank.replay._bandit import BanditLog

__all__ = ["action_distribution", "ranking_policy", "softmax_policy", "uniform_policy"]


def uniform_policy(log: BanditLog) -> np.ndarray:
    """``float64[n_rounds, n_actions]``: every action with probability ``1 / n_actions``."""
    return np.full((log.n_rounds, log.n_actions), 1.0 / log.n_actions)


def action_distribution(
    behavior: BanditLog,
    at: BanditLog,
    *,
    bin_seconds: float | None = None,
    smoothing: float = 0.0,
) -> np.ndarray:
    """The empirical per-slot action distribution of the policy that logged ``behavior``,
    evaluated for the rounds of ``at``: ``float64[at.n_rounds, n_actions, n_positions]``.

    This is how to evaluate a context-free logging policy (e.g. OBD's Bernoulli Thompson
    sampling) on another log when its probabilities are not available for that log: the share
    of the ``behavior`` rounds at slot ``p`` that showed action ``a`` estimates the probability
    that the policy shows ``a`` at ``p``, averaged over time. With ``bin_seconds`` (e.g.
    ``86400``) each round of ``at`` gets the distribution of its own UTC time bin, which
    follows a policy that changes over time (a bandit that learns); bins of ``at`` that
    ``behavior`` has no round in fall back to the whole-log distribution. ``smoothing`` adds
    a pseudo-count to every (action, slot) cell, so actions never logged keep some mass.
    """
    if behavior.n_actions != at.n_actions or behavior.n_positions != at.n_positions:
        raise DataError(
            f"logs disagree on (actions, slots): {behavior.name!r} has "
            f"{(behavior.n_actions, behavior.n_positions)}, {at.name!r} has {(at.n_actions, at.n_positions)}"
        )
    if not np.array_equal(behavior.action_ids, at.action_ids):
        raise DataError(f"logs {behavior.name!r} and {at.name!r} have different action ids")
    if not smoothing >= 0:
        raise ConfigError(f"smoothing must be non-negative, got {smoothing}")
    if bin_seconds is not None and not bin_seconds > 0:
        raise ConfigError(f"bin_seconds must be positive or None, got {bin_seconds}")
    k, p = at.n_actions, at.n_positions

    def table(log: BanditLog) -> np.ndarray:
        counts = np.bincount(log.actions * p + log.positions, minlength=k * p).reshape(k, p) + smoothing
        tot = counts.sum(axis=0, keepdims=True)
        # A slot the log never used: uniform (nothing is known about the policy there).
        return np.where(tot > 0, counts / np.where(tot > 0, tot, 1.0), 1.0 / k)

    overall = table(behavior)
    if bin_seconds is None:
        return np.broadcast_to(overall, (at.n_rounds, k, p)).copy()
    b_bins = np.floor(behavior.timestamps / bin_seconds).astype(np.int64)
    a_bins = np.floor(at.timestamps / bin_seconds).astype(np.int64)
    out = np.empty((at.n_rounds, k, p))
    for b in np.unique(a_bins):
        rows = a_bins == b
        in_bin = b_bins == b
        out[rows] = table(behavior.subset(in_bin)) if in_bin.any() else overall
    return out


def softmax_policy(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(scores / temperature)`` over actions (axis 1) for ``scores: float[n, n_actions]``
    or ``float[n, n_actions, n_positions]``; a smaller temperature is closer to greedy."""
    if not temperature > 0:
        raise ConfigError(f"temperature must be positive, got {temperature}")
    s = np.asarray(scores, dtype=np.float64) / temperature
    if s.ndim not in (2, 3):
        raise DataError(f"scores must be [n, n_actions] or [n, n_actions, n_positions], got {s.shape}")
    s = s - s.max(axis=1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=1, keepdims=True)


def ranking_policy(scores: np.ndarray, n_positions: int, *, epsilon: float = 0.0) -> np.ndarray:
    """A ranker's page as a per-slot policy: slot ``p`` shows the item ranked ``p`` by
    ``scores: float[n, n_actions]`` (ties to the lower index), each slot exploring uniformly
    with probability ``epsilon``. Returns ``float64[n, n_actions, n_positions]``."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise DataError(f"scores must be [n, n_actions], got {s.shape}")
    n, k = s.shape
    if not isinstance(n_positions, int) or not 1 <= n_positions <= k:
        raise ConfigError(f"n_positions must be an integer in [1, {k}], got {n_positions!r}")
    if not 0.0 <= epsilon <= 1.0:
        raise ConfigError(f"epsilon must be in [0, 1], got {epsilon}")
    order = np.argsort(-s, axis=1, kind="stable")[:, :n_positions]
    out = np.full((n, k, n_positions), epsilon / k)
    rows = np.arange(n)
    for p in range(n_positions):
        out[rows, order[:, p], p] += 1.0 - epsilon
    return out
