"""Retrieval benchmark: candidate recall and ranking quality per channel and merged, then speed.

Quality (leave-one-out TEST split, channels fitted on train+validation, seen items excluded):
candidate recall@50/100/200 and NDCG@10/HR@10 of every channel as a full-catalog ranker and of
the merged candidates. Speed: fit time, batch candidate throughput (users/s), and fold-in
latency p50/p99 for ALS/BPR/LightFM at ml-100k size and on random sparse data with ML-1M and
ML-20M catalog sizes (3,706 and 26,744 items), with implicit's own
``recalculate_user`` / ``recommend(..., recalculate_user=True)`` timed in the same process as
the reference.

    DRIFTRANK_DATA_HOME=../shared/data .venv/bin/python benchmarks/bench_retrieval.py \\
        --out benchmarks/results/retrieval.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits

from driftrank._atomic import write_text_atomic
from driftrank.data import Dataset, load_dataset
from driftrank.eval import leave_one_out, metrics_at, rank_targets, target_ranks
from driftrank.retrieval import (
    ALSChannel,
    ALSConfig,
    BPRChannel,
    BPRConfig,
    CandidateMerger,
    Channel,
    CovisitChannel,
    CovisitConfig,
    FactorChannel,
    LightFMChannel,
    LightFMConfig,
    MergerConfig,
    PopularityChannel,
    candidate_recall,
)
from driftrank.retrieval._merge import DEFAULT_QUOTAS, candidates_to_ranking

NS = (50, 100, 200)


def machine() -> dict[str, Any]:
    """Where the numbers were measured."""
    import implicit
    import lightfm

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "implicit": implicit.__version__,
        "lightfm": lightfm.__version__,
        "load_average_at_start": list(load) if load else None,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def channels(seed: int) -> dict[str, Channel]:
    """The channels with their tuned defaults, plus plain last-item co-visitation for reference."""
    return {
        "covisit": CovisitChannel(),
        "als": ALSChannel(ALSConfig(random_state=seed)),
        "lightfm": LightFMChannel(LightFMConfig(random_state=seed)),
        "bpr": BPRChannel(BPRConfig(random_state=seed)),
        "pop": PopularityChannel(),
        "covisit-plain": CovisitChannel(
            CovisitConfig(window=1, backward_weight=0.0, anchors=1, name="covisit-plain")
        ),
    }


def quality(name: str, data_home: str | None, seed: int, stage: str = "test") -> dict[str, Any]:
    """Recall, NDCG/HR and timings of every channel and of the merged candidates on one data set.

    ``stage="test"``: fitted on train+validation, scored on the last event; ``"validation"``:
    fitted on train, scored on the second to last (where the defaults were chosen)."""
    ds = load_dataset(name, data_home, download=False)
    split = leave_one_out(ds)
    if stage == "test":
        history, targets = split.train_valid, split.test
    else:
        history, targets = split.train, split.validation
    out: dict[str, Any] = {
        "dataset": ds.describe(),
        "stage": stage,
        "n_target_users": len(targets),
        "channels": {},
    }
    fitted: dict[str, Channel] = {}
    for key, ch in channels(seed).items():
        t = time.perf_counter()
        ch.fit(history)
        fit_s = time.perf_counter() - t
        ranking, rank_s = rank_targets(ch, history, targets, max(NS))
        ranks = target_ranks(ranking.items, targets.items)
        m = metrics_at(ranks, 10)
        row = {
            "candidate_recall": candidate_recall(ranking, targets.items, NS),
            "NDCG@10": float(m["NDCG@10"].mean()),
            "HR@10": float(m["HR@10"].mean()),
            "fit_seconds": fit_s,
            "candidates_users_per_second": len(targets) / rank_s,
        }
        out["channels"][key] = row
        fitted[key] = ch
        print(
            f"  {name:16s} {key:14s} R@50/100/200 "
            + " ".join(f"{row['candidate_recall'][str(n)]:.4f}" for n in NS)
            + f"  NDCG@10 {row['NDCG@10']:.4f} HR@10 {row['HR@10']:.4f}"
            + f"  fit {fit_s:6.1f}s  {row['candidates_users_per_second']:8.0f} users/s",
            flush=True,
        )
    singles = [k for k in out["channels"] if k != "covisit-plain"]
    best = {str(n): max(out["channels"][k]["candidate_recall"][str(n)] for k in singles) for n in NS}
    out["best_single_channel"] = max(singles, key=lambda k: out["channels"][k]["candidate_recall"]["200"])
    out["merged"] = {}
    # The default order first; the alternative is measured too because it is the documented choice.
    for order in ("rrf", "quota"):
        merger = CandidateMerger(
            [fitted[k] for k, _ in DEFAULT_QUOTAS], MergerConfig(DEFAULT_QUOTAS, order=order)
        )
        t = time.perf_counter()
        merged = merger.candidates(targets.users, max(NS), exclude=history.seen)
        merge_s = time.perf_counter() - t
        top = candidates_to_ranking(merged, 10)
        m = metrics_at(target_ranks(top.items, targets.items), 10)
        recall = candidate_recall(merged, targets.items, NS)
        r = {
            "quotas": [list(q) for q in DEFAULT_QUOTAS],
            "order": order,
            "candidate_recall": recall,
            "NDCG@10": float(m["NDCG@10"].mean()),
            "HR@10": float(m["HR@10"].mean()),
            "candidates_users_per_second": len(targets) / merge_s,
            "beats_best_single": {str(n): recall[str(n)] > best[str(n)] for n in NS},
        }
        out["merged"][order] = r
        print(
            f"  {name:16s} {'merged-' + order:14s} R@50/100/200 "
            + " ".join(f"{recall[str(n)]:.4f}" for n in NS)
            + f"  NDCG@10 {r['NDCG@10']:.4f} HR@10 {r['HR@10']:.4f}"
            + f"  {'':12s}  {r['candidates_users_per_second']:8.0f} users/s",
            flush=True,
        )
    out["_fitted"] = fitted
    out["_split"] = split
    return out


def _percentiles(times: list[float]) -> dict[str, float]:
    a = np.asarray(times) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "n": len(a)}


def fold_in_latency(
    ch: FactorChannel, histories: list[tuple[np.ndarray, np.ndarray]], repeat: int = 1
) -> dict[str, float]:
    """Per-call wall time of ``fold_in`` over the given histories."""
    ch.fold_in(*histories[0])  # warm-up (BLAS controller, caches)
    times = []
    for _ in range(repeat):
        for items, ts in histories:
            t = time.perf_counter()
            ch.fold_in(items, ts)
            times.append(time.perf_counter() - t)
    return _percentiles(times)


def online_latency(
    ch: FactorChannel, histories: list[tuple[np.ndarray, np.ndarray]], n: int
) -> dict[str, float]:
    """Per-call time of ``observe`` (one new event for a known user) followed by ``candidates``."""
    times = []
    base = ch.n_users
    for j, (items, ts) in enumerate(histories):
        u = base + j
        ch.observe(np.full(len(items) - 1, u), items[:-1], ts[:-1])
        t = time.perf_counter()
        ch.observe(np.array([u]), items[-1:], ts[-1:])
        ch.candidates(np.array([u]), n, exclude="seen")
        times.append(time.perf_counter() - t)
    return _percentiles(times)


def implicit_reference(ch: ALSChannel, dataset: Dataset, users: np.ndarray, n: int) -> dict[str, Any]:
    """implicit's own ``recalculate_user`` and ``recommend(recalculate_user=True)`` per call."""
    model = ch.implicit_model_
    conf = ch.confidence(dataset)
    recalc, recommend = [], []
    model.recalculate_user(int(users[0]), conf[int(users[0])])
    for u in users.tolist():
        row = conf[u]
        t = time.perf_counter()
        model.recalculate_user(u, row)
        recalc.append(time.perf_counter() - t)
        t = time.perf_counter()
        model.recommend(u, row, N=n, recalculate_user=True, filter_already_liked_items=True)
        recommend.append(time.perf_counter() - t)
    return {"recalculate_user": _percentiles(recalc), "recommend_recalculate_user": _percentiles(recommend)}


