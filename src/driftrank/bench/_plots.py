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
        fig, ax = plt.subplots(figsize=(6, 4))
        for n, lat in result.latencies.items():
            ax.hist(lat * 1e3, bins=40, alpha=0.5, label=f"{n} (p99 {np.percentile(lat, 99) * 1e3:.1f} ms)")
        ax.set_xlabel("single-user rank latency (ms)")
        ax.set_ylabel("calls")
        ax.set_xscale("log")
        ax.legend(fontsize=7)
        fig.tight_layout()
        files.append(out / "latency.png")
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
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
