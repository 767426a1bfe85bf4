"""Run-to-run spread of benchmark results: the same pipelines fitted with several seeds.

A single ``driftrank bench`` run compares pipelines fitted with one seed. For the trained
models (the re-ranker, SASRec, the fusion layer) the seed moves test NDCG@10 by about as much
as the differences between them, so this script reads several result folders of one data set
and protocol that differ only in ``--seed`` and reports, per pipeline:

- NDCG@10 and HR@10 per seed, their mean, standard deviation, minimum and maximum;
- a paired comparison of the seed-averaged per-user values against ``--compare-to`` (each
  user's metric averaged over the seeds first, then the per-user bootstrap of
  :func:`driftrank.eval.paired_bootstrap`): the comparison the averaged system supports.

Writes ``seeds.json`` (everything, with the folders' commits), ``seeds.md`` and ``seeds.png``
(NDCG@10 per seed and pipeline) into ``--out``::

    python benchmarks/bench_seeds.py benchmarks/results/ml-100k benchmarks/results/seeds/ml-100k-seed1 \\
        benchmarks/results/seeds/ml-100k-seed2 --out benchmarks/results/seeds

Pipelines missing from a folder are left out of the summary; every folder must hold the same
data set, protocol and users.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from driftrank._atomic import write_text_atomic
from driftrank.eval import paired_bootstrap

log = logging.getLogger("bench_seeds")

METRICS = ("NDCG@10", "HR@10")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path, help="result folders of `driftrank bench` runs")
    p.add_argument("--compare-to", default="hybrid", help="pipeline the others are compared with")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    args = p.parse_args(argv)
    if len(args.folders) < 2:
        p.error("give at least two result folders (runs with different --seed)")
    return args


def load_run(folder: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``results.json`` and ``per_user.npz`` of one run (clear errors when either is missing)."""
    res, per = folder / "results.json", folder / "per_user.npz"
    for f in (res, per):
        if not f.is_file():
            raise SystemExit(f"{folder}: expected a `driftrank bench` output folder with {f.name}")
    with np.load(per, allow_pickle=False) as z:
        return json.loads(res.read_text()), {k: z[k] for k in z.files}


def summarise(runs: list[tuple[dict[str, Any], dict[str, np.ndarray]]], compare_to: str) -> dict[str, Any]:
    """Per-pipeline spread over the runs and paired comparisons of the seed averages."""
    first = runs[0][0]
    for res, _ in runs[1:]:
        if res["dataset"] != first["dataset"] or res["protocol"] != first["protocol"]:
            raise SystemExit("the folders hold different data sets or protocols")
    seeds = [int(res["seed"]) for res, _ in runs]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"the folders must be runs with different seeds, got seeds {seeds}")
    names = [p for p in first["pipelines"] if all(p in res["pipelines"] for res, _ in runs)]
    if compare_to not in names:
        raise SystemExit(f"--compare-to {compare_to!r} is not in every folder (common pipelines: {names})")
    pipelines: dict[str, Any] = {}
    for name in names:
        entry: dict[str, Any] = {}
        for m in METRICS:
            values = np.array([res["pipelines"][name]["metrics"][m] for res, _ in runs])
            entry[m] = {
                "per_seed": values.tolist(),
                "mean": float(values.mean()),
                "sd": float(values.std(ddof=1)),
                "min": float(values.min()),
                "max": float(values.max()),
            }
        pipelines[name] = entry
    comparisons = []
    for m in METRICS:
        base = np.mean([per[f"{compare_to}/{m}"] for _, per in runs], axis=0)
        for name in names:
            if name == compare_to:
                continue
            other = np.mean([per[f"{name}/{m}"] for _, per in runs], axis=0)
            c = paired_bootstrap(base, other)
            comparisons.append({"a": compare_to, "b": name, "metric": m, **c.as_dict()})
    return {
        "dataset": first["dataset"],
        "protocol": first["protocol"],
        "seeds": seeds,
        "commits": [res["machine"].get("git_commit") for res, _ in runs],
        "pipelines": pipelines,
        "comparisons_of_seed_averages": comparisons,
    }


def to_markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown tables."""
    seeds = summary["seeds"]
    lines = [
        f"# Seed spread: {summary['dataset'].get('name', '')} ({summary['protocol']}), seeds {seeds}",
        "",
        "| pipeline | " + " | ".join(f"NDCG@10 seed {s}" for s in seeds) + " | mean | sd | HR@10 mean | sd |",
        "|---|" + "---|" * (len(seeds) + 4),
    ]
    for name, e in summary["pipelines"].items():
        n, h = e["NDCG@10"], e["HR@10"]
        cells = " | ".join(f"{v:.4f}" for v in n["per_seed"])
        lines.append(
            f"| {name} | {cells} | {n['mean']:.4f} | {n['sd']:.4f} | {h['mean']:.4f} | {h['sd']:.4f} |"
        )
    lines += [
        "",
        "## Paired comparisons of the seed averages (per-user bootstrap, b − a)",
        "",
        "| a | b | metric | diff | 95% CI | p |",
        "|---|---|---|---|---|---|",
    ]
    for c in summary["comparisons_of_seed_averages"]:
        lines.append(
            f"| {c['a']} | {c['b']} | {c['metric']} | {c['diff']:+.4f} | "
            f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] | {c['p_value']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    """NDCG@10 of every pipeline and seed (dots) with the mean (bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["pipelines"])
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names)), 4))
    for i, name in enumerate(names):
        e = summary["pipelines"][name]["NDCG@10"]
        ax.bar(i, e["mean"], color="#9ecae1", width=0.6)
        ax.scatter([i] * len(e["per_seed"]), e["per_seed"], color="#08519c", zorder=3, s=18)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("test NDCG@10")
    ax.set_title(f"{summary['dataset'].get('name', '')}: NDCG@10 per seed {summary['seeds']} (bar: mean)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Read the folders, write ``seeds.json``, ``seeds.md`` and ``seeds.png``; returns the summary."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    summary = summarise([load_run(f) for f in args.folders], args.compare_to)
    summary["folders"] = [f.as_posix() for f in args.folders]
    summary["command"] = (
        " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]) if argv is None else " ".join(argv)
    )
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "seeds.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(args.out / "seeds.md", to_markdown(summary))
    plot(summary, args.out / "seeds.png")
    log.info("wrote %s", args.out)
    sys.stdout.write(to_markdown(summary))
    return summary


if __name__ == "__main__":
    main()
