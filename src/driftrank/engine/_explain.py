"""Explanations: how a user's interests moved over time, and why each item was ranked."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

if TYPE_CHECKING:
    from driftrank.engine._engine import Engine, RankResult

__all__ = ["Explanation", "explain"]


@dataclass(frozen=True)
class Explanation:
    """What :meth:`Engine.explain` returns.

    Attributes:
        user: the raw user id.
        evolution: one row per time window of the user's history (equal numbers of events):
            ``window``, ``period`` (readable: dates, or dates and times when the whole history
            spans under four days), ``start``, ``end`` (dates), ``events``, ``top_genres``
            (share of the window's events per genre, strongest first).
        rising, falling: genres whose share grew / shrank most from the first window to the last.
        interest_now: per interest time scale, the genres whose centroid is closest to the
            user's current interest vector.
        ranking: the ranking being explained.
        reasons: per ranked item, the history item it is most similar to and the signal that
            added most to its score.
    """

    user: object
    evolution: pl.DataFrame
    rising: list[tuple[str, float]]
    falling: list[tuple[str, float]]
    interest_now: dict[str, list[str]]
    ranking: RankResult
    reasons: list[dict[str, object]]

    def __str__(self) -> str:
        lines = [f"user {self.user}: interests over time"]
        for row in self.evolution.iter_rows(named=True):
            lines.append(f"  {row['period']:<33} {row['events']:>4} events: {row['top_genres']}")
        if self.rising:
            lines.append("  growing:   " + ", ".join(f"{g} ({d:+.0%} of events)" for g, d in self.rising))
        if self.falling:
            lines.append("  shrinking: " + ", ".join(f"{g} ({d:+.0%} of events)" for g, d in self.falling))
        for scale, genres in self.interest_now.items():
            lines.append(f"  interest now, {scale_label(scale)}: {', '.join(genres)}")
        lines.append("  top items and why:")
        for j, why in enumerate(self.reasons):
            because = (
                f"like '{why['because']}' (similarity {why['similarity']:.2f}), " if why["because"] else ""
            )
            lines.append(
                f"  {j + 1:>2}. {why['title']}\n"
                f"      {because}mostly from {signal_label(str(why['top_signal']))} "
                f"({why['top_signal_value']:+.2f} of score {why['score']:.2f})"
            )
        return "\n".join(lines)


# Readable names of the fusion's signal groups (others are shown as they are).
_SIGNAL_LABELS = {
    "als": "ALS (collaborative filtering)",
    "bpr": "BPR (collaborative filtering)",
    "lightfm": "LightFM (collaborative filtering with features)",
    "covisit": "co-visitation (watched together)",
    "popularity": "popularity",
    "pop": "popularity",
    "interest": "interest vector (text)",
    "rerank": "sequence re-ranker",
    "llm": "language-model re-ranker",
    "text": "text similarity",
    "age": "item age",
    "item_age": "item age",
}


def signal_label(name: str) -> str:
    """A readable name for a fusion signal group (``"covisit"`` → ``"co-visitation ..."``)."""
    return _SIGNAL_LABELS.get(name, name)


def scale_label(name: str) -> str:
    """A readable name for an interest scale: ``"time:30d"`` → ``"weighted to the last 30 days"``."""
    kind, _, value = name.partition(":")
    if kind == "time" and value.endswith("d"):
        days = value[:-1]
        spans = {"1": "the last day", "7": "the last week", "30": "the last month", "365": "the last year"}
        return f"weighted to {spans.get(days, f'the last {days} days')}"
    if kind == "position" and value:
        return f"weighted to the last {value} events"
    return name


def _period(start: float, end: float, span: float) -> str:
    """``start .. end`` as dates, or with times when the whole history spans under four days."""
    if span >= 4 * 86400:
        a, b = _date(start), _date(end)
        return a if a == b else f"{a} .. {b}"
    fa = _stamp(start)
    fb = _stamp(end)
    if fa == fb:
        return fa
    if fa[:10] == fb[:10]:
        return f"{fa} .. {fb[11:]}"
    return f"{fa} .. {fb}"


def _date(t: float) -> str:
    return dt.datetime.fromtimestamp(t, tz=dt.UTC).strftime("%Y-%m-%d")


def _stamp(t: float) -> str:
    return dt.datetime.fromtimestamp(t, tz=dt.UTC).strftime("%Y-%m-%d %H:%M")


def explain(engine: Engine, user: object, k: int = 10, windows: int = 4) -> Explanation:
    """Build an :class:`Explanation` for known user ``user``."""
    from driftrank.errors import DataError

    if isinstance(windows, bool) or not isinstance(windows, int) or windows < 1:
        raise DataError(f"windows must be a positive integer, got {windows!r}")
    ranking = engine.rank(user, k=k)
    with engine._lock.read():
        st = engine._require()
        u = st.user_ids.index(user)
        items, times = st.log.user(u)
        genres = st.items["genres"].to_list()
        titles = st.items["title"].to_list()
        n_win = max(1, min(windows, len(items)))
        bounds = np.linspace(0, len(items), n_win + 1).astype(int)
        span = float(times[-1] - times[0]) if len(times) else 0.0
        rows = []
        shares: list[dict[str, float]] = []
        for w in range(n_win):
            lo, hi = bounds[w], bounds[w + 1]
            counts: Counter[str] = Counter(g for i in items[lo:hi].tolist() for g in genres[i])
            total = max(1, hi - lo)
            share = {g: c / total for g, c in counts.items()}
            shares.append(share)
            top_text = ", ".join(
                f"{g} {s:.0%}" for g, s in sorted(share.items(), key=lambda x: (-x[1], x[0]))[:4]
            )
            rows.append(
                {
                    "window": w + 1,
                    "period": _period(float(times[lo]), float(times[hi - 1]), span),
                    "start": _date(times[lo]),
                    "end": _date(times[hi - 1]),
                    "events": int(hi - lo),
                    "top_genres": top_text,
                }
            )
        evolution = pl.DataFrame(rows)
        all_g = set(shares[0]) | set(shares[-1])
        delta = {g: shares[-1].get(g, 0.0) - shares[0].get(g, 0.0) for g in all_g}
        rising = [(g, d) for g, d in sorted(delta.items(), key=lambda x: (-x[1], x[0])) if d > 0][:3]
        falling = [(g, d) for g, d in sorted(delta.items(), key=lambda x: (x[1], x[0])) if d < 0][:3]

        interest_now: dict[str, list[str]] = {}
        vecs = st.item_vectors
        if engine._interest is not None and len(items):
            model = engine._interest.interest
            q = model.vectors(np.array([u]), None)[0]  # [scales, d]
            names = sorted({g for gs in genres for g in gs})
            if names:
                cents = np.stack(
                    [vecs[[i for i, gs in enumerate(genres) if g in gs]].mean(axis=0) for g in names]
                )
                cents /= np.maximum(np.linalg.norm(cents, axis=1, keepdims=True), 1e-12)
                for s, scale in enumerate(model.scale_names):
                    if np.linalg.norm(q[s]) > 0:
                        sims = cents @ q[s]
                        interest_now[scale] = [names[i] for i in np.argsort(-sims)[:3]]

        reasons = []
        hist_vecs = vecs[items] if len(items) else np.zeros((0, vecs.shape[1]), np.float32)
        for j, i in enumerate(ranking.items.tolist()):
            sim = hist_vecs @ vecs[i] if len(items) else np.zeros(0)
            b = int(np.argmax(sim)) if len(sim) else -1
            contrib = {g: float(v[j]) for g, v in ranking.contributions.items()}
            top: tuple[str, float] = (
                max(contrib.items(), key=lambda x: x[1]) if contrib else ("score", float(ranking.scores[j]))
            )
            reasons.append(
                {
                    "item_id": ranking.item_ids[j],
                    "title": titles[i],
                    "score": float(ranking.scores[j]),
                    "top_signal": top[0],
                    "top_signal_value": top[1],
                    "because": titles[items[b]] if b >= 0 else "",
                    "similarity": float(sim[b]) if b >= 0 else 0.0,
                }
            )
    return Explanation(user, evolution, rising, falling, interest_now, ranking, reasons)
