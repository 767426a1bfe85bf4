"""The ``driftrank`` command line: ``demo``, ``fit``, ``rank``, ``bench``, ``describe``, ``pipelines``, ``replay``, ``ope``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("driftrank")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (a named data set, or your own files)")
    g.add_argument("--dataset", help="ml-100k, ml-latest-small, ml-1m or synthetic")
    g.add_argument(
        "--data-home",
        help="folder holding the data set (default: $DRIFTRANK_DATA_HOME, the cache, then download)",
    )
    g.add_argument("--interactions", help="your interactions file (CSV/TSV/Parquet) instead of --dataset")
    g.add_argument("--items", help="item table for --interactions (ids, titles, genres, ...)")
    g.add_argument("--users", help="user table for --interactions (ids + features)")
    g.add_argument("--columns", help="column mapping, e.g. 'user=uid,item=sku,time=ts,item_text=title+plot'")


def _add_ray_argument(p: argparse.ArgumentParser, help: str) -> None:
    """``--ray`` alone starts a local Ray (``"local"``); ``--ray ADDRESS`` joins a cluster."""
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS", help=help)


def load_from_args(args: argparse.Namespace) -> Any:
    """The data set named by ``--dataset`` or read from ``--interactions`` files."""
    from driftrank.data import load_dataset, load_interactions

    if args.interactions:
        return load_interactions(args.interactions, args.items, args.users, columns=args.columns)
    if not args.dataset:
        raise SystemExit("error: give --dataset NAME or --interactions FILE")
    return load_dataset(args.dataset, args.data_home)


def _cmd_bench(args: argparse.Namespace) -> int:
    from driftrank.bench import PipelineSpec, run_benchmark

    dataset = load_from_args(args)
    specs = [PipelineSpec.parse(p) for p in (args.pipeline or ["pop"])]
    result = run_benchmark(
        dataset,
        specs,
        protocol=args.protocol,
        seed=args.seed,
        out=args.out,
        save_predictions=args.save_predictions,
        latency_users=args.latency_users,
        compare_to=args.compare_to,
        progress=not args.quiet,
        ablation=args.ablation,
        ray=args.ray,
        ray_workers=args.ray_workers,
    )
    for warning in result.warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    print(result.table())
    if result.comparisons:
        print()
        for c in result.comparisons:
            print(
                f"{c['b']} vs {c['a']} {c['metric']}: {c['diff']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] p={c['p_value']:.4f}"
            )
    if args.out:
        print(f"\nresults written to {Path(args.out) / 'results.json'}")
    return 0


def _cmd_describe(args: argparse.Namespace) -> int:
    import json

    print(json.dumps(load_from_args(args).describe(), indent=2))
    return 0


def _cmd_pipelines(args: argparse.Namespace) -> int:
    from driftrank.bench._pipelines import available, describe

    names = available()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {describe(name)}")
    print("\nUse a name with `driftrank bench --pipeline NAME`, or a TOML file (name, kind, [params]).")
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    import dataclasses

    from driftrank._progress import stage_summary
    from driftrank.engine import Engine, EngineConfig

    config = EngineConfig.from_toml(args.config) if args.config else EngineConfig()
    config = dataclasses.replace(config, progress=not args.quiet)
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)
    dataset = load_from_args(args)
    print(f"fitting on {dataset!r} ...", file=sys.stderr)
    engine = Engine(config).fit(dataset)
    path = engine.save(args.out)
    seconds = engine.fit_report["seconds"]
    stages = stage_summary(seconds)
    print(
        f"fitted {engine.n_users:,} users x {engine.n_items:,} items in {seconds['total']:.1f} s ({stages})"
    )
    print(f"saved to {path}")
    return 0


def _cmd_rank(args: argparse.Namespace) -> int:
    from driftrank.engine import Engine
    from driftrank.engine._export import read_user_ids, write_rankings

    engine = Engine.load(args.model)
    users = None if args.users in (None, "all") else read_user_ids(args.users, engine)
    common = {"k": args.k, "chunk_size": args.chunk_size, "contributions": args.explain}
    where = note = ""
    if args.ray is not None:
        from driftrank.distributed import rank_all

        del engine  # each Ray worker loads its own copy
        summary = rank_all(args.model, args.out, users, workers=args.workers, address=args.ray, **common)
        where, note = " on Ray", ", start-up included"
    else:
        summary = write_rankings(
            engine, args.out, users, workers=args.workers, progress=not args.quiet, **common
        )
    print(
        f"ranked {summary.users:,} users{where} into {summary.rows:,} rows in {summary.seconds:.1f} s "
        f"({summary.users_per_second:,.0f} users/s{note}); written to {summary.path}"
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from driftrank.demo import run_demo

    return run_demo(args.dataset, args.data_home, quick=args.quick, full=args.full)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``driftrank`` command."""
    parser = argparse.ArgumentParser(
        prog="driftrank", description="driftrank: a ranking engine that follows how interests drift over time"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser(
        "bench",
        help="benchmark pipelines on a data set with the leave-one-out protocol",
        description="Fit each pipeline, rank the full catalog for every test user, write results.json, results.md and plots.",
    )
    _add_data_args(b)
    b.add_argument(
        "--pipeline",
        action="append",
        help="pipeline name (see `driftrank pipelines`) or a TOML config file; repeat for several (default: pop)",
    )
    b.add_argument("--out", help="output folder for results.json, results.md, per_user.npz and PNG plots")
    b.add_argument(
        "--save-predictions", help="write the last pipeline's top-20 per test user as a user_id,items CSV"
    )
    b.add_argument(
        "--protocol",
        choices=["loo", "llamarec"],
        default="loo",
        help="loo: plain leave-one-out; llamarec: titled items, 5-core, then leave-one-out",
    )
    b.add_argument("--seed", type=int, default=0, help="seed for every stochastic part (default 0)")
    b.add_argument("--compare-to", help="pipeline the others are compared with (default: the first)")
    b.add_argument(
        "--latency-users",
        type=int,
        default=200,
        help="single-user rank calls timed per pipeline (default 200; 0 to skip)",
    )
    b.add_argument(
        "--ablation",
        action="store_true",
        help="for engine pipelines with a trained fusion layer, add the fusion ablation table "
        "(each signal removed, each alone, fusion methods) on the test step",
    )
    _add_ray_argument(
        b,
        "rank the test users of engine pipelines on Ray Data (a local Ray, or the cluster at ADDRESS); "
        "the metrics are the same",
    )
    b.add_argument("--ray-workers", type=int, default=2, help="Ray actors with --ray (default 2)")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=_cmd_bench)

    f = sub.add_parser(
        "fit",
        help="fit an engine on a data set and save it",
        description="Fit the engine (every stage, each user's last event held out to train the fusion "
        "layer, then taken in) and save it as a model folder for `driftrank rank` or Engine.load.",
    )
    _add_data_args(f)
    f.add_argument(
        "--config", help="engine settings as TOML (tables mirror EngineConfig; default: the defaults)"
    )
    f.add_argument("--seed", type=int, help="seed for every stochastic part (default: the config's)")
    f.add_argument(
        "--out", required=True, help="model folder to write (replaced atomically if it holds a model)"
    )
    f.add_argument("--quiet", action="store_true", help="no progress display")
    f.set_defaults(func=_cmd_fit)

    r = sub.add_parser(
        "rank",
        help="rank every user (or a list) of a saved model into Parquet or CSV",
        description="Load a saved model and write one row per (user, rank): user_id, rank, item_id, title, "
        "score (and each signal's contribution with --explain), chunk by chunk so that memory stays "
        "bounded. OUT ending in .csv gives one CSV file, anything else a folder of Parquet parts.",
    )
    r.add_argument("--model", required=True, help="model folder written by `driftrank fit` or Engine.save")
    r.add_argument("--users", default="all", help="'all' (default) or a file with one user id per line")
    r.add_argument("--k", type=int, default=100, help="items per user (default 100)")
    r.add_argument("--out", required=True, help="output: a folder of Parquet parts, or a .csv file")
    r.add_argument(
        "--workers",
        type=int,
        default=1,
        help="parallel ranking threads, or Ray actors with --ray (default 1)",
    )
    _add_ray_argument(
        r,
        "rank on Ray Data: a local Ray with --workers actors, or join the cluster at ADDRESS "
        "(the model and --out must be on a path every node shares; pip install 'driftrank[ray]')",
    )
    r.add_argument("--chunk-size", type=int, default=4096, help="users ranked and written at a time")
    r.add_argument("--explain", action="store_true", help="add each signal's contribution to the score")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_rank)

    d = sub.add_parser("describe", help="print counts, time span and density of a data set")
    _add_data_args(d)
    d.set_defaults(func=_cmd_describe)

    p = sub.add_parser("pipelines", help="list the pipelines bench and replay accept, one line each")
    p.set_defaults(func=_cmd_pipelines)

    m = sub.add_parser(
        "demo",
        help="fit, measure and rank on a real data set (about 2 min on ml-100k)",
        description="Fit the engine with each user's last event held out, compare it with popularity "
        "and ALS on those events, explain two users' rankings and rank from a text. Synthetic data "
        "when the data set cannot be found.",
    )
    m.add_argument("--dataset", default="ml-100k", help="data set to use (default ml-100k)")
    m.add_argument("--data-home", help="folder holding the data set")
    m.add_argument(
        "--quick", action="store_true", help="the faster configuration (50 candidates, a smaller re-ranker)"
    )
    m.add_argument(
        "--full", action="store_true", help="benchmark six pipelines instead (about 20 min on ml-100k)"
    )
    m.set_defaults(func=_cmd_demo)

    from driftrank.replay._cli import add_subparsers as add_replay

    add_replay(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``driftrank`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from driftrank.errors import DriftrankError

    try:
        return int(args.func(args) or 0)
    except DriftrankError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the command cannot read or write: say which, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