def random_dataset(n_users: int, n_items: int, per_user: int, seed: int) -> Dataset:
    """Random sparse interactions with a Zipf-like item popularity (the shape of MovieLens)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_items + 1) ** 0.8
    p /= p.sum()
    users, items = [], []
    for u in range(n_users):
        k = int(rng.integers(per_user // 2, per_user * 3 // 2))
        users.append(np.full(k, u))
        items.append(rng.choice(n_items, size=k, replace=False, p=p))
    inter = pl.DataFrame(
        {
            "user_id": np.concatenate(users),
            "item_id": np.concatenate(items),
            "timestamp": 1.6e9 + rng.uniform(0, 1e7, size=sum(len(x) for x in users)),
        }
    )
    return Dataset.from_frames(inter, name=f"random-{n_items}")


def speed_at(
    label: str, dataset: Dataset, fitted: dict[str, FactorChannel], n_probe: int, seed: int
) -> dict[str, Any]:
    """Fold-in, online-update and reference latencies for fitted factor channels on ``dataset``."""
    rng = np.random.default_rng(seed)
    users = rng.choice(dataset.n_users, size=min(n_probe, dataset.n_users), replace=False)
    hist = [
        (dataset.sequences.user(int(u))[0].astype(np.int64), dataset.sequences.user(int(u))[1]) for u in users
    ]
    lengths = [len(h[0]) for h in hist]
    out: dict[str, Any] = {
        "n_items": dataset.n_items,
        "n_users": dataset.n_users,
        "n_interactions": dataset.n_interactions,
        "history_length_median": float(np.median(lengths)),
    }
    for key, ch in fitted.items():
        row: dict[str, Any] = {"factors": ch.n_factors, "fold_in": fold_in_latency(ch, hist)}
        row["observe_then_candidates"] = online_latency(ch, hist[:200], 200)
        if isinstance(ch, ALSChannel):
            ref = implicit_reference(ch, dataset, users[:200], 200)
            row["implicit"] = ref
            row["speedup_fold_in_vs_recalculate_user_p50"] = (
                ref["recalculate_user"]["p50_ms"] / row["fold_in"]["p50_ms"]
            )
            row["speedup_online_vs_recommend_recalculate_p50"] = (
                ref["recommend_recalculate_user"]["p50_ms"] / row["observe_then_candidates"]["p50_ms"]
            )
        out[key] = row
        f = row["fold_in"]
        line = f"  {label:16s} {key:8s} d={ch.n_factors:<4d} fold-in p50 {f['p50_ms']:.3f} ms p99 {f['p99_ms']:.3f} ms"
        o = row["observe_then_candidates"]
        line += f" | observe+candidates p50 {o['p50_ms']:.2f} ms"
        if "implicit" in row:
            r = row["implicit"]
            line += (
                f" | implicit recalculate_user p50 {r['recalculate_user']['p50_ms']:.3f} ms"
                f" (x{row['speedup_fold_in_vs_recalculate_user_p50']:.1f}),"
                f" recommend(recalculate_user) p50 {r['recommend_recalculate_user']['p50_ms']:.2f} ms"
                f" (x{row['speedup_online_vs_recommend_recalculate_p50']:.1f})"
            )
        else:
            line += " | implicit: no recalculate_user for this model"
        print(line, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["ml-100k", "ml-latest-small"])
    ap.add_argument("--data-home", default=os.environ.get("DRIFTRANK_DATA_HOME"))
    ap.add_argument("--out", default="benchmarks/results/retrieval.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-speed", action="store_true", help="only the quality table")
    ap.add_argument(
        "--stage",
        choices=("test", "validation"),
        default="test",
        help="split scored by the quality table (validation = where the defaults were chosen)",
    )
    ap.add_argument("--probe-users", type=int, default=500, help="users timed per fold-in measurement")
    args = ap.parse_args(argv)

    result: dict[str, Any] = {
        "machine": machine(),
        "seed": args.seed,
        "command": " ".join(["benchmarks/bench_retrieval.py", *(argv if argv is not None else sys.argv[1:])]),
        "quality": {},
        "speed": {},
    }
    print(
        f"machine: {result['machine']['platform']}, {result['machine']['cpu_count']} CPUs, load {result['machine']['load_average_at_start']}"
    )
    fitted_on = "train+validation" if args.stage == "test" else "train"
    print(f"quality: leave-one-out {args.stage} split, fitted on {fitted_on}")
    ml100k_fitted: dict[str, Channel] = {}
    ml100k_history: Dataset | None = None
    for name in args.datasets:
        q = quality(name, args.data_home, args.seed, args.stage)
        fitted = q.pop("_fitted")
        split = q.pop("_split")
        if name == "ml-100k":
            ml100k_fitted = fitted
            ml100k_history = split.train_valid if args.stage == "test" else split.train
        result["quality"][name] = q

    if not args.skip_speed:
        print("speed (single-thread BLAS for fold-in; implicit timed in the same process)")
        with threadpool_limits(1, "blas"):
            if ml100k_history is not None:
                fac = {k: v for k, v in ml100k_fitted.items() if isinstance(v, FactorChannel)}
                result["speed"]["ml-100k"] = speed_at(
                    "ml-100k", ml100k_history, fac, args.probe_users, args.seed
                )
            for label, n_users, n_items, per_user in (
                ("ml-1m-size", 6040, 3706, 160),
                ("ml-20m-size", 6000, 26744, 140),
            ):
                ds = random_dataset(n_users, n_items, per_user, args.seed)
                # Fold-in cost depends on the history length and factor count, not on how well
                # the model fits: a short fit keeps this part quick on a shared machine.
                fac = {
                    "als": ALSChannel(ALSConfig(iterations=3, random_state=args.seed)),
                    "bpr": BPRChannel(BPRConfig(iterations=5, random_state=args.seed)),
                    "lightfm": LightFMChannel(LightFMConfig(epochs=1, random_state=args.seed)),
                }
                fit_s = {}
                for k, ch in fac.items():
                    t = time.perf_counter()
                    ch.fit(ds)
                    fit_s[k] = time.perf_counter() - t
                res = speed_at(label, ds, fac, args.probe_users, args.seed)
                res["short_fit_seconds"] = fit_s
                result["speed"][label] = res

    out = Path(args.out)
    write_text_atomic(out, json.dumps(result, indent=2, default=float) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
