"""``driftrank demo``: fit the engine on a real data set, measure it once, show what it does.

The default run fits one engine (each user's last event held out), compares it with popularity
and ALS on those held-out events, explains two users' rankings and ranks from a text. It takes
about two minutes on two CPU cores for MovieLens-100K. ``--quick`` uses the faster
configuration (50 candidates, a one-layer re-ranker); ``--full`` runs the benchmark of six
pipelines instead (about 20 minutes).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

log = logging.getLogger(__name__)

# Queries for the cold-start-from-text example, by data set kind.
_MOVIE_QUERY = "space adventure with aliens and starships"
_SYNTHETIC_QUERY = "haunted ghost nightmare"


def _load(dataset: str, data_home: str | None) -> tuple[Any, bool]:
    from driftrank.data import load_dataset, make_drifting
    from driftrank.errors import DataNotFoundError

    try:
        return load_dataset(dataset, data_home), True
    except DataNotFoundError as exc:
        print(f"NOTE: {exc}")
        print("NOTE: running the demo on driftrank's synthetic drifting-interests data instead.\n")
        return make_drifting(), False


def demo_config(quick: bool, real: bool, *, progress: bool = True) -> Any:
    """The engine configuration the demo uses: the defaults, or with ``quick`` the faster
    configuration of ``benchmarks/configs/engine-fast.toml`` (50 candidates, a one-layer
    re-ranker of width 32)."""
    from driftrank.engine import EncoderConfig, EngineConfig

    kw: dict[str, Any] = {"progress": progress}
    if not real:
        kw["encoder"] = EncoderConfig(kind="hashing")
    if quick:
        kw["n_candidates"] = 50
        kw["reranker"] = {"dim": 32, "n_layers": 1}
    return EngineConfig(**kw)


def run_demo(
    dataset: str = "ml-100k", data_home: str | None = None, *, quick: bool = False, full: bool = False
) -> int:
    """Fit, measure against two baselines, explain two users, rank from a text; or with
    ``full`` the six-pipeline benchmark."""
    data, real = _load(dataset, data_home)
    if full:
        return _full_benchmark(data, real, quick)
    started = time.perf_counter()
    _describe(data, real)

    from driftrank._progress import stage_summary
    from driftrank.bench import PipelineSpec, build_pipeline
    from driftrank.engine._ranker import EngineRanker
    from driftrank.eval import evaluate, leave_one_out, paired_bootstrap

    split = leave_one_out(data)
    cfg = demo_config(quick, real)
    print(
        f"\n[1/4] Fitting the engine ({'faster configuration' if quick else 'default configuration'}) "
        f"on every event but each user's last, which is kept to test it ..."
    )
    ranker = EngineRanker(cfg)
    ours = evaluate(ranker, split, stage="test", ks=(10,))
    engine = ranker._e()
    seconds = engine.fit_report["seconds"]
    print(f"      fitted in {ours.fit_seconds:.0f} s (" + stage_summary(seconds, digits=0) + ")")

    print(f"\n[2/4] Predicting each of the {len(split.test)} users' held-out last event (whole catalog):")
    rows = [("popularity", "pop"), ("ALS (implicit)", "als")]
    scores: dict[str, Any] = {}
    for label, kind in rows:
        scores[label] = evaluate(build_pipeline(PipelineSpec(kind, kind), seed=cfg.seed), split, ks=(10,))
    scores["driftrank"] = ours
    print(f"      {'':<16} {'NDCG@10':>8} {'HR@10':>7}")
    for label, res in scores.items():
        print(f"      {label:<16} {res.metrics['NDCG@10']:>8.4f} {res.metrics['HR@10']:>7.4f}")
    for label in ("popularity", "ALS (implicit)"):
        c = paired_bootstrap(scores[label].per_user["NDCG@10"], ours.per_user["NDCG@10"], seed=cfg.seed)
        print(
            f"      driftrank - {label}: {c.diff:+.4f} NDCG@10 "
            f"(95% CI [{c.ci_low:+.4f}, {c.ci_high:+.4f}], p = {c.p_value:.3f}, paired bootstrap by user)"
        )

    print("\n[3/4] Two users: how their interests moved, and why these items")
    _show_users(engine, data, split)

    query = _MOVIE_QUERY if real else _SYNTHETIC_QUERY
    print(f"\n[4/4] A new user who only says: {query!r}")
    for j, title in enumerate(engine.rank(text=query, k=8).titles):
        print(f"      {j + 1:>2}. {title}")

    print(
        f"\nDone in {time.perf_counter() - started:.0f} s. More: `driftrank demo --full` "
        "(six pipelines benchmarked, about 20 min), `make bench`, README.md."
    )
    return 0


def _describe(data: Any, real: bool) -> None:
    d = data.describe()
    span = ""
    if d["n_interactions"]:
        first = dt.datetime.fromtimestamp(d["first_timestamp"], tz=dt.UTC).date()
        last = dt.datetime.fromtimestamp(d["last_timestamp"], tz=dt.UTC).date()
        span = f", {first} .. {last}"
    print(
        f"driftrank demo on {d['name']} ({'real' if real else 'synthetic'} data): {d['n_users']:,} users, "
        f"{d['n_items']:,} items, {d['n_interactions']:,} events{span}"
    )


def _show_users(engine: Any, data: Any, split: Any) -> None:
    """A user with a typical history and the one with the longest, each explained."""
    import numpy as np

    lengths = split.train_valid.sequences.lengths()
    picks = [int(np.argsort(lengths)[len(lengths) // 2]), int(np.argmax(lengths))]
    held = {int(u): int(i) for u, i in zip(split.test.users, split.test.items, strict=True)}
    titles = data.items["title"].to_list()
    for u in picks:
        uid = data.user_ids.ids[u]
        uid = uid.item() if hasattr(uid, "item") else uid
        hist = engine.history(uid)
        print(f"\n=== user {uid}: {hist.height} events; the last five:")
        for title in hist["title"].to_list()[-5:]:
            print(f"      {title}")
        ex = engine.explain(uid, k=5)
        print(ex)
        if u in held:
            target = held[u]
            full = engine.rank(uid, k=min(100, engine.n_items))
            where = np.flatnonzero(full.items == target)
            place = f"ranked #{int(where[0]) + 1}" if len(where) else "not in the top 100"
            print(f"  held-out next event: {titles[target]} ({place})")


def _full_benchmark(data: Any, real: bool, quick: bool) -> int:
    """The six-pipeline benchmark (what ``driftrank demo`` did before it was made quick)."""
    from driftrank.bench import PipelineSpec, run_benchmark

    print(f"data: {data!r} ({'real' if real else 'synthetic'})")
    cfg = demo_config(quick, real, progress=False)
    params = {k: v for k, v in cfg.to_dict().items() if k != "fusion"}
    specs = [
        PipelineSpec("pop", "pop"),
        PipelineSpec("als", "als"),
        PipelineSpec("covisit", "covisit"),
        PipelineSpec("sasrec", "sasrec", {"max_epochs": 3} if quick else {}),
        PipelineSpec("hybrid", "hybrid", params),
        # served by the hybrid's fitted engine (same components), with the fusion layer off
        PipelineSpec("rerank", "rerank", params),
    ]
    print("\nBenchmark (leave-one-out by time, full ranking, test step) ...")
    result = run_benchmark(data, specs, latency_users=0, progress=True, compare_to="hybrid")
    print()
    print(result.table())
    for c in result.comparisons:  # b - a with a = hybrid: flip the sign to read "hybrid minus b"
        print(
            f"hybrid vs {c['b']} {c['metric']}: {-c['diff']:+.4f} "
            f"(95% CI [{-c['ci_high']:+.4f}, {-c['ci_low']:+.4f}], p={c['p_value']:.4f})"
        )
    return 0
