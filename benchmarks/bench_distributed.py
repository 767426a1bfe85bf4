"""Rank every user of a saved engine: one process against Ray Data with 1 and 2 workers.

    DRIFTRANK_DATA_HOME=../shared/data .venv/bin/python benchmarks/bench_distributed.py \\
        --dataset ml-1m --out benchmarks/results/distributed

Fits the default engine on ``--dataset`` and saves it (or reuses ``--model``); ``--max-epochs``
caps the re-ranker's training epochs to keep the fit short: the ranking cost depends on the
architecture, not on how long it trained. Then each configuration runs in a fresh process, one
after the other, and ranks every user (top ``--k``, ``--chunk-size`` users per call) into
Parquet:

* ``single``: :func:`driftrank.engine.write_rankings` in one process, one torch/BLAS thread;
* ``ray-1``, ``ray-2``: :func:`driftrank.distributed.rank_all` on a local Ray with 1 or 2 actors
  (one CPU and one thread each).

Records wall time (Ray's includes starting Ray and loading the model in every actor), users/s
on the wall clock and steady (users over the busiest actor's ranking seconds), each actor's own
rate, the start-up (the wall time that was not ranking: Ray, actors, model loads, writing; for
the single process, loading the model), the peak memory of the driver and of each actor, and checks that
every configuration wrote the same rows. Writes ``results.json``, ``results.md`` and
``distributed.png`` to ``--out``. ``--repeats`` runs each configuration that many times (median
reported, all kept).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONFIGS = ("single", "ray-1", "ray-2")


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(args: argparse.Namespace) -> None:
    """One measurement in this fresh process; prints a JSON line."""
    import torch

    torch.set_num_threads(1)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    out = Path(args.child_out)
    result: dict[str, Any] = {"config": args.child}
    if args.child == "single":
        from driftrank.engine import Engine, write_rankings

        t = time.perf_counter()
        engine = Engine.load(args.model)
        result["load_seconds"] = time.perf_counter() - t
        users = engine.known_users()[: args.users] if args.users else None
        s = write_rankings(engine, out, users, k=args.k, chunk_size=args.chunk_size)
        result.update(
            users=s.users, rows=s.rows, rank_seconds=s.seconds, seconds=s.seconds + result["load_seconds"]
        )
        result["steady_seconds"] = s.seconds
        result["driver_peak_mb"] = _maxrss_mb()
        result["actor_peak_mb"] = []
    else:
        import ray

        from driftrank.distributed import RankChunks, rank_all
        from driftrank.engine import Engine

        workers = int(args.child.split("-")[1])
        rss_dir = Path(tempfile.mkdtemp(prefix="actor-rss-"))

        class MeasuredChunks(RankChunks):
            """Records its process's peak memory, users ranked and seconds busy after each chunk
            (this script's class is sent by value to the Ray workers)."""

            users_done = 0
            busy = 0.0

            def __call__(self, batch: Any) -> Any:
                t = time.perf_counter()
                table = super().__call__(batch)
                self.busy += time.perf_counter() - t
                self.users_done += sum(len(u) for u in batch.column("users").to_pylist())
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
                record = {"peak_mb": peak, "users": self.users_done, "busy": self.busy}
                (rss_dir / f"{os.getpid()}.json").write_text(json.dumps(record), encoding="utf-8")
                return table

        users = Engine.load(args.model).known_users()
        users = users[: args.users] if args.users else users
        t = time.perf_counter()
        ray.init(num_cpus=workers + 1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        result["ray_init_seconds"] = time.perf_counter() - t
        t = time.perf_counter()
        s = rank_all(
            args.model,
            out,
            users,
            k=args.k,
            workers=workers,
            chunk_size=args.chunk_size,
            actor=MeasuredChunks,
        )
        result["rank_seconds"] = time.perf_counter() - t
        ray.shutdown()
        actors = [json.loads(p.read_text()) for p in rss_dir.glob("*.json")]
        result.update(users=s.users, rows=s.rows, seconds=result["rank_seconds"] + result["ray_init_seconds"])
        # The steady rate: users over the busiest actor's ranking time (the actors run side by
        # side); the rest of the wall time is start-up (Ray, actors, model loads) and writing.
        result["steady_seconds"] = max((a["busy"] for a in actors), default=result["rank_seconds"])
        result["startup_seconds"] = result["seconds"] - result["steady_seconds"]
        result["actor_users_per_s"] = [a["users"] / a["busy"] for a in actors if a["busy"] > 0]
        result["driver_peak_mb"] = _maxrss_mb()
        result["actor_peak_mb"] = sorted(a["peak_mb"] for a in actors)
    print("RESULT " + json.dumps(result), flush=True)


def fit_model(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    import dataclasses

    from driftrank.data import load_dataset
    from driftrank.engine import Engine, EngineConfig

    data = load_dataset(args.dataset, args.data_home)
    config = EngineConfig(progress=True)
    config = dataclasses.replace(
        config, reranker=dataclasses.replace(config.reranker, max_epochs=args.max_epochs)
    )
    t = time.perf_counter()
    engine = Engine(config).fit(data)
    fit_seconds = time.perf_counter() - t
    engine.save(path)
    return {"dataset": repr(data), "fit_seconds": fit_seconds, "max_epochs": args.max_epochs}


def same_rows(a: Path, b: Path) -> bool:
    import polars as pl

    def read(p: Path) -> pl.DataFrame:
        return pl.read_parquet(sorted(p.glob("*.parquet"))).sort("user_id", "rank")

    x, y = read(a), read(b)
    return x.drop("score").equals(y.drop("score")) and bool((x["score"] - y["score"]).abs().max() <= 1e-5)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--data-home")
    p.add_argument("--model", help="a saved model to reuse (fitted and saved here when missing)")
    p.add_argument("--max-epochs", type=int, default=3)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--chunk-size", type=int, default=512)
    p.add_argument("--users", type=int, default=0, help="rank only the first N users (0: all)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/distributed")
    p.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return 0

    from driftrank.bench._harness import machine_info

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = Path(args.model) if args.model else out / "model"
    fit = {"reused": str(model)}
    if not (model / "manifest.json").is_file():
        fit = fit_model(args, model)
    work = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in CONFIGS}
    for r in range(args.repeats):
        for config in CONFIGS:
            cmd = [
                sys.executable, __file__, "--child", config, "--child-out", str(work / f"{config}-{r}"),
                "--model", str(model), "--k", str(args.k), "--chunk-size", str(args.chunk_size),
                "--users", str(args.users),
            ]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                sys.stderr.write(proc.stderr[-4000:])
                raise SystemExit(f"{config} failed (exit {proc.returncode})")
            res = json.loads(line[len("RESULT ") :])
            res["same_rows_as_single"] = same_rows(work / f"{config}-{r}", work / f"single-{r}")
            runs[config].append(res)
            print(f"{config} run {r + 1}: {res['users'] / res['seconds']:,.0f} users/s", flush=True)

    summary = {}
    for config, rs in runs.items():

        def med(key: str, rs: list[dict[str, Any]] = rs) -> float:
            return statistics.median(x[key] for x in rs if key in x)

        summary[config] = {
            "users": rs[0]["users"],
            "rows": rs[0]["rows"],
            "seconds": med("seconds"),
            "users_per_s": rs[0]["users"] / med("seconds"),
            "users_per_s_after_startup": rs[0]["users"] / med("steady_seconds"),
            "startup_seconds": med("startup_seconds") if config != "single" else med("load_seconds"),
            "per_worker_users_per_s": statistics.median(
                statistics.fmean(x.get("actor_users_per_s") or [x["users"] / x["steady_seconds"]]) for x in rs
            ),
            "driver_peak_mb": med("driver_peak_mb"),
            "actor_peak_mb": max((max(x["actor_peak_mb"], default=0.0) for x in rs), default=0.0),
            "same_rows_as_single": all(x["same_rows_as_single"] for x in rs),
        }
    result = {
        "command": " ".join(sys.argv),
        "machine": machine_info(),
        "model": fit,
        "k": args.k,
        "chunk_size": args.chunk_size,
        "repeats": args.repeats,
        "summary": summary,
        "runs": runs,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    md = [
        f"# Ranking every user: one process vs Ray ({fit.get('dataset', model)})",
        "",
        f"k = {args.k}, {args.chunk_size} users per call, {args.repeats} run(s) each (median), "
        f"{result['machine'].get('cpu_count')} CPUs.",
        "",
        "| configuration | users | wall s | users/s | steady users/s | per worker users/s | start-up s | driver peak MB | actor peak MB | same rows |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for config, s in summary.items():
        md.append(
            f"| {config} | {s['users']:,} | {s['seconds']:.1f} | {s['users_per_s']:,.0f} | "
            f"{s['users_per_s_after_startup']:,.0f} | {s['per_worker_users_per_s']:,.0f} | {s['startup_seconds']:.1f} | {s['driver_peak_mb']:,.0f} | "
            f"{s['actor_peak_mb']:,.0f} | {s['same_rows_as_single']} |"
        )
    (out / "results.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    plot(summary, out / "distributed.png")
    print("\n".join(md))
    return 0


def plot(summary: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    x = range(len(names))
    a.bar([i - 0.2 for i in x], [summary[n]["users_per_s"] for n in names], 0.4, label="wall clock")
    a.bar(
        [i + 0.2 for i in x],
        [summary[n]["users_per_s_after_startup"] for n in names],
        0.4,
        label="after start-up",
    )
    a.set_xticks(list(x), names)
    a.set_ylabel("users ranked per second")
    a.legend(fontsize=8)
    b.bar([i - 0.2 for i in x], [summary[n]["driver_peak_mb"] for n in names], 0.4, label="driver")
    b.bar([i + 0.2 for i in x], [summary[n]["actor_peak_mb"] for n in names], 0.4, label="each Ray actor")
    b.set_xticks(list(x), names)
    b.set_ylabel("peak memory (MB)")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
