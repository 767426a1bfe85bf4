"""The ``driftrank`` command line: ``bench``, ``describe``, ``pipelines``, ``demo`` (and ``replay``/``ope``)."""

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
    )
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
    from driftrank.bench import available

    print("\n".join(available()))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from driftrank.demo import run_demo

    return run_demo(args.dataset, args.data_home, quick=args.quick)


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
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=_cmd_bench)

    d = sub.add_parser("describe", help="print counts, time span and density of a data set")
    _add_data_args(d)
    d.set_defaults(func=_cmd_describe)

    p = sub.add_parser("pipelines", help="list the pipeline names bench and replay accept")
    p.set_defaults(func=_cmd_pipelines)

    m = sub.add_parser("demo", help="fit and rank on a real data set (synthetic data when none is found)")
    m.add_argument("--dataset", default="ml-100k", help="data set to use (default ml-100k)")
    m.add_argument("--data-home", help="folder holding the data set")
    m.add_argument("--quick", action="store_true", help="smaller models, for a fast look")
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
