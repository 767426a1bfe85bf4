"""``hybrid-llm`` against ``hybrid``: does the LLM signal improve the fused ranking?

Both pipelines are measured by the benchmark harness on one leave-one-out split (test step,
full ranking, paired per-user bootstrap), and ``hybrid-llm`` also gets the fusion ablation
(its row "without llm" is the hybrid on the very same candidates).

Three modes:

``local``  everything in one process with the real LM. On a CPU this is slow (seconds per
           user), so ``--users N`` keeps a seeded sample of N users (all their events) and
           both pipelines are fitted and tested on that sample::

               python benchmarks/bench_hybrid_llm.py local --users 150 --out benchmarks/results/hybrid-llm-cpu

``record`` fits and tests ``hybrid-llm`` with a recorder in the LM's place and writes every
           fine-tuning example and every query the engine asks the LM into one ``.npz``
           (texts, times, interest vectors). A GPU box with only torch and transformers then
           fine-tunes and scores them: ``bench_llm_gpu.py --jobs``.

``evaluate`` replays the scores that came back (one fit per score variant in the file: the
           engine is deterministic, so it asks exactly the recorded queries)::

               python benchmarks/bench_hybrid_llm.py record --jobs .gpu/jobs.npz
               (on the GPU) python3 benchmarks/bench_llm_gpu.py --jobs .gpu/jobs.npz --out $OUT
               python benchmarks/bench_hybrid_llm.py evaluate --jobs .gpu/jobs.npz \\
                   --scores benchmarks/results/llm-gpu/scores.npz --out benchmarks/results/hybrid-llm
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from driftrank._atomic import write_text_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))


def stage_params(args: argparse.Namespace) -> dict[str, Any]:
    """The ``llm`` table of the hybrid-llm pipeline (an LLMStageConfig as a dict)."""
    reranker: dict[str, Any] = {
        "model": args.model,
        "window": 20,
        "max_history": args.max_history,
        "max_text_chars": args.max_text_chars,
        "learning_rate": args.lr,
        "lora_rank": args.lora_rank,
        "lora_alpha": 2 * args.lora_rank,
        "epochs": args.epochs,
        "train_batch_size": args.train_batch,
        "batch_size": args.batch_size,
        "seed": args.seed,
    }
    if args.max_steps:
        reranker["max_steps"] = args.max_steps
    return {
        "reranker": reranker,
        "top": 20,
        "train_positions": args.positions,
        "train_users": args.train_users,
    }


def load_data(args: argparse.Namespace) -> Any:
    from driftrank.data import load_dataset

    ds = load_dataset(args.dataset, args.data_home, download=False)
    if args.users:
        rng = np.random.default_rng(args.seed)
        keep = np.sort(rng.choice(ds.n_users, size=min(args.users, ds.n_users), replace=False))
        # Every item stays in the catalog; the other users keep their ids but have no events.
        ds = ds.filter_rows(np.isin(ds.user_index, keep), name=f"{ds.name}-{len(keep)}-users")
    return ds


def run(
    args: argparse.Namespace, llm_for: dict[str, Any], ablation_of: str | None, *, baseline: bool = True
) -> Any:
    """The harness on ``hybrid`` (with ``baseline``) and one ``hybrid-llm`` pipeline per entry
    of ``llm_for``."""
    from driftrank.bench import PipelineSpec, run_benchmark
    from driftrank.bench._pipelines import register_pipeline
    from driftrank.engine import EngineConfig
    from driftrank.engine._ranker import EngineRanker

    pipeline_params = {"llm": stage_params(args)}
    for name, llm in llm_for.items():

        def factory(p: dict[str, Any], seed: int, llm: Any = llm) -> Any:
            return EngineRanker(EngineConfig.from_dict({"seed": seed, **p}), llm=llm)

        register_pipeline(name, factory)
    specs = [PipelineSpec("hybrid", "hybrid", {})] if baseline else []
    specs += [PipelineSpec(n, n, pipeline_params) for n in llm_for]
    ds = load_data(args)
    res = run_benchmark(
        ds,
        specs,
        seed=args.seed,
        latency_users=args.latency_users,
        compare_to="hybrid" if baseline else None,
        progress=True,
        ablation=False,
        keep_rankers=True,
    )
    if ablation_of is not None:
        from driftrank.bench._harness import fusion_ablation, prepare_split

        _, split = prepare_split(ds, "loo")
        res.pipelines[ablation_of]["ablation"] = fusion_ablation(
            res.rankers[ablation_of], split, (10, 20), args.seed
        )
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["local", "record", "evaluate"])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data-home", default=os.environ.get("DRIFTRANK_DATA_HOME"))
    parser.add_argument("--users", type=int, default=0, help="seeded user sample (0 = all users)")
    parser.add_argument("--model", default="smollm2", help="LM name or path (as LLMRerankerConfig.model)")
    parser.add_argument("--positions", type=int, default=4, help="fine-tuning examples per user")
    parser.add_argument("--train-users", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=0)
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--max-history", type=int, default=10)
    parser.add_argument("--max-text-chars", type=int, default=80)
    parser.add_argument("--latency-users", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--jobs", default=".gpu/jobs.npz", help="record: where to write; evaluate: the recorded file"
    )
    parser.add_argument("--scores", help="evaluate: scores.npz written by bench_llm_gpu.py")
    parser.add_argument("--out", help="results folder (results.json/md, plots)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import torch

    torch.set_num_threads(args.threads)
    from driftrank.engine._llm_stage import LLMStageConfig

    params = stage_params(args)
    cfg = LLMStageConfig(**params)
    t0 = time.perf_counter()
    if args.mode == "record":
        from driftrank.rerank._llm_io import LLMRecorder, save_llm_batch

        rec = LLMRecorder(cfg.reranker)
        run(args, {"hybrid-llm": rec}, None, baseline=False)
        path = save_llm_batch(
            args.jobs,
            queries=list(rec.queries.values()),
            examples=rec.examples,
            info={"args": dict(vars(args)), "stage": params, "validation_examples": rec.n_validation},
        )
        print(
            f"recorded {len(rec.examples)} examples and {len(rec.queries)} queries to {path} "
            f"({path.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - t0:.0f} s"
        )
        return 0

    if args.mode == "evaluate":
        from driftrank.rerank._llm_io import LLMScoreTable, load_llm_batch

        if not args.scores:
            parser.error("evaluate needs --scores")
        _, _, info = load_llm_batch(args.jobs)
        recorded, mine = info.get("stage", {}), params
        # What shapes the queries must match; training settings may differ (the GPU run can
        # override them, and records the ones it used in its gpu.json).
        shaping = ("model", "window", "max_history", "max_text_chars", "seed")
        same = {k: recorded.get(k) == mine[k] for k in ("top", "train_positions", "train_users")}
        same.update({k: recorded.get("reranker", {}).get(k) == mine["reranker"][k] for k in shaping})
        if not all(same.values()):
            parser.error(f"settings that shape the LLM queries differ from the recorded ones: {same}")
        variants = _score_variants(args.scores)
        llm_for = {f"hybrid-llm ({v})": LLMScoreTable(s, cfg.reranker) for v, s in variants.items()}
        first = next(iter(llm_for))
        res = run(args, llm_for, first)
    else:
        res = run(args, {"hybrid-llm": None}, "hybrid-llm")
    res.dataset["note"] = f"mode={args.mode}" + (
        f"; seeded sample of {args.users} users" if args.users else "; all users"
    )
    if args.out:
        res.save(args.out)
        extra = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "seconds": time.perf_counter() - t0,
            "llm_fit": {n: r.report().get("llm") for n, r in res.rankers.items() if n != "hybrid"},
            "llm_seconds": {
                n: r.report().get("seconds", {}).get("llm") for n, r in res.rankers.items() if n != "hybrid"
            },
        }
        write_text_atomic(Path(args.out, "hybrid-llm.json"), json.dumps(extra, indent=2, default=float))
    print(res.table())
    return 0


def _score_variants(path: str) -> dict[str, dict[str, np.ndarray]]:
    """``variant -> {query key -> scores}`` from a ``bench_llm_gpu.py`` scores folder/file.

    The GPU script writes one ``scores-<variant>.npz`` per variant next to each other."""
    from driftrank.rerank._llm_io import LLMScoreTable

    p = Path(path)
    files = sorted(p.glob("scores-*.npz")) if p.is_dir() else [p]
    if not files:
        raise SystemExit(f"no scores-*.npz in {p}")
    return {f.stem.removeprefix("scores-"): LLMScoreTable.load(f).scores for f in files}


if __name__ == "__main__":
    raise SystemExit(main())
