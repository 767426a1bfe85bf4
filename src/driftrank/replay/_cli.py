"""``driftrank replay`` and ``driftrank ope``: argument parsers, the pipeline registry, runners.

The main CLI calls :func:`add_subparsers` with its subparsers object; each subcommand sets
``func`` to its runner (``run_replay`` / ``run_ope``, taking the parsed ``argparse.Namespace``
and returning an exit code). ``python -m driftrank.replay._cli`` runs them on their own.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from driftrank._atomic import write_text_atomic
from driftrank.errors import ConfigError, DriftrankError
from driftrank.replay._online import Configuration, OnlineRanker, StaticOnline

__all__ = [
    "PIPELINES",
    "add_subparsers",
    "known_pipelines",
    "main",
    "register_pipeline",
    "resolve_configuration",
    "run_ope",
    "run_replay",
]

PipelineFactory = Callable[[str, Mapping[str, Any]], Configuration]
"""``factory(name, params) -> Configuration``: ``params`` come from a config file's ``[params]``
table (empty for a bare name)."""


def _pop(name: str, params: Mapping[str, Any], default_half_life: float | None) -> Configuration:
    from driftrank.retrieval import PopularityConfig, PopularityRanker

    unknown = sorted(set(params) - {"half_life_days"})
    if unknown:
        raise ConfigError(f"pipeline {name!r}: unknown param(s) {unknown}; known: ['half_life_days']")
    cfg = PopularityConfig(half_life_days=params.get("half_life_days", default_half_life))
    # PopularityRanker updates its counts in observe: an OnlineRanker as it is.
    return Configuration(name, lambda seed: PopularityRanker(cfg))


PIPELINES: dict[str, PipelineFactory] = {
    # Counts of every event so far, updated as events arrive.
    "pop": lambda name, params: _pop(name, params, None),
    # Recency-weighted counts: an event loses half its weight in 30 days (as in `driftrank bench`).
    "pop-recent": lambda name, params: _pop(name, params, 30.0),
}
"""Replay's own pipeline kinds; any other kind is looked up in the benchmark's registry
(``driftrank.bench``), so every pipeline ``driftrank bench`` knows can be replayed."""


def register_pipeline(name: str, factory: PipelineFactory, *, replace: bool = False) -> None:
    """Make ``name`` usable in ``driftrank replay`` (and as ``kind = ...`` in config files)."""
    if not name or not isinstance(name, str):
        raise ConfigError(f"pipeline name must be a non-empty string, got {name!r}")
    if name in PIPELINES and not replace:
        raise ConfigError(f"pipeline {name!r} is already registered; pass replace=True to override it")
    PIPELINES[name] = factory


def _from_bench(name: str, kind: str, params: Mapping[str, Any]) -> Configuration | None:
    """A Configuration from the benchmark's pipeline registry, or ``None`` if it lacks ``kind``."""
    try:
        from driftrank.bench._pipelines import PipelineSpec, available, build_pipeline
    except ImportError:
        return None
    if kind not in available():
        return None
    spec = PipelineSpec(name, kind, dict(params))

    def factory(seed: int) -> OnlineRanker:
        model = build_pipeline(spec, seed)
        # A ranker without observe learns about new events only at refits (refit_every).
        return model if isinstance(model, OnlineRanker) else StaticOnline(model)

    return Configuration(name, factory)


def known_pipelines() -> list[str]:
    """Every pipeline kind the replay accepts (its own and the benchmark's)."""
    names = set(PIPELINES)
    try:
        from driftrank.bench._pipelines import available

        names.update(available())
    except ImportError:
        pass
    return sorted(names)


def _build(name: str, kind: str, params: Mapping[str, Any]) -> Configuration:
    if kind in PIPELINES:
        return PIPELINES[kind](name, params)
    found = _from_bench(name, kind, params)
    if found is None:
        raise ConfigError(f"unknown pipeline {kind!r}: give one of {known_pipelines()} or a .toml file")
    return found


