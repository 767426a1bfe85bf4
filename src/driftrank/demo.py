"""``driftrank demo``: fit the hybrid engine on a real data set and show what it does."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def _load(dataset: str, data_home: str | None) -> tuple[Any, bool]:
    from driftrank.data import load_dataset, make_drifting
    from driftrank.errors import DataNotFoundError

    try:
        return load_dataset(dataset, data_home), True
    except DataNotFoundError as exc:
        print(f"NOTE: {exc}")
        print("NOTE: running the demo on driftrank's synthetic drifting-interests data instead.\n")
        return make_drifting(), False


def demo_config(quick: bool, real: bool) -> Any:
    """The engine configuration the demo uses (the defaults; smaller with ``quick``)."""
    from driftrank.engine import EncoderConfig, EngineConfig

    kw: dict[str, Any] = {"progress": False}
    if not real:
        kw["encoder"] = EncoderConfig(kind="hashing")
    if quick:  # a smoke run: the re-ranker stops after 3 epochs
        kw["reranker"] = {"max_epochs": 3}
    return EngineConfig(**kw)


def run_demo(dataset: str = "ml-100k", data_home: str | None = None, *, quick: bool = False) -> int:
    """Benchmark the hybrid against baselines, then show two users and a cold-start query."""
    import numpy as np

    from driftrank.bench import PipelineSpec, run_benchmark
    from driftrank.engine import Engine

    data, real = _load(dataset, data_home)
    print(f"data: {data!r} ({'real' if real else 'synthetic'})")
    cfg = demo_config(quick, real)
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
    print("\nBenchmark (leave-one-out by time, full ranking, test step; fitting takes a few minutes) ...")
    result = run_benchmark(
        data, specs, latency_users=0, progress=False, keep_rankers=True, compare_to="hybrid"
    )
    print()
    print(result.table())
    for c in result.comparisons:  # b - a with a = hybrid: flip the sign to read "hybrid minus b"
        print(
            f"hybrid vs {c['b']} {c['metric']}: {-c['diff']:+.4f} "
            f"(95% CI [{-c['ci_high']:+.4f}, {-c['ci_low']:+.4f}], p={c['p_value']:.4f})"
        )

    engine: Engine = result.rankers["hybrid"].engine
    print(
        f"\nThe hybrid engine (fitted on train+validation in {result.pipelines['hybrid']['fit_seconds']:.0f} s):"
    )
    lengths = data.sequences.lengths()
    picks = [int(np.argsort(lengths)[len(lengths) // 2]), int(np.argmax(lengths))]
    for u in picks:
        uid = data.user_ids.ids[u]
        uid = uid.item() if hasattr(uid, "item") else uid
        hist = engine.history(uid)
        print(f"\n=== user {uid}: {hist.height} events; the last five:")
        for title in hist["title"].to_list()[-5:]:
            print(f"    {title}")
        print(engine.explain(uid, k=10))
    query = "space operas and heist films" if real else "haunted ghost nightmare"
    print(f"\n=== cold start from a text: {query!r}")
    for j, title in enumerate(engine.rank(text=query, k=10).titles):
        print(f"  {j + 1:>2}. {title}")
    return 0
