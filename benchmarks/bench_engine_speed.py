"""Serving speed of the hybrid :class:`~driftrank.engine.Engine`, against implicit's ALS.

Fits the hybrid (``EngineConfig(seed=0)`` or ``--config``) on the leave-one-out training part
of a data set (``leave_one_out(ds).train_valid``), or loads a saved one (``--load``), and
measures, in one process and under the same thread settings:

- fit time: total wall seconds and the engine's own per-stage seconds (``fit_report``);
- single-user latency: ``engine.rank(user, k=10)`` for ``--users`` users (after a warm-up on
  other users), four times: each user's first request after ``Engine.load`` (the engine is
  loaded again from its saved folder; the model file holds every user's encoded history),
  a first request with nothing memoised (``engine.clear_caches()`` runs first: as after an
  event with ``encode_on_observe=False``, or for a user past ``memo_entries``), a repeat
  request, and, last, the request right after a new event:
  ``engine.observe`` of one unseen item a minute after their latest event (timed apart as
  ``observe_one_event``), then ``rank``. Reading the first result's ``contributions`` (which
  computes them) is timed apart and reported added to the first requests after load as
  ``hybrid_with_contributions``; p50/p90/p99/mean in milliseconds, against implicit's ALS (64
  factors, fitted on the same training CSR) ``recommend(u, user_items[u], N=10,
  filter_already_liked_items=True)`` for the same users; the two are timed alternately, user
  by user, so that background load hits both;
- batch throughput (users/s): ``engine.rank_batch`` over all users in batches of
  ``--batch-size`` (first requests on an engine loaded just before, then repeats, then first
  requests with nothing memoised) with ``--workers`` parallel workers (default: as many as
  threads; torch, BLAS and OpenMP get one thread per worker while they run), and first requests
  after a load again in one call per batch (``workers=1``, torch on every thread), against ALS ``recommend``
  with arrays of users, ``--passes`` times in turn; the medians are reported (a single pass
  moved by ±15% between runs on the shared machine). ALS runs on ``--threads`` threads and,
  when that is more than one, also on one thread (implicit's ``num_threads`` and BLAS): the
  ratios and goals use whichever median is faster, ALS at its best on this machine
  (``batch_throughput_same_threads_als_over_hybrid`` keeps the ratio to ALS on as many
  threads as the hybrid).

The process first calls ``driftrank.engine.tune_malloc()`` (glibc keeps freed memory for reuse
instead of faulting it in again on every batch; it applies to ALS too, in the same process);
``--default-malloc`` keeps the allocator's defaults. Every ratio is hybrid / ALS. By default everything runs on one thread (torch, BLAS, implicit's
``num_threads``): one request per core, as a serving process with a worker per core would run.
Results go to ``--out``: ``results.json`` (machine, command, config, all numbers) and
``latency.png`` (histograms of the single-user latencies).

    DRIFTRANK_DATA_HOME=../shared/data .venv/bin/python benchmarks/bench_engine_speed.py \\
        --save /tmp/speed/default-engine

Latencies are wall-clock and depend on the machine's load (recorded as the load average).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from driftrank._atomic import write_text_atomic
from driftrank.bench._harness import machine_info
from driftrank.data import Dataset, load_dataset
from driftrank.engine import Engine, EngineConfig, tune_malloc
from driftrank.eval import leave_one_out

log = logging.getLogger("bench_engine_speed")

K = 10
WARMUP = 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-100k", help="data set name for load_dataset (default ml-100k)")
    p.add_argument("--config", type=Path, help="EngineConfig TOML (default: EngineConfig(seed=0))")
    p.add_argument("--load", type=Path, help="use this saved engine instead of fitting one")
    p.add_argument(
        "--save",
        type=Path,
        help="save the fitted engine to this folder (default: a temporary one, to time loads)",
    )
    p.add_argument("--users", type=int, default=300, help="users timed one by one (default 300)")
    p.add_argument("--batch-size", type=int, default=256, help="users per rank_batch call (default 256)")
    p.add_argument(
        "--passes", type=int, default=5, help="batch throughput passes, median reported (default 5)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch/BLAS/implicit threads (default 1)")
    p.add_argument(
        "--workers",
        type=int,
        help="rank_batch workers (default: --threads), each with one torch/BLAS thread",
    )
    p.add_argument(
        "--default-malloc",
        action="store_true",
        help="keep glibc's allocator defaults (by default the run calls driftrank.engine.tune_malloc())",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the user sample and of ALS")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/speed"), help="output folder")
    args = p.parse_args(argv)
    args.workers = args.threads if args.workers is None else args.workers
    if min(args.users, args.batch_size, args.threads, args.passes, args.workers) < 1:
        p.error("--users, --batch-size, --passes, --threads and --workers must be positive")
    if args.load is not None and args.config is not None:
        p.error("--config describes a fit; it cannot be combined with --load")
    return args


def summary_ms(seconds: np.ndarray) -> dict[str, float]:
    """p50/p90/p99/mean/max in milliseconds of ``seconds: float[n]``."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "n": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "max_ms": float(ms.max()),
    }