def resolve_configuration(spec: str) -> Configuration:
    """A :class:`Configuration` from a pipeline name, or a TOML file in the format that
    ``driftrank bench`` reads too::

        name = "pop-3d"           # optional, default: the kind
        kind = "pop-recent"       # a registered pipeline kind
        [params]
        half_life_days = 3.0
    """
    path = Path(spec)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise ConfigError(f"configuration file not found: {path}")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not a valid TOML file: {e}") from None
        kind = data.get("kind")
        if not isinstance(kind, str):
            raise ConfigError(f"{path}: needs kind = one of {known_pipelines()}, got {kind!r}")
        params = data.get("params", {})
        if not isinstance(params, dict):
            raise ConfigError(f"{path}: [params] must be a table, got {type(params).__name__}")
        extra = sorted(set(data) - {"name", "kind", "params"})
        if extra:
            raise ConfigError(f"{path}: unknown key(s) {extra}; expected name, kind, [params]")
        return _build(str(data.get("name", kind)), kind, params)
    return _build(spec, spec, {})


# ---------------------------------------------------------------------- parsers
def add_subparsers(subparsers: Any) -> None:
    """Register ``replay`` and ``ope`` on an ``argparse`` subparsers object."""
    r = subparsers.add_parser(
        "replay",
        help="chronological offline A/B replay of two pipelines on an interaction log",
        description=(
            "Fit pipelines A and B on the events before a start time, then walk forward through "
            "the log in windows: each pipeline ranks for every event's user using only the past, "
            "then observes the events. Reports HR/NDCG/MRR@k per window for A and B with "
            "bootstrap CIs, the paired difference B - A, coverage, novelty and timing; writes "
            "report.json and replay.png to --out."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    r.add_argument(
        "a", help=f"pipeline A: a registered name ({', '.join(sorted(PIPELINES))}) or a .toml file"
    )
    r.add_argument("b", help="pipeline B (same forms as A); differences are B - A")
    r.add_argument(
        "--dataset", default="ml-100k", help="named data set (ml-100k, ml-latest-small, ml-1m, synthetic)"
    )
    r.add_argument("--interactions", help="a file of interactions to replay instead of --dataset")
    r.add_argument("--data-home", help="folder holding the data sets (default: $DRIFTRANK_DATA_HOME)")
    start = r.add_mutually_exclusive_group()
    start.add_argument(
        "--start-fraction", type=float, default=0.8, help="start at this quantile of events in time"
    )
    start.add_argument("--start-time", type=float, help="start at this unix time instead")
    win = r.add_mutually_exclusive_group()
    win.add_argument("--window-events", type=int, default=1000, help="events per window")
    win.add_argument("--window-days", type=float, help="windows of this many days instead")
    r.add_argument("-k", "--k", type=int, default=10, help="list length")
    r.add_argument(
        "--update",
        choices=("window", "event"),
        default="window",
        help="observe once per window (batch deployment) or after every event (online)",
    )
    r.add_argument("--refit-every", type=int, help="refit both pipelines from scratch every N windows")
    r.add_argument("--max-windows", type=int, help="stop after N windows")
    r.add_argument(
        "--windows",
        help="score only these window indices, e.g. '3' or '0,5,6' (earlier ones are only observed)",
    )
    r.add_argument(
        "--list-reuse",
        action="store_true",
        help="rank each user once per window (fast on session-heavy logs)",
    )
    r.add_argument("--keep-seen", action="store_true", help="do not exclude items the user has already seen")
    r.add_argument(
        "--ci-unit", choices=("event", "user"), default="event", help="resampling unit of the overall CI"
    )
    r.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    r.add_argument("--level", type=float, default=0.95, help="confidence level")
    r.add_argument("--seed", type=int, default=0, help="seed for the pipelines and the bootstrap")
    r.add_argument("--out", default="replay-results", help="output folder")
    r.add_argument("--per-event", action="store_true", help="also write per-event metric values to the JSON")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=run_replay)

    o = subparsers.add_parser(
        "ope",
        help="off-policy evaluation on the Open Bandit Dataset (IPS, SNIPS, DR, rejection replay)",
        description=(
            "Estimate policies' click rates from logged bandit feedback with inverse propensity "
            "scoring, self-normalised IPS, doubly robust and (uniform logs) rejection replay, with "
            "confidence intervals. Validation on the Open Bandit Dataset: the Bernoulli Thompson "
            "sampling policy's click rate estimated from the uniform-random log, compared with its "
            "own log; plus a logistic recommender's policies. Prints a table; writes ope.json and "
            "ope.png to --out."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    o.add_argument("--data-home", help="folder holding obd/ (default: $DRIFTRANK_DATA_HOME)")
    o.add_argument(
        "--targets",
        default="bts,bts-daily,uniform,logistic-softmax,logistic-top3",
        help="comma-separated target policies",
    )
    o.add_argument("--ci", choices=("normal", "bootstrap"), default="normal", help="interval method")
    o.add_argument("--level", type=float, default=0.95, help="confidence level")
    o.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (with --ci bootstrap)")
    o.add_argument("--dr-model", choices=("mean", "logistic"), default="mean", help="reward model of DR")
    o.add_argument(
        "--temperature", type=float, default=0.5, help="softmax temperature of the recommender policy"
    )
    o.add_argument("--epsilon", type=float, default=0.1, help="exploration of the recommender's top-3 policy")
    o.add_argument("--seed", type=int, default=0, help="seed for folds, rejection draws and the split")
    o.add_argument("--out", default="ope-results", help="output folder")
    o.set_defaults(func=run_ope)


# ---------------------------------------------------------------------- runners
def run_replay(args: argparse.Namespace) -> int:
    """Run ``driftrank replay``; returns the exit code."""
    from driftrank.replay._replay import ReplayConfig, replay

    a = resolve_configuration(args.a)
    b = resolve_configuration(args.b)
    if args.interactions:
        from driftrank.data import load_interactions

        ds = load_interactions(args.interactions)
    else:
        from driftrank.data import load_dataset

        ds = load_dataset(args.dataset, args.data_home, download=False)
    cfg = ReplayConfig(
        start_fraction=None if args.start_time is not None else args.start_fraction,
        start_time=args.start_time,
        window_events=None if args.window_days is not None else args.window_events,
        window_seconds=args.window_days * 86400.0 if args.window_days is not None else None,
        k=args.k,
        update=args.update,
        list_reuse=args.list_reuse,
        refit_every=args.refit_every,
        max_windows=args.max_windows,
        exclude_seen=not args.keep_seen,
        n_boot=args.n_boot,
        level=args.level,
        ci_unit=args.ci_unit,
        seed=args.seed,
    )
    windows = None
    if args.windows:
        try:
            windows = [int(x) for x in args.windows.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--windows must be comma-separated integers, got {args.windows!r}") from None
    report = replay(a, b, ds, cfg, windows=windows, progress=not args.no_progress)
    out = Path(args.out)
    report.to_json(out / "report.json", per_event=args.per_event)
    report.plot(out / "replay.png")
    print(report.summary())
    print(f"wrote {out / 'report.json'} and {out / 'replay.png'}")
    return 0


def run_ope(args: argparse.Namespace) -> int:
    """Run ``driftrank ope``; returns the exit code."""
    from driftrank.replay._obd_study import run_obd_study

    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    study = run_obd_study(
        args.data_home,
        targets=targets,
        level=args.level,
        ci=args.ci,
        n_boot=args.n_boot,
        seed=args.seed,
        dr_model=args.dr_model,
        temperature=args.temperature,
        epsilon=args.epsilon,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "ope.json", json.dumps(study.to_dict(), indent=2, allow_nan=False))
    study.plot(out / "ope.png")
    print(study.table())
    print(f"wrote {out / 'ope.json'} and {out / 'ope.png'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m driftrank.replay._cli {replay,ope} ...``."""
    parser = argparse.ArgumentParser(
        prog="driftrank", description="offline A/B replay and off-policy evaluation"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_subparsers(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except DriftrankError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
