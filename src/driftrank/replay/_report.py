"""The result of a chronological replay: curves, paired comparisons, JSON and a plot."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from driftrank._atomic import atomic_path, write_text_atomic
from driftrank.eval import PairedComparison

if TYPE_CHECKING:
    from driftrank.replay._replay import ReplayConfig

__all__ = ["METRICS", "Curve", "ReplayReport", "SideTiming"]

METRICS = ("HR", "NDCG", "MRR")


@dataclass(frozen=True)
class Curve:
    """A per-window curve: ``mean``, ``low``, ``high`` (``float64[n_windows]``; NaN where a
    window had no scored event)."""

    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def from_rows(cls, rows: list[tuple[float, float, float]]) -> Curve:
        """Build from ``(mean, low, high)`` per window."""
        arr = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
        return cls(arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy())

    def to_dict(self) -> dict[str, list[float | None]]:
        """JSON-able lists (NaN becomes ``None``)."""
        return {"mean": _list(self.mean), "low": _list(self.low), "high": _list(self.high)}


@dataclass
class SideTiming:
    """Wall-clock seconds one configuration spent in ``fit`` (initial + refits), ``rank`` and
    ``observe``; ``n_fits`` and ``n_ranked`` (events ranked) give the per-call scale."""

    fit_seconds: float = 0.0
    rank_seconds: float = 0.0
    observe_seconds: float = 0.0
    n_fits: int = 0
    n_ranked: int = 0

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict, with ``rank_ms_per_event`` added."""
        out: dict[str, float | int] = dict(self.__dict__)
        out["rank_ms_per_event"] = 1000.0 * self.rank_seconds / self.n_ranked if self.n_ranked else 0.0
        return out


