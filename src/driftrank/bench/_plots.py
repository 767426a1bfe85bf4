"""PNG plots of benchmark results (matplotlib, Agg backend)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from driftrank.bench._harness import BenchResult


def plot_results(result: BenchResult, out: Path) -> list[Path]:
    """Metric bars with 95% CIs, candidate recall curves and latency histograms; returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    names = list(result.pipelines)
    if names:
        fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(names) + 4), 4))
        for ax, metric in zip(axes, ("NDCG@10", "HR@10"), strict=True):
            vals = [result.pipelines[n]["metrics"].get(metric, np.nan) for n in names]
            cis = [result.pipelines[n].get("ci", {}).get(metric, [np.nan, np.nan]) for n in names]
            err = np.array(
                [
                    [v - c[0] for v, c in zip(vals, cis, strict=True)],
                    [c[1] - v for v, c in zip(vals, cis, strict=True)],
                ]
            )
            ax.bar(names, vals, yerr=err, capsize=4, color="#4c72b0")
            ax.set_title(f"{metric} (95% bootstrap CI)")
            ax.tick_params(axis="x", rotation=45)
        fig.suptitle(f"{result.dataset.get('name')} — {result.protocol}")
        fig.tight_layout()
        files.append(out / "metrics.png")
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    recall = {n: r["candidate_recall"] for n, r in result.pipelines.items() if "candidate_recall" in r}
    for n, r in result.pipelines.items():
        for ch, rec in r.get("channel_recall", {}).items():
            recall[f"{n}:{ch}"] = rec
    if recall:
        fig, ax = plt.subplots(figsize=(6, 4))
        for n, rec in recall.items():
            xs = sorted(int(x) for x in rec)
            ax.plot(xs, [rec[str(x)] for x in xs], marker="o", label=n)
        ax.set_xlabel("N candidates")
        ax.set_ylabel("recall (target among candidates)")
        ax.set_title("Candidate recall")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        files.append(out / "candidate_recall.png")
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    if result.latencies:
        files.append(_latency_plot(result.latencies, out / "latency.png"))
    for n, r in result.pipelines.items():
        if "ablation" not in r:
            continue
        rows = [x for x in r["ablation"]["table"] if x["variant"] != "all"]
        full = r["ablation"]["table"][0]["NDCG@10"]
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.5))
        vals = [x["dNDCG@10"] for x in rows]
        ax.barh(
            [f"{x['variant']} {x['group']}" for x in rows],
            vals,
            color=["#c44e52" if v < 0 else "#55a868" for v in vals],
        )
        ax.axvline(0.0, color="black", lw=0.8)
        ax.invert_yaxis()
        ax.set_xlabel(f"test NDCG@10 minus all signals ({full:.4f})")
        ax.set_title(f"{n}: fusion ablation")
        fig.tight_layout()
        files.append(out / f"ablation-{file_stem(n)}.png")
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    return files


def file_stem(name: str) -> str:
    """``name`` (a pipeline name, any text) as a portable file-name part: runs of characters
    other than letters, digits, ``.``, ``_`` and ``-`` become one ``_``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_.")
    return stem or "pipeline"


def _latency_plot(latencies: dict[str, np.ndarray], path: Path) -> Path:
    """One row per pipeline on a log axis: every call as a dot, p50 / p95 / p99 marked and
    labelled, so that the tail is as visible as the median."""
    import matplotlib.pyplot as plt

    names = list(latencies)
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.7 * len(names)))
    rng = np.random.default_rng(0)
    markers = {50: ("o", "tab:blue"), 95: ("s", "tab:orange"), 99: ("^", "tab:red")}
    for row, name in enumerate(names):
        ms = np.asarray(latencies[name], dtype=np.float64) * 1e3
        ax.scatter(ms, row + rng.uniform(-0.18, 0.18, len(ms)), s=6, color="0.6", alpha=0.5, lw=0)
        for q, (marker, color) in markers.items():
            v = float(np.percentile(ms, q))
            ax.scatter(
                [v], [row], marker=marker, s=60, color=color, zorder=3, label=f"p{q}" if row == 0 else None
            )
            ax.annotate(
                f"{v:.1f}", (v, row), textcoords="offset points", xytext=(0, 9), ha="center", fontsize=7
            )
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xscale("log")
    ax.set_xlabel("single-user rank latency (ms, log scale); dots: every call")
    ax.grid(axis="x", alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right", ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
