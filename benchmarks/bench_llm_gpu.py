"""LLM re-ranker on one GPU: fine-tune on ml-100k, score every test user, measure speed.

One command, prepared to finish in under 8 minutes on an H100/H200:

    DRIFTRANK_DATA_HOME=../shared/data .venv/bin/python benchmarks/bench_llm_gpu.py \\
        --out benchmarks/results/llm/gpu.json

1. Quality (ml-100k leave-one-out, all test users): candidates = co-visitation top-20 fitted
   on train+validation (the target only where retrieved). NDCG@10 / HR@10 of the co-visitation
   order, a random order (expected), SmolLM2 zero-shot (1 and 3 orders), SmolLM2 after a LoRA
   fine-tune with the interest soft token (1 and 3 orders), the same fine-tune without the
   interest token (ablation), and reciprocal-rank fusion of each LLM order with co-visitation.
   Position bias (mean label probability by position) before and after fine-tuning.
2. Speed, for SmolLM2 (fine-tuned, adapter merged) and for a ~1B-parameter Llama built from a
   config with random weights (speed does not depend on the weights): batched throughput at 20
   candidates (users/s, candidates/s) at several batch sizes, with and without the shared-prefix
   KV cache, and single-user latency p50/p99 (batch 1, end to end: prompt building included).

Writes JSON with the device name, library versions, the command and every number to ``--out``
after each phase (a timeout keeps what was measured). ``--smoke`` runs every phase at toy size
(a few users, one training step, a tiny "large" model) so it finishes on a CPU in minutes.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_llm_cpu import (
    CoVisit,
    eval_queries,
    machine_info,
    minilm_item_vectors,
    per_user_ndcg,
    random_order_metrics,
    rrf,
    target_metrics,
    training_examples,
    without_interest,
)


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
        rope_theta=500000.0,
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


def main(argv: list[str] | None = None) -> int:
    """Run the GPU study; write JSON after every phase."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-home", default=os.environ.get("DRIFTRANK_DATA_HOME"))
    parser.add_argument("--out", default="benchmarks/results/llm/gpu.json")
    parser.add_argument("--smoke", action="store_true", help="toy sizes: checks the script end to end")
    parser.add_argument("--positions", type=int, default=10, help="training examples per user")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--max-history", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256, help="inference batch for the quality runs")
    parser.add_argument("--throughput-users", type=int, default=4096)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--skip-ablation", action="store_true")
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip the ablation past this")
    parser.add_argument("--save-adapter", default=None, help="folder to save the fine-tuned adapter in")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from driftrank.data import load_dataset
    from driftrank.eval import leave_one_out
    from driftrank.rerank._llm import LLMExample, LLMReranker, LLMRerankerConfig

    t_start = time.perf_counter()
    cuda = torch.cuda.is_available()
    if not cuda:
        torch.set_num_threads(min(4, os.cpu_count() or 1))
    if not cuda and not args.smoke:
        print("warning: no CUDA device; the full study takes hours on a CPU (try --smoke)", flush=True)
    if args.smoke:
        args.positions, args.latency_runs, args.max_history = 1, 3, 3
        args.throughput_users, args.batch_sizes = 8, [4]
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
    out = Path(args.out)

    def dump() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        result["elapsed_s"] = time.perf_counter() - t_start
        tmp.write_text(json.dumps(result, indent=2, default=float), encoding="utf-8")
        os.replace(tmp, out)

    phases: dict[str, float] = {}
    result["phase_seconds"] = phases

    # -- data, candidates, interest vectors ------------------------------------------------------
    t = time.perf_counter()
    ds = load_dataset("ml-100k", args.data_home, download=False)
    split = leave_one_out(ds)
    users = split.test.users
    if args.smoke:
        users = users[:4]
    targets = split.test.items[: len(users)]
    hist = split.train_valid
    cands = CoVisit().fit(hist).top([hist.sequences.user(int(u))[0] for u in users], 20)
    vectors = minilm_item_vectors(ds, device="cuda" if cuda else "cpu")
    queries = eval_queries(split, users, cands, vectors)
    plain = without_interest(queries)
    metrics: dict[str, dict[str, float]] = {
        "covisit": target_metrics(cands, [np.arange(20)] * len(users), targets),
        "random order of covisit top-20 (expected)": random_order_metrics(cands, targets),
    }
    result["test_users"] = len(users)
    result["candidate_recall@20"] = float((cands == targets[:, None]).any(1).mean())
    result["metrics"] = metrics
    phases["data"] = time.perf_counter() - t
    print(f"data: {len(users)} users, recall@20 {result['candidate_recall@20']:.3f}", flush=True)
    dump()

    from driftrank.eval import paired_bootstrap

    base_ndcg = per_user_ndcg(cands, [np.arange(20)] * len(users), targets)
    paired: dict[str, dict[str, float | int]] = {}
    result["paired_ndcg@10_vs_covisit"] = paired

    def quality(name: str, rr: Any, qs: list[Any], perms: int) -> None:
        t0 = time.perf_counter()
        scores = rr.score(qs, n_permutations=perms)
        orders = [np.argsort(-s, kind="stable") for s in scores]
        fused = [rrf(np.arange(len(o)), o) for o in orders]
        metrics[name] = target_metrics(cands, orders, targets)
        metrics[name]["seconds"] = time.perf_counter() - t0
        metrics[f"RRF(covisit, {name})"] = target_metrics(cands, fused, targets)
        for label, ords in ((name, orders), (f"RRF(covisit, {name})", fused)):
            paired[label] = paired_bootstrap(
                base_ndcg, per_user_ndcg(cands, ords, targets), seed=args.seed
            ).as_dict()
        print(f"  {name}: {metrics[name]}", flush=True)
        dump()

    cfg = LLMRerankerConfig(
        max_history=args.max_history,
        window=20,
        batch_size=args.batch_size,
        train_batch_size=args.train_batch,
        epochs=args.epochs,
        learning_rate=args.lr,
        lora_rank=args.lora_rank,
        lora_alpha=2 * args.lora_rank,
        max_steps=1 if args.smoke else None,
        seed=args.seed,
    )

    # -- SmolLM2 zero-shot -----------------------------------------------------------------------
    t = time.perf_counter()
    rr = LLMReranker(cfg)
    tokenizer = rr._ensure().tokenizer
    phases["load_smollm2"] = time.perf_counter() - t
    t = time.perf_counter()
    quality("smollm2 zero-shot, 1 order", rr, plain, 1)
    quality("smollm2 zero-shot, 3 orders", rr, plain, 3)
    result["position_profile_zero_shot"] = [round(float(x), 4) for x in rr.position_profile(plain)]
    phases["zero_shot"] = time.perf_counter() - t
    dump()

    # -- fine-tune with the interest token -------------------------------------------------------
    t = time.perf_counter()
    train_users = np.arange(split.train.n_users)
    if args.smoke:
        train_users = train_users[:4]
    examples = training_examples(
        split,
        train_users,
        vectors,
        n_candidates=20,
        positions=args.positions,
        seed=args.seed,
        max_history=args.max_history,
    )
    rng = np.random.default_rng(args.seed)
    held = rng.choice(len(examples), size=min(256, max(1, len(examples) // 20)), replace=False)
    mask = np.zeros(len(examples), bool)
    mask[held] = True
    train_ex = [e for e, h in zip(examples, mask) if not h]
    val_ex = [e for e, h in zip(examples, mask) if h]
    phases["examples"] = time.perf_counter() - t
    t = time.perf_counter()
    rr.fit(train_ex, validation=val_ex, progress=True)
    phases["fine_tune"] = time.perf_counter() - t
    result["fine_tune"] = {
        "examples": len(train_ex),
        "validation_examples": len(val_ex),
        "seconds": phases["fine_tune"],
        "log": rr.train_log_,
    }
    print("fine-tune", result["fine_tune"], flush=True)
    dump()
    t = time.perf_counter()
    rr.merge_adapter()
    quality("smollm2 fine-tuned + interest, 1 order", rr, queries, 1)
    quality("smollm2 fine-tuned + interest, 3 orders", rr, queries, 3)
    result["position_profile_fine_tuned"] = [round(float(x), 4) for x in rr.position_profile(queries)]
    phases["fine_tuned_scoring"] = time.perf_counter() - t
    if args.save_adapter:
        rr.save(args.save_adapter)
    dump()

    # -- speed: SmolLM2 ----------------------------------------------------------------------------
    t = time.perf_counter()
    print("speed: smollm2", flush=True)
    result["speed_smollm2"] = speed(rr, queries, args.batch_sizes, args.throughput_users, args.latency_runs)
    phases["speed_smollm2"] = time.perf_counter() - t
    dump()

    # -- speed: ~1B Llama with random weights ----------------------------------------------------
    t = time.perf_counter()
    big_cfg = big_llama_config(len(tokenizer), args.smoke)
    from transformers import LlamaForCausalLM

    device = torch.device("cuda" if cuda else "cpu")
    with torch.device(device):
        big = LlamaForCausalLM(big_cfg)
    n_params = sum(p.numel() for p in big.parameters())
    rr_big = LLMReranker(dataclasses.replace(cfg, model="random-llama-1b"), model=big, tokenizer=tokenizer)
    print(f"speed: llama {n_params / 1e9:.2f}B random", flush=True)
    result["speed_llama_1b_random"] = {
        "parameters": n_params,
        "config": {k: getattr(big_cfg, k) for k in ("hidden_size", "num_hidden_layers", "intermediate_size")},
        **speed(rr_big, queries, args.batch_sizes, args.throughput_users, args.latency_runs),
    }
    phases["speed_llama_1b"] = time.perf_counter() - t
    del rr_big, big
    if cuda:
        torch.cuda.empty_cache()
    dump()

    # -- ablation: the same fine-tune without the interest token ---------------------------------
    if args.skip_ablation or (not args.smoke and time.perf_counter() - t_start > args.budget_s):
        result["ablation_no_interest"] = "skipped" + ("" if args.skip_ablation else " (time budget)")
    else:
        t = time.perf_counter()
        ab = LLMReranker(dataclasses.replace(cfg, interest_dim=None))
        ab.fit(
            [
                LLMExample(q, e.target)
                for q, e in zip(without_interest([e.query for e in train_ex]), train_ex)
            ],
            progress=True,
        )
        ab.merge_adapter()
        quality("smollm2 fine-tuned, no interest, 1 order", ab, plain, 1)
        phases["ablation"] = time.perf_counter() - t
    result["total_seconds"] = time.perf_counter() - t_start
    dump()
    print(
        json.dumps({k: v for k, v in result.items() if k in ("device", "metrics", "total_seconds")}, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
