"""Bootstrap confidence intervals and paired comparisons over per-user metric values."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PairedComparison", "bootstrap_ci", "paired_bootstrap"]


def bootstrap_ci(
    values: np.ndarray, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values: float[n]``."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = _boot_means(v, n_boot, rng)
    a = (1.0 - level) / 2.0
    return float(np.quantile(means, a)), float(np.quantile(means, 1.0 - a))


def _boot_means(v: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty(n_boot)
    chunk = max(1, 2_000_000 // max(1, v.size))
    for s in range(0, n_boot, chunk):
        e = min(n_boot, s + chunk)
        idx = rng.integers(0, v.size, size=(e - s, v.size))
        out[s:e] = v[idx].mean(axis=1)
    return out


@dataclass(frozen=True)
class PairedComparison:
    """Mean of ``b - a`` over users, its bootstrap interval, and a two-sided bootstrap p-value."""

    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        """Plain dict for JSON reports."""
        return dict(self.__dict__)


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> PairedComparison:
    """Compare two systems on the same users: per-user differences, resampled by user.

    The p-value tests "mean difference = 0": the share of bootstrap means of the centred
    differences at least as far from 0 as the observed mean (two-sided).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a and b must be 1-d arrays of one length, got {a.shape} and {b.shape}")
    d = b - a
    if d.size == 0:
        nan = float("nan")
        return PairedComparison(nan, nan, nan, nan, nan, nan, 0)
    rng = np.random.default_rng(seed)
    means = _boot_means(d, n_boot, rng)
    alpha = (1.0 - level) / 2.0
    observed = float(d.mean())
    centred = means - observed
    p = float((np.sum(np.abs(centred) >= abs(observed)) + 1) / (n_boot + 1))
    return PairedComparison(
        float(a.mean()), float(b.mean()), observed,
        float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)),
        min(1.0, p), int(d.size),
    )  # fmt: skip