def get_engine(args: argparse.Namespace, train: Dataset, scratch: Path) -> tuple[Path, dict[str, Any]]:
    """The saved engine to time (fitted now and saved to ``--save`` or into ``scratch``, or
    ``--load``) and, when fitted now, what its fit took (``main`` reads a loaded engine's)."""
    if args.load is not None:
        return args.load, {"source": f"loaded from {args.load}"}
    config = EngineConfig.from_toml(args.config) if args.config is not None else EngineConfig(seed=0)
    log.info("fitting the hybrid on %s (%d interactions)", train.name, train.n_interactions)
    t = time.perf_counter()
    engine = Engine(config).fit(train)
    total = time.perf_counter() - t
    log.info("fitted in %.1f s: %s", total, engine.fit_report["seconds"])
    path = engine.save(args.save if args.save is not None else scratch / "engine")
    log.info("saved to %s", path)
    return path, {
        "source": "fitted in this run",
        "total_seconds": total,
        "stage_seconds": engine.fit_report["seconds"],
    }


def fit_als(user_items: Any, threads: int, seed: int) -> tuple[Any, float]:
    """implicit's ALS (64 factors) on ``user_items`` (CSR users × items) and its fit seconds."""
    from implicit.als import AlternatingLeastSquares

    # implicit warns (and slows down) when BLAS runs several threads inside its own threads.
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=64, random_state=seed, num_threads=threads, use_gpu=False)
        t = time.perf_counter()
        model.fit(user_items, show_progress=False)
        seconds = time.perf_counter() - t
    return model, seconds