@dataclass(frozen=True, eq=False)
class ReplayReport:
    """What :func:`~driftrank.replay.replay` measured; differences are always ``b - a``.

    Attributes:
        names: the names of configurations a and b.
        dataset: the data set's name.
        config: the :class:`~driftrank.replay.ReplayConfig` used.
        start_time: unix seconds of the first replayed event; ``n_train_events`` came before it.
        n_windows_total: windows the log and config define (``windows`` lists those scored).
        windows, window_start, window_end, window_events, window_skipped: per scored window its
            index, first and last event time (unix s), number of scored events and of events
            not scored because the user had already seen the item (``exclude_seen``).
        curves: ``curves["NDCG@10"]["a" | "b" | "diff"]`` per-window :class:`Curve` with
            bootstrap CIs (the diff CI is a paired bootstrap over the window's events).
        overall: per metric, the :class:`~driftrank.eval.PairedComparison` over all scored
            events (or users, per ``config.ci_unit``).
        coverage, novelty: per scored window, for a and b: share of the catalog shown in any
            list, and mean ``-log2`` popularity share of shown items (add-one smoothed counts as
            of the window start; higher = less popular items). ``*_overall`` over all windows.
        timing: a and b :class:`SideTiming`.
        event_rows, event_windows: ``int64[m]`` the dataset frame position and window of each
            scored event; ``event_metrics``: for a and b, per metric ``float64[m]`` values.
    """

    names: tuple[str, str]
    dataset: str
    config: ReplayConfig
    start_time: float
    n_train_events: int
    n_windows_total: int
    windows: np.ndarray
    window_start: np.ndarray
    window_end: np.ndarray
    window_events: np.ndarray
    window_skipped: np.ndarray
    curves: dict[str, dict[str, Curve]]
    overall: dict[str, PairedComparison]
    coverage: tuple[np.ndarray, np.ndarray]
    novelty: tuple[np.ndarray, np.ndarray]
    coverage_overall: tuple[float, float]
    novelty_overall: tuple[float, float]
    timing: tuple[SideTiming, SideTiming]
    event_rows: np.ndarray
    event_windows: np.ndarray
    event_metrics: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] = field(repr=False)

    @property
    def metric_names(self) -> list[str]:
        """``["HR@k", "NDCG@k", "MRR@k"]``."""
        return list(self.curves)

    def to_dict(self, *, timing: bool = True, per_event: bool = False) -> dict[str, Any]:
        """JSON-able dict. ``timing=False`` leaves out wall-clock numbers (the only part that
        differs between two runs with one seed); ``per_event=True`` adds per-event values."""
        a, b = self.names
        out: dict[str, Any] = {
            "a": a,
            "b": b,
            "dataset": self.dataset,
            "config": self.config.to_dict(),
            "start_time": self.start_time,
            "n_train_events": self.n_train_events,
            "n_windows_total": self.n_windows_total,
            "windows": {
                "index": self.windows.tolist(),
                "start_time": _list(self.window_start),
                "end_time": _list(self.window_end),
                "n_events": self.window_events.tolist(),
                "n_skipped_repeats": self.window_skipped.tolist(),
                "coverage": {"a": _list(self.coverage[0]), "b": _list(self.coverage[1])},
                "novelty": {"a": _list(self.novelty[0]), "b": _list(self.novelty[1])},
                "curves": {m: {s: c.to_dict() for s, c in sides.items()} for m, sides in self.curves.items()},
            },
            "overall": {m: {k: _num(v) for k, v in pc.as_dict().items()} for m, pc in self.overall.items()},
            "coverage": {"a": _num(self.coverage_overall[0]), "b": _num(self.coverage_overall[1])},
            "novelty": {"a": _num(self.novelty_overall[0]), "b": _num(self.novelty_overall[1])},
        }
        if timing:
            out["timing"] = {"a": self.timing[0].to_dict(), "b": self.timing[1].to_dict()}
        if per_event:
            out["events"] = {
                "row": self.event_rows.tolist(),
                "window": self.event_windows.tolist(),
                "a": {m: _list(v) for m, v in self.event_metrics[0].items()},
                "b": {m: _list(v) for m, v in self.event_metrics[1].items()},
            }
        return out

    def to_json(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        timing: bool = True,
        per_event: bool = False,
        indent: int | None = 2,
    ) -> str:
        """The report as strict JSON (NaN written as ``null``); also written to ``path`` (atomically)
        when given."""
        text = json.dumps(self.to_dict(timing=timing, per_event=per_event), indent=indent, allow_nan=False)
        if path is not None:
            write_text_atomic(path, text)
        return text

    def summary(self) -> str:
        """A short plain-text table of the overall comparison."""
        a, b = self.names
        lines = [
            f"replay on {self.dataset}: {int(self.window_events.sum())} events in {len(self.windows)} "
            f"window(s) after {self.n_train_events} training events; b - a with "
            f"{self.config.level:.0%} bootstrap CI",
            f"{'metric':<10} {a[:14]:>14} {b[:14]:>14} {'b - a':>9}  {'CI':<20} {'p':>6}",
        ]
        for m, pc in self.overall.items():
            lines.append(
                f"{m:<10} {pc.mean_a:>14.4f} {pc.mean_b:>14.4f} {pc.diff:>+9.4f}  "
                f"[{pc.ci_low:+.4f}, {pc.ci_high:+.4f}]  {pc.p_value:>6.3f}"
            )
        lines.append(f"{'coverage':<10} {self.coverage_overall[0]:>14.4f} {self.coverage_overall[1]:>14.4f}")
        lines.append(f"{'novelty':<10} {self.novelty_overall[0]:>14.3f} {self.novelty_overall[1]:>14.3f}")
        ta, tb = self.timing
        lines.append(
            f"{'fit s':<10} {ta.fit_seconds:>14.2f} {tb.fit_seconds:>14.2f}   "
            f"rank ms/event {ta.to_dict()['rank_ms_per_event']:.3f} / {tb.to_dict()['rank_ms_per_event']:.3f}"
        )
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Write a PNG: per-window curves of each metric for a and b with CI bands, the
        difference curves, coverage, novelty, and the overall differences with their CIs."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        a, b = self.names
        x = self.windows
        metrics = self.metric_names
        fig, axes = plt.subplots(3, 3, figsize=(15, 11), squeeze=False)
        for j, m in enumerate(metrics):
            ax = axes[0, j]
            for key, label, color in (("a", a, "tab:blue"), ("b", b, "tab:orange")):
                c = self.curves[m][key]
                ax.plot(x, c.mean, marker=".", color=color, label=label)
                ax.fill_between(x, c.low, c.high, color=color, alpha=0.2)
            ax.set_title(f"{m} per window")
            ax.set_xlabel("window")
            ax.legend(fontsize=8)
            ax = axes[1, j]
            d = self.curves[m]["diff"]
            ax.plot(x, d.mean, marker=".", color="tab:green", label=f"{b} - {a}")
            ax.fill_between(x, d.low, d.high, color="tab:green", alpha=0.2)
            ax.axhline(0.0, color="black", lw=0.8)
            ax.set_title(f"{m} difference ({self.config.level:.0%} paired bootstrap CI)")
            ax.set_xlabel("window")
            ax.legend(fontsize=8)
        for j, (title, series) in enumerate(
            (("catalog coverage", self.coverage), ("novelty (bits)", self.novelty))
        ):
            ax = axes[2, j]
            ax.plot(x, series[0], marker=".", color="tab:blue", label=a)
            ax.plot(x, series[1], marker=".", color="tab:orange", label=b)
            ax.set_title(f"{title} per window")
            ax.set_xlabel("window")
            ax.legend(fontsize=8)
        ax = axes[2, 2]
        ys = np.arange(len(metrics))
        diffs = np.array([self.overall[m].diff for m in metrics])
        lo = np.array([self.overall[m].ci_low for m in metrics])
        hi = np.array([self.overall[m].ci_high for m in metrics])
        ax.errorbar(diffs, ys, xerr=[diffs - lo, hi - diffs], fmt="o", color="tab:green", capsize=4)
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_yticks(ys, metrics)
        ax.set_title(f"overall {b} - {a}")
        fig.suptitle(
            f"replay on {self.dataset}: {a} vs {b}, k={self.config.k}, "
            f"{int(self.window_events.sum())} events in {len(x)} windows"
        )
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=90)
        plt.close(fig)
        return Path(path)


def _num(v: float | int) -> float | int | None:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _list(a: np.ndarray) -> list[float | None]:
    return [None if not math.isfinite(float(x)) else float(x) for x in np.asarray(a, dtype=np.float64)]
