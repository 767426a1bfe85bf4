"""The LLM re-ranker on one GPU: fine-tune on ml-100k, score every query, measure speed.

It needs torch, transformers, peft and gguf only (no polars, faiss or implicit): its input is
the ``.npz`` that ``bench_hybrid_llm.py record`` wrote on a CPU machine, holding every
fine-tuning example and every query (held-out step and test step of all users) that the
``hybrid-llm`` engine asks its LM. Prepared to finish in about 6 minutes on an H100/H200::

    python3 benchmarks/bench_llm_gpu.py --jobs .gpu/jobs.npz --model SmolLM2.gguf --out $OUT

1. Scores, one ``scores-<variant>.npz`` each, keyed by query content (``bench_hybrid_llm.py
   evaluate`` turns them into NDCG@10/HR@10 of ``hybrid-llm`` against ``hybrid``):
   ``zero_shot`` (no fine-tuning), ``fine_tuned`` (LoRA + interest soft token, one order),
   ``fine_tuned_3_orders`` (three shuffled orders averaged: the position-bias counter),
   ``no_interest`` (the same fine-tune without the soft token; skipped past ``--budget-s``).
   Position bias (mean label probability by position) before and after fine-tuning.
2. Speed, for SmolLM2 (fine-tuned, adapter merged) and for a ~1B-parameter Llama built from a
   config with random weights (speed does not depend on the weights): batched throughput at 20
   candidates (users/s, candidates/s) at several batch sizes, with and without the shared-prefix
   KV cache, and single-user latency p50/p99 (batch 1, end to end: prompt building included).

Writes ``gpu.json`` (device, versions, command, every number) after each phase, so a timeout
keeps what was measured. ``--smoke`` runs every phase at toy size on a CPU in a minute or two.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000.0, q))


def big_llama_config(vocab_size: int, smoke: bool) -> Any:
    """A Llama-3.2-1B-like config (16 layers, width 2048, GQA 32/8 heads, MLP 8192) over the
    SmolLM2 vocabulary: about 1.1B parameters. ``smoke``: a toy of the same shape family."""
    from transformers import LlamaConfig

    if smoke:
        return LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=vocab_size,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
        )
    return LlamaConfig(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=vocab_size,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    )


def speed(
    rr: Any, queries: list[Any], batch_sizes: list[int], n_users: int, latency_runs: int
) -> dict[str, Any]:
    """Throughput per batch size (and without the prefix cache at the best one), then
    single-user latency with and without the prefix cache."""
    base_cfg = rr.config
    reps = -(-n_users // len(queries))
    # Distinct keys, so every copy gets its own shuffle like a distinct user would.
    pool = [dataclasses.replace(q, key=i) for i, q in enumerate((queries * reps)[:n_users])]
    n_cand = float(np.mean([len(q.candidates) for q in pool]))
    out: dict[str, Any] = {"users": len(pool), "candidates_per_user": n_cand, "throughput": []}
    t = time.perf_counter()
    rr._jobs(pool, 1)
    out["prompt_building_users_per_s"] = len(pool) / (time.perf_counter() - t)

    def timed(cfg: Any) -> float:
        rr.config = cfg
        rr.score(pool[: cfg.batch_size], n_permutations=1)  # warm-up: kernels, allocator
        t0 = time.perf_counter()
        rr.score(pool, n_permutations=1)
        return time.perf_counter() - t0

    for bs in batch_sizes:
        secs = timed(dataclasses.replace(base_cfg, batch_size=bs, reuse_prefix=True))
        row = {
            "batch_size": bs,
            "reuse_prefix": True,
            "users_per_s": len(pool) / secs,
            "candidates_per_s": len(pool) * n_cand / secs,
        }
        out["throughput"].append(row)
        print("  throughput", row, flush=True)
    best = max(out["throughput"], key=lambda r: r["users_per_s"])
    secs = timed(dataclasses.replace(base_cfg, batch_size=best["batch_size"], reuse_prefix=False))
    row = {
        "batch_size": best["batch_size"],
        "reuse_prefix": False,
        "users_per_s": len(pool) / secs,
        "candidates_per_s": len(pool) * n_cand / secs,
    }
    out["throughput"].append(row)
    print("  throughput", row, flush=True)
    for reuse, key in ((True, "latency_ms"), (False, "latency_ms_no_prefix_cache")):
        rr.config = dataclasses.replace(base_cfg, batch_size=1, reuse_prefix=reuse)
        for q in pool[: min(5, latency_runs)]:
            rr.score([q], n_permutations=1)
        lat = []
        for q in pool[:latency_runs]:
            t0 = time.perf_counter()
            rr.score([q], n_permutations=1)
            lat.append(time.perf_counter() - t0)
        out[key] = {
            "runs": len(lat),
            "p50": percentile_ms(lat, 50),
            "p99": percentile_ms(lat, 99),
            "mean": float(np.mean(lat) * 1000),
        }
        print(f"  {key}", out[key], flush=True)
    rr.config = base_cfg
    return out


def speed_big(
    args: argparse.Namespace, cfg: Any, tokenizer: Any, queries: list[Any], cuda: bool
) -> dict[str, Any]:
    """Speed of a ~1B-parameter Llama with random weights over the same prompts."""
    import torch
    from transformers import LlamaForCausalLM

    from driftrank.rerank._llm import LLMReranker

    big_cfg = big_llama_config(len(tokenizer), args.smoke)
    with torch.device("cuda" if cuda else "cpu"):
        big = LlamaForCausalLM(big_cfg)
    n_params = sum(p.numel() for p in big.parameters())
    rr_big = LLMReranker(dataclasses.replace(cfg, model="random-llama-1b"), model=big, tokenizer=tokenizer)
    print(f"speed: llama {n_params / 1e9:.2f}B random", flush=True)
    out = {
        "parameters": n_params,
        "config": {k: getattr(big_cfg, k) for k in ("hidden_size", "num_hidden_layers", "intermediate_size")},
        **speed(rr_big, queries, args.batch_sizes, args.throughput_users, args.latency_runs),
    }
    del rr_big, big
    if cuda:
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the GPU study; write JSON after every phase."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", required=True, help="the .npz of bench_hybrid_llm.py record")
    parser.add_argument("--model", default=None, help="LM path or name (default: the recorded one)")
    parser.add_argument("--out", default="benchmarks/results/llm-gpu")
    parser.add_argument("--smoke", action="store_true", help="toy sizes: checks the script end to end")
    parser.add_argument("--batch-size", type=int, default=256, help="inference batch for scoring")
    parser.add_argument("--throughput-users", type=int, default=4096)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="skip the no-interest ablation past this"
    )
    parser.add_argument("--save-adapter", default=None, help="folder to save the fine-tuned re-ranker in")
    parser.add_argument(
        "--lr", type=float, default=None, help="LoRA learning rate (default: the recorded one)"
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="fine-tuning epochs (default: the recorded one)"
    )
    parser.add_argument("--skip-zero-shot", action="store_true", help="no zero-shot scores (measured before)")
    parser.add_argument("--skip-big", action="store_true", help="no speed run of the ~1B random Llama")
    args = parser.parse_args(argv)

    import torch

    from driftrank._atomic import write_text_atomic
    from driftrank._machine import machine_info
    from driftrank.rerank._llm import LLMExample, LLMReranker, LLMRerankerConfig
    from driftrank.rerank._llm_io import LLMScoreTable, load_llm_batch, query_key

    t_start = time.perf_counter()
    cuda = torch.cuda.is_available()
    if not cuda:
        torch.set_num_threads(min(4, os.cpu_count() or 1))
        if not args.smoke:
            print("warning: no CUDA device; the full study takes hours on a CPU (try --smoke)", flush=True)
    if args.smoke:
        args.latency_runs, args.throughput_users, args.batch_sizes = 3, 8, [4]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": vars(args),
        "machine": machine_info(),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        result["device_memory_gib"] = round(props.total_memory / 2**30, 1)
        result["versions_cuda"] = torch.version.cuda
    phases: dict[str, float] = {}
    result["phase_seconds"] = phases

    def dump() -> None:
        result["elapsed_s"] = time.perf_counter() - t_start
        write_text_atomic(out / "gpu.json", json.dumps(result, indent=2, default=float))

    # -- jobs -------------------------------------------------------------------------------------
    t = time.perf_counter()
    queries, examples, info = load_llm_batch(args.jobs)
    n_val = int(info.get("validation_examples", 0))
    if args.smoke:
        queries, examples, n_val = queries[:12], examples[:10], min(n_val, 2)
    train_ex, val_ex = (examples[:-n_val], examples[-n_val:]) if n_val else (examples, [])
    shapes = {q.interest.shape for q in queries if q.interest is not None}
    rr_dict = dict(info["stage"]["reranker"])
    if args.model:
        rr_dict["model"] = args.model
    rr_dict["batch_size"] = args.batch_size
    if args.lr is not None:
        rr_dict["learning_rate"] = args.lr
    if args.epochs is not None:
        rr_dict["epochs"] = args.epochs
    if shapes:
        ((tokens, dim),) = shapes
        rr_dict.update(interest_dim=int(dim), interest_tokens=int(tokens))
    else:
        rr_dict["interest_dim"] = None
    if args.smoke:
        rr_dict["max_steps"] = 1
    cfg = LLMRerankerConfig.from_dict(rr_dict)
    keys = [query_key(q) for q in queries]
    result["jobs"] = {
        "queries": len(queries),
        "train_examples": len(train_ex),
        "validation_examples": len(val_ex),
        "candidates_per_query": float(np.mean([len(q.candidates) for q in queries])),
        "config": cfg.to_dict(),
    }
    phases["jobs"] = time.perf_counter() - t
    print("jobs", result["jobs"], flush=True)
    dump()

    def scores(name: str, rr: Any, qs: list[Any], perms: int) -> None:
        t0 = time.perf_counter()
        s = rr.score(qs, n_permutations=perms)
        LLMScoreTable.save(out / f"scores-{name}.npz", keys, s)
        result.setdefault("scoring_seconds", {})[name] = time.perf_counter() - t0
        print(f"  scored {name}: {len(qs)} queries in {time.perf_counter() - t0:.1f} s", flush=True)
        dump()

    # -- zero-shot ---------------------------------------------------------------------------------
    t = time.perf_counter()
    rr = LLMReranker(cfg)
    tokenizer = rr._ensure().tokenizer
    phases["load_model"] = time.perf_counter() - t
    result["model_source"] = rr._ensure().source
    if not args.skip_zero_shot:
        t = time.perf_counter()
        scores("zero_shot", rr, queries, 1)
        result["position_profile_zero_shot"] = [round(float(x), 4) for x in rr.position_profile(queries)]
        phases["zero_shot"] = time.perf_counter() - t
        dump()

    # -- fine-tune with the interest token ---------------------------------------------------------
    t = time.perf_counter()
    rr.fit(train_ex, validation=val_ex or None, progress=True)
    phases["fine_tune"] = time.perf_counter() - t
    result["fine_tune"] = {"seconds": phases["fine_tune"], "log": rr.train_log_}
    print("fine-tune", result["fine_tune"], flush=True)
    dump()
    t = time.perf_counter()
    rr.merge_adapter()
    scores("fine_tuned", rr, queries, 1)
    scores("fine_tuned_3_orders", rr, queries, 3)
    result["position_profile_fine_tuned"] = [round(float(x), 4) for x in rr.position_profile(queries)]
    phases["fine_tuned_scoring"] = time.perf_counter() - t
    if args.save_adapter:
        rr.save(args.save_adapter)
    dump()

    # -- speed: SmolLM2 ----------------------------------------------------------------------------
    t = time.perf_counter()
    # Serving form: the adapter folded into the weights and its layer wrappers removed.
    rr.merge_adapter(unload=True)
    print("speed: fine-tuned model", flush=True)
    result["speed_smollm2"] = speed(rr, queries, args.batch_sizes, args.throughput_users, args.latency_runs)
    phases["speed_smollm2"] = time.perf_counter() - t
    dump()

    # -- speed: ~1B Llama with random weights ----------------------------------------------------
    if not args.skip_big:
        t = time.perf_counter()
        result["speed_llama_1b_random"] = speed_big(args, cfg, tokenizer, queries, cuda)
        phases["speed_llama_1b"] = time.perf_counter() - t
        dump()

    # -- ablation: the same fine-tune without the interest token ---------------------------------
    if not args.smoke and time.perf_counter() - t_start > args.budget_s:
        result["ablation_no_interest"] = "skipped (time budget)"
    else:
        t = time.perf_counter()
        del rr
        if cuda:
            torch.cuda.empty_cache()

        def plain(q: Any) -> Any:
            return dataclasses.replace(q, interest=None)

        ab = LLMReranker(dataclasses.replace(cfg, interest_dim=None))
        ab.fit([LLMExample(plain(e.query), e.target) for e in train_ex], progress=True)
        ab.merge_adapter()
        s = ab.score([plain(q) for q in queries], n_permutations=1)
        LLMScoreTable.save(out / "scores-no_interest.npz", keys, s)
        result["ablation_no_interest"] = {"log": ab.train_log_}
        phases["ablation"] = time.perf_counter() - t
    result["total_seconds"] = time.perf_counter() - t_start
    dump()
    print(json.dumps({k: result.get(k) for k in ("device", "phase_seconds", "total_seconds")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