def single_user_latency(
    warm: Engine,
    path: Path,
    als: Any,
    user_items: Any,
    raw_ids: list[Any],
    index: np.ndarray,
    warmup: list[Any],
) -> tuple[Engine, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """The engine loaded from ``path`` and the seconds per request of the hybrid and of ALS for
    each user (timed alternately): each user's first request right after the load, their first
    request with nothing memoised (after ``clear_caches``), a repeat request, and the seconds of
    reading the first result's ``contributions`` (computed on first read). ``warmup`` users are
    ranked first, on ``warm``, another engine loaded from ``path``."""
    engine = warm
    for raw in warmup:
        engine.rank(raw, k=K).contributions  # noqa: B018 - the read computes them
        als.recommend(0, user_items[0], N=K, filter_already_liked_items=True)
    engine = Engine.load(path)
    out = {}
    for name in ("first", "nothing_memoised", "repeat"):
        if name == "nothing_memoised":
            engine.clear_caches()
        hybrid = np.empty(len(raw_ids))
        explain = np.empty(len(raw_ids))
        reference = np.empty(len(raw_ids))
        for j, (raw, u) in enumerate(
            tqdm(zip(raw_ids, index.tolist(), strict=True), total=len(raw_ids), desc=name, leave=False)
        ):
            t = time.perf_counter()
            result = engine.rank(raw, k=K)
            hybrid[j] = time.perf_counter() - t
            t = time.perf_counter()
            result.contributions  # noqa: B018 - the read computes them
            explain[j] = time.perf_counter() - t
            row = user_items[u]
            t = time.perf_counter()
            als.recommend(u, row, N=K, filter_already_liked_items=True)
            reference[j] = time.perf_counter() - t
        out[name] = (hybrid, reference, explain)
    return engine, out


def after_event_latency(
    engine: Engine,
    als: Any,
    user_items: Any,
    raw_ids: list[Any],
    index: np.ndarray,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seconds of ``engine.observe`` of one new event per user (an item they have not seen, a
    minute after their latest event) and of the ``rank`` right after it, the request a live
    user makes next, with ALS ``recommend`` for the same user timed in between. Changes the
    engine's state: run it last."""
    rng = np.random.default_rng([seed, 0xE7E])
    item_ids = engine._require().item_ids.ids
    observe = np.empty(len(raw_ids))
    hybrid = np.empty(len(raw_ids))
    reference = np.empty(len(raw_ids))
    for j, (raw, u) in enumerate(
        tqdm(zip(raw_ids, index.tolist(), strict=True), total=len(raw_ids), desc="after event", leave=False)
    ):
        seen = set(user_items[u].indices.tolist())
        item = int(rng.integers(len(item_ids)))
        while item in seen:
            item = int(rng.integers(len(item_ids)))
        last = float(engine.history(raw)["timestamp"].max())
        t = time.perf_counter()
        engine.observe([(raw, item_ids[item], last + 60.0)])
        observe[j] = time.perf_counter() - t
        t = time.perf_counter()
        engine.rank(raw, k=K)
        hybrid[j] = time.perf_counter() - t
        t = time.perf_counter()
        als.recommend(u, user_items[u], N=K, filter_already_liked_items=True)
        reference[j] = time.perf_counter() - t
    return observe, hybrid, reference


def batch_throughput(
    path: Path,
    als: Any,
    user_items: Any,
    raw_ids: list[Any],
    batch_size: int,
    passes: int,
    threads: int,
    workers: int,
) -> dict[str, Any]:
    """Users per second of ``rank_batch`` over all users and of ALS ``recommend`` with arrays of
    users, ``passes`` times in turn (one pass: with ``workers`` and torch, BLAS and OpenMP on one
    thread per worker, the hybrid's first requests on the engine loaded from ``path`` just
    before, its repeats, and its first requests with nothing memoised; then first requests after
    a load in one call with torch on ``threads`` threads; ALS on ``threads`` threads and, when
    that is more than one, ALS on one thread), so that a stretch of background load hits all of
    them. Reports each pass and the medians; the ratios use the medians."""
    import torch

    index = np.arange(len(raw_ids))
    engine = Engine.load(path)
    engine.rank_batch(raw_ids[:batch_size], k=K)  # warm-up (lazy imports, first allocations)
    names = ("hybrid", "hybrid_repeat", "hybrid_nothing_memoised", "hybrid_one_worker")
    runs: dict[str, list[float]] = {name: [] for name in (*names, "als")}
    if threads > 1:
        runs["als_one_thread"] = []
    for _ in tqdm(range(passes), desc="batch passes", leave=False):
        for name in names:
            if name in ("hybrid", "hybrid_one_worker"):
                engine = Engine.load(path)
            elif name == "hybrid_nothing_memoised":
                engine.clear_caches()
            w = 1 if name == "hybrid_one_worker" else workers
            torch.set_num_threads(threads if w == 1 else 1)
            with threadpool_limits(threads if w == 1 else 1):
                t = time.perf_counter()
                for s in range(0, len(raw_ids), batch_size):
                    engine.rank_batch(raw_ids[s : s + batch_size], k=K, workers=w)
                runs[name].append(len(raw_ids) / (time.perf_counter() - t))
        torch.set_num_threads(threads)
        for name in ("als", "als_one_thread") if threads > 1 else ("als",):
            als_threads = 1 if name == "als_one_thread" else threads
            als.num_threads = als_threads
            with threadpool_limits(als_threads):
                t = time.perf_counter()
                for s in range(0, len(raw_ids), batch_size):
                    users = index[s : s + batch_size]
                    als.recommend(users, user_items[users], N=K, filter_already_liked_items=True)
                runs[name].append(len(raw_ids) / (time.perf_counter() - t))
        als.num_threads = threads
    out: dict[str, Any] = {f"{name}_users_per_s": float(np.median(v)) for name, v in runs.items()}
    out["passes"] = {f"{name}_users_per_s": v for name, v in runs.items()}
    return out


def plot_latency(series: dict[str, np.ndarray], path: Path, title: str) -> None:
    """Histograms of latency samples (seconds, by label) on a log time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = {name: v * 1000.0 for name, v in series.items()}
    lo = max(min(v.min() for v in ms.values()) * 0.8, 1e-3)
    hi = max(v.max() for v in ms.values()) * 1.25
    bins = np.geomspace(lo, hi, 60).tolist()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, v in ms.items():
        ax.hist(
            v,
            bins=bins,
            alpha=0.55,
            label=f"{name} (p50 {np.median(v):.2f} ms, p99 {np.percentile(v, 99):.2f} ms)",
        )
    ax.set_xscale("log")
    ax.set_xlabel("single-user latency (ms, log scale)")
    ax.set_ylabel("users")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns what it wrote to ``results.json``."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    malloc_tuned = False if args.default_malloc else tune_malloc()
    load_start = os.getloadavg()
    ds = load_dataset(args.dataset)
    train = leave_one_out(ds).train_valid
    scratch = tempfile.TemporaryDirectory(prefix="driftrank-speed-")
    with threadpool_limits(args.threads):
        path, fit = get_engine(args, train, Path(scratch.name))
    t = time.perf_counter()
    engine = Engine.load(path)
    fit["load_seconds"] = time.perf_counter() - t
    log.info("loaded %s in %.2f s", path, fit["load_seconds"])
    if args.load is not None:  # what its fit took, as recorded when it was saved
        fit["total_seconds"] = engine.fit_report.get("seconds", {}).get("total")
        fit["stage_seconds"] = engine.fit_report.get("seconds", {})
    user_items = train.seen.tocsr()
    if engine.n_users != train.n_users:
        raise SystemExit(f"the engine knows {engine.n_users} users, the training part has {train.n_users}")
    raw_ids = [x.item() if hasattr(x, "item") else x for x in train.user_ids.ids]
    als, als_fit_s = fit_als(user_items, args.threads, args.seed)
    log.info("implicit ALS fitted in %.1f s", als_fit_s)

    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(raw_ids))
    sample = order[: min(args.users, len(raw_ids) - WARMUP)]
    warmup = [raw_ids[i] for i in order[len(order) - WARMUP :]]
    with threadpool_limits(args.threads):
        engine, timed = single_user_latency(
            engine, path, als, user_items, [raw_ids[i] for i in sample], sample, warmup
        )
        batch = batch_throughput(
            path, als, user_items, raw_ids, args.batch_size, args.passes, args.threads, args.workers
        )
        observe_s, event_s, als_event_s = after_event_latency(
            engine, als, user_items, [raw_ids[i] for i in sample], sample, args.seed
        )
    hybrid_s, als_s, explain_s = timed["first"]
    cold_s, als_cold_s, _ = timed["nothing_memoised"]
    repeat_s, als_repeat_s, _ = timed["repeat"]
    scratch.cleanup()
    # The reference is ALS at its fastest here: with several threads its batch `recommend` can
    # be slower than on one (measured on the 2-core machine: 6,000 against 9,900 users/s).
    batch["als_best_users_per_s"] = max(
        batch["als_users_per_s"], batch.get("als_one_thread_users_per_s", 0.0)
    )
    hybrid_ups, als_ups = batch["hybrid_users_per_s"], batch["als_best_users_per_s"]

    single = {
        "hybrid": summary_ms(hybrid_s),
        "als": summary_ms(als_s),
        "reading_contributions": summary_ms(explain_s),
        "hybrid_with_contributions": summary_ms(hybrid_s + explain_s),
    }
    repeat = {"hybrid": summary_ms(repeat_s), "als": summary_ms(als_repeat_s)}
    cold = {"hybrid": summary_ms(cold_s), "als": summary_ms(als_cold_s)}
    after_event = {
        "hybrid": summary_ms(event_s),
        "als": summary_ms(als_event_s),
        "observe_one_event": summary_ms(observe_s),
    }
    ratios = {
        f"{q}_latency": single["hybrid"][f"{q}_ms"] / single["als"][f"{q}_ms"]
        for q in ("p50", "p90", "p99", "mean")
    }
    ratios["batch_throughput_als_over_hybrid"] = als_ups / hybrid_ups
    ratios["batch_throughput_same_threads_als_over_hybrid"] = batch["als_users_per_s"] / hybrid_ups
    ratios["repeat_p99_latency"] = repeat["hybrid"]["p99_ms"] / repeat["als"]["p99_ms"]
    ratios["after_event_p99_latency"] = after_event["hybrid"]["p99_ms"] / after_event["als"]["p99_ms"]
    ratios["repeat_batch_throughput_als_over_hybrid"] = als_ups / batch["hybrid_repeat_users_per_s"]
    ratios["nothing_memoised_batch_throughput_als_over_hybrid"] = (
        als_ups / batch["hybrid_nothing_memoised_users_per_s"]
    )
    ratios["one_worker_batch_throughput_als_over_hybrid"] = als_ups / batch["hybrid_one_worker_users_per_s"]
    result = {
        "benchmark": "engine serving speed",
        "machine": machine_info(),
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
        if argv is None
        else " ".join(argv),
        "dataset": {
            "name": ds.name,
            "train": train.name,
            "n_users": train.n_users,
            "n_items": train.n_items,
            "n_interactions": train.n_interactions,
        },
        "threads": args.threads,
        "malloc_tuned": malloc_tuned,
        "k": K,
        "config": engine.config.to_dict(),
        "fit": {"hybrid": fit, "als_seconds": als_fit_s},
        "single_user": single,
        "single_user_repeat": repeat,
        "single_user_nothing_memoised": cold,
        "single_user_after_event": after_event,
        "batch": {
            "batch_size": args.batch_size,
            "workers": args.workers,
            "threads_per_worker": 1 if args.workers > 1 else args.threads,
            "n_users": len(raw_ids),
            **batch,
        },
        "ratios_hybrid_over_als": ratios,
        "goals": {
            "p99_single_user_ms_under_10": single["hybrid"]["p99_ms"] < 10.0,
            "p99_single_user_repeat_ms_under_10": repeat["hybrid"]["p99_ms"] < 10.0,
            "p99_single_user_nothing_memoised_ms_under_10": cold["hybrid"]["p99_ms"] < 10.0,
            "p99_single_user_after_event_ms_under_10": after_event["hybrid"]["p99_ms"] < 10.0,
            "batch_throughput_within_5x_of_als": als_ups / hybrid_ups <= 5.0,
            "batch_repeat_throughput_within_5x_of_als": ratios["repeat_batch_throughput_als_over_hybrid"]
            <= 5.0,
            "batch_nothing_memoised_throughput_within_5x_of_als": ratios[
                "nothing_memoised_batch_throughput_als_over_hybrid"
            ]
            <= 5.0,
            "fit_under_120_s": None if fit["total_seconds"] is None else fit["total_seconds"] < 120.0,
        },
        "als": {"factors": 64, "num_threads": args.threads, "implicit_fit_under_threadpool_limits_blas": 1},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "results.json", json.dumps(result, indent=2, default=float) + "\n")
    plot_latency(
        {
            "implicit ALS recommend": als_s,
            "hybrid rank, first after load": hybrid_s,
            "hybrid rank, nothing memoised": cold_s,
            "hybrid rank, right after an event": event_s,
            "hybrid rank, repeat request": repeat_s,
        },
        args.out / "latency.png",
        f"{ds.name}: single-user top-{K}, {args.threads} thread(s)",
    )
    h, a, r, m = single["hybrid"], single["als"], repeat["hybrid"], cold["hybrid"]
    e, o = after_event["hybrid"], after_event["observe_one_event"]
    c = single["hybrid_with_contributions"]
    print(
        f"fit: hybrid {fit['total_seconds']:.1f} s ({fit['source']}), ALS {als_fit_s:.1f} s\n"
        f"first after load (ms) p50 {h['p50_ms']:7.2f}  p90 {h['p90_ms']:7.2f}  p99 {h['p99_ms']:7.2f}  mean {h['mean_ms']:7.2f}\n"
        f"  + contributions  p50 {c['p50_ms']:7.2f}  p90 {c['p90_ms']:7.2f}  p99 {c['p99_ms']:7.2f}  mean {c['mean_ms']:7.2f}\n"
        f"  nothing memoised p50 {m['p50_ms']:7.2f}  p90 {m['p90_ms']:7.2f}  p99 {m['p99_ms']:7.2f}  mean {m['mean_ms']:7.2f}\n"
        f"  repeat request   p50 {r['p50_ms']:7.2f}  p90 {r['p90_ms']:7.2f}  p99 {r['p99_ms']:7.2f}  mean {r['mean_ms']:7.2f}\n"
        f"  after an event   p50 {e['p50_ms']:7.2f}  p90 {e['p90_ms']:7.2f}  p99 {e['p99_ms']:7.2f}  mean {e['mean_ms']:7.2f}\n"
        f"  observe (1 event) p50 {o['p50_ms']:6.2f}  p90 {o['p90_ms']:7.2f}  p99 {o['p99_ms']:7.2f}  mean {o['mean_ms']:7.2f}\n"
        f"  ALS              p50 {a['p50_ms']:7.2f}  p90 {a['p90_ms']:7.2f}  p99 {a['p99_ms']:7.2f}  mean {a['mean_ms']:7.2f}\n"
        f"  ratio hybrid/ALS p50 {ratios['p50_latency']:7.1f}x p99 {ratios['p99_latency']:7.1f}x\n"
        f"batch (users/s)    hybrid {hybrid_ups:9.0f}  ALS {als_ups:9.0f}  ALS/hybrid {ratios['batch_throughput_als_over_hybrid']:.1f}x"
        f" (ALS, the faster of {batch['als_users_per_s']:.0f} on {args.threads} thread(s)"
        f" and {batch.get('als_one_thread_users_per_s', batch['als_users_per_s']):.0f} on one)\n"
        f"  repeat requests  hybrid {batch['hybrid_repeat_users_per_s']:9.0f}  ALS/hybrid {ratios['repeat_batch_throughput_als_over_hybrid']:.1f}x\n"
        f"  nothing memoised hybrid {batch['hybrid_nothing_memoised_users_per_s']:9.0f}  ALS/hybrid {ratios['nothing_memoised_batch_throughput_als_over_hybrid']:.1f}x\n"
        f"  one worker       hybrid {batch['hybrid_one_worker_users_per_s']:9.0f}  ALS/hybrid {ratios['one_worker_batch_throughput_als_over_hybrid']:.1f}x\n"
        f"wrote {args.out / 'results.json'} and {args.out / 'latency.png'}"
    )
    return result


if __name__ == "__main__":
    main()
