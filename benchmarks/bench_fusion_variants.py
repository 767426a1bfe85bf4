"""Fusion-layer settings compared on the validation step, over several fusion seeds.

Fits the default hybrid engine (``EngineConfig(seed=0)``) once on ``split.train`` (or
``split.train_valid`` with ``--stage test``), then trains fresh gated fusion layers on the very
held-out inputs the engine's own layer was trained on, one per setting and fusion seed, and
measures each on the stage's targets among the engine's candidates (the candidates are fixed,
so every row has the same retrieval recall). The spread over fusion seeds shows how much of a
difference between two settings is the layer's own training noise.

    DRIFTRANK_DATA_HOME=../shared/data .venv/bin/python benchmarks/bench_fusion_variants.py \\
        --dataset ml-100k --out benchmarks/results/fusion-variants

Writes ``<out>/<dataset>-<stage>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from driftrank._atomic import write_text_atomic
from driftrank.bench._harness import machine_info, prepare_split
from driftrank.data import load_dataset
from driftrank.engine import EngineConfig
from driftrank.engine._ranker import EngineRanker
from driftrank.fusion import FusionModel, candidate_metrics

log = logging.getLogger("bench_fusion_variants")

# Changes to the default FusionConfig: the MLP's size and the optimiser's regularisation.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "no MLP (mlp_hidden=0)": {"mlp_hidden": 0},
    "mlp_hidden=8": {"mlp_hidden": 8},
    "weight_decay=1e-3": {"weight_decay": 1e-3},
    "weight_decay=1e-2": {"weight_decay": 1e-2},
    "learning_rate=3e-3": {"learning_rate": 3e-3},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-100k", help="data set name for load_dataset (default ml-100k)")
    p.add_argument("--stage", choices=("validation", "test"), default="validation", help="default validation")
    p.add_argument("--seeds", type=int, default=5, help="fusion seeds per setting (default 5)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/fusion-variants"), help="output folder"
    )
    args = p.parse_args(argv)
    if args.seeds < 1 or args.threads < 1:
        p.error("--seeds and --threads must be positive")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison; returns what it wrote to the JSON file."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    ds, split = prepare_split(load_dataset(args.dataset))
    history = split.train if args.stage == "validation" else split.train_valid
    targets = split.validation if args.stage == "validation" else split.test
    config = EngineConfig(seed=0)
    ranker = EngineRanker(config)
    start = time.perf_counter()
    ranker.fit(history)
    fit_s = time.perf_counter() - start
    log.info("engine fitted in %.0f s", fit_s)
    train_in, train_t = ranker.fusion_training_data()
    eval_in = ranker.signals(targets.users, exclude=history.seen, at=targets.timestamps)
    eval_t = np.asarray(targets.items, dtype=np.int64)
    base = config.fusion_config
    rows: list[dict[str, Any]] = []
    for name, change in VARIANTS.items():
        scores = []
        for seed in range(args.seeds):
            fuser = FusionModel(dataclasses.replace(base, seed=seed, **change)).fit(train_in, train_t)
            metrics = candidate_metrics(eval_in.candidates, fuser.score(eval_in), eval_t, (10,))
            scores.append(float(metrics["NDCG@10"]))
        rows.append(
            {
                "setting": name,
                "change": change,
                "ndcg@10": scores,
                "mean": float(np.mean(scores)),
                "sd": float(np.std(scores)),
            }
        )
        log.info("%s: NDCG@10 %.4f ± %.4f", name, rows[-1]["mean"], rows[-1]["sd"])
    result = {
        "benchmark": "fusion settings over fusion seeds",
        "dataset": ds.name,
        "stage": args.stage,
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
        if argv is None
        else " ".join(argv),
        "machine": machine_info(),
        "engine_fit_seconds": fit_s,
        "fusion_training_events": int((train_t >= 0).sum()),
        "n_targets": len(eval_t),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{ds.name.replace('/', '_')}-{args.stage}"
    write_text_atomic(args.out / f"{stem}.json", json.dumps(result, indent=2) + "\n")
    md = [
        f"# Fusion settings on {ds.name}, {args.stage} step ({args.seeds} fusion seeds)",
        "",
        f"Command: `{result['command']}`, commit {result['machine'].get('git_commit')}",
        "",
        "| setting | NDCG@10 mean | sd over seeds | per seed |",
        "|---|---|---|---|",
    ]
    md += [
        f"| {r['setting']} | {r['mean']:.4f} | {r['sd']:.4f} | {', '.join(f'{v:.4f}' for v in r['ndcg@10'])} |"
        for r in rows
    ]
    write_text_atomic(args.out / f"{stem}.md", "\n".join(md) + "\n")
    log.info("wrote %s", args.out / f"{stem}.md")
    return result


if __name__ == "__main__":
    main()
