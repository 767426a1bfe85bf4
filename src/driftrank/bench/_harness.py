"""The benchmark harness: pipelines × one data set under one protocol, with honest statistics."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from driftrank._atomic import atomic_path, write_text_atomic
from driftrank._machine import machine_info
from driftrank.bench._pipelines import PipelineSpec, build_pipeline
from driftrank.data import Dataset
from driftrank.eval import (
    EvalResult,
    Split,
    bootstrap_ci,
    evaluate,
    kcore,
    leave_one_out,
    paired_bootstrap,
    write_predictions,
)
from driftrank.types import Candidates, Ranking

log = logging.getLogger(__name__)

__all__ = ["BenchResult", "Protocol", "candidate_recall", "machine_info", "prepare_split", "run_benchmark"]

Protocol = Literal["loo", "llamarec"]
RECALL_NS = (50, 100, 200)
MAIN_METRICS = ("NDCG@10", "HR@10", "MRR@10", "NDCG@20", "HR@20", "MRR@20", "coverage@10")


def prepare_split(dataset: Dataset, protocol: Protocol = "loo") -> tuple[Dataset, Split]:
    """Apply a protocol's filtering, then split leave-one-out by time.

    ``"loo"``: no filtering. ``"llamarec"``: items without a title dropped, then 5-core
    (users and items with at least 5 interactions), as in the LlamaRec paper.
    """
    if protocol == "llamarec":
        titled = np.asarray([bool(t.strip()) for t in dataset.items["title"].to_list()])
        dataset = dataset.filter_rows(titled[dataset.item_index], name=dataset.name)
        dataset = kcore(dataset, 5, 5)
    elif protocol != "loo":
        raise ValueError(f"protocol must be 'loo' or 'llamarec', got {protocol!r}")
    return dataset, leave_one_out(dataset)


def candidate_recall(
    cands: Candidates | Ranking, targets: np.ndarray, ns: Sequence[int] = RECALL_NS
) -> dict[str, float]:
    """Share of users whose target is among their first N candidates, for each N.

    For :class:`Candidates`, rows are taken in their stored order (the merge order).
    """
    out: dict[str, float] = {}
    targets = np.asarray(targets)
    for n in ns:
        if isinstance(cands, Ranking):
            hit = (cands.items[:, :n] == targets[:, None]).any(axis=1)
        else:
            hit = np.array(
                [targets[j] in cands.items[cands.of(j)][:n] for j in range(len(cands))],
                dtype=bool,
            )
        out[str(n)] = float(hit.mean()) if len(hit) else 0.0
    return out


# Single-user latency percentiles recorded and plotted.
LATENCY_PERCENTILES = (50, 95, 99)
# Below this many test users a benchmark's numbers are noise (one hit moves HR@10 by 1/n).
MIN_RELIABLE_USERS = 100


@dataclass
class BenchResult:
    """Everything one benchmark run measured; ``to_json()`` is what ``results.json`` holds."""

    dataset: dict[str, Any]
    protocol: str
    seed: int
    pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=machine_info)
    per_user: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    latencies: dict[str, np.ndarray] = field(default_factory=dict)
    rankers: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict (per-user arrays are saved separately in ``per_user.npz``)."""
        return {
            "dataset": self.dataset,
            "protocol": self.protocol,
            "seed": self.seed,
            "machine": self.machine,
            "pipelines": self.pipelines,
            "comparisons": self.comparisons,
            "warnings": self.warnings,
        }

    def table(
        self, metrics: Sequence[str] = ("NDCG@10", "HR@10", "MRR@10", "NDCG@20", "HR@20", "coverage@10")
    ) -> str:
        """A markdown table: one row per pipeline, with 95% CIs on the first metric."""
        head = ["pipeline", *metrics, f"{metrics[0]} 95% CI", "fit s", "rank ms/user"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, res in self.pipelines.items():
            m = res["metrics"]
            ci = res.get("ci", {}).get(metrics[0], [float("nan"), float("nan")])
            n_users = max(1, res.get("n_users", 1))
            cells = [
                name,
                *[f"{m.get(x, float('nan')):.4f}" for x in metrics],
                f"[{ci[0]:.4f}, {ci[1]:.4f}]",
                f"{res['fit_seconds']:.1f}",
                f"{1000 * res['rank_seconds'] / n_users:.2f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def save(self, out: str | os.PathLike[str], *, plots: bool = True) -> Path:
        """Write ``results.json``, ``results.md``, ``per_user.npz`` and PNG plots into ``out``."""
        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        write_text_atomic(d / "results.json", json.dumps(self.to_json(), indent=2, default=_json_default))
        md = [f"# {self.dataset.get('name')} ({self.protocol})", ""]
        md += [f"> **Warning:** {w}" for w in self.warnings] + ([""] if self.warnings else [])
        md += [self.table(), ""]
        lat_rows = {k: v["latency_ms"] for k, v in self.pipelines.items() if "latency_ms" in v}
        if lat_rows:
            md += [
                "## Single-user latency (ms)",
                "",
                "| pipeline | " + " | ".join(f"p{q}" for q in LATENCY_PERCENTILES) + " | calls |",
                "|---|" + "---|" * (len(LATENCY_PERCENTILES) + 1),
            ]
            for k, v in lat_rows.items():
                cells = [f"{v[f'p{q}']:.2f}" if f"p{q}" in v else "" for q in LATENCY_PERCENTILES]
                md.append(f"| {k} | " + " | ".join(cells) + f" | {v.get('n', '')} |")
            md.append("")
        recall_rows = {k: v["candidate_recall"] for k, v in self.pipelines.items() if "candidate_recall" in v}
        if recall_rows:
            md += [
                "## Candidate recall",
                "",
                "| pipeline | " + " | ".join(f"@{n}" for n in RECALL_NS) + " |",
                "|---|" + "---|" * len(RECALL_NS),
            ]
            for k, v in recall_rows.items():
                md.append(
                    f"| {k} | " + " | ".join(f"{v.get(str(n), float('nan')):.4f}" for n in RECALL_NS) + " |"
                )
            md.append("")
        if self.comparisons:
            md += [
                "## Paired comparisons (per-user bootstrap, b − a)",
                "",
                "| a | b | metric | diff | 95% CI | p |",
                "|---|---|---|---|---|---|",
            ]
            for c in self.comparisons:
                md.append(
                    f"| {c['a']} | {c['b']} | {c['metric']} | {c['diff']:+.4f} | [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] | {c['p_value']:.4f} |"
                )
            md.append("")
        for name, res in self.pipelines.items():
            if "ablation" in res:
                md += _ablation_markdown(name, res["ablation"])
        write_text_atomic(d / "results.md", "\n".join(md))
        arrays = {f"{p}/{m}": v for p, per in self.per_user.items() for m, v in per.items()}
        with atomic_path(d / "per_user.npz") as tmp:
            np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]
        if plots:
            from driftrank.bench._plots import plot_results

            plot_results(self, d)
        return d


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _latencies(ranker: Any, split: Split, n: int, k: int) -> np.ndarray:
    """Seconds per single-user ``rank`` call for the first ``n`` test users."""
    seen = split.train_valid.seen
    out = []
    for j in range(min(n, len(split.test))):
        u = split.test.users[j : j + 1]
        t = time.perf_counter()
        ranker.rank(u, k, exclude=seen, at=split.test.timestamps[j : j + 1])
        out.append(time.perf_counter() - t)
    return np.asarray(out)


class _Precomputed:
    """A ranker that returns rankings computed elsewhere (rows by user index)."""

    def __init__(self, users: np.ndarray, ranking: Ranking) -> None:
        self._row = {int(u): j for j, u in enumerate(users.tolist())}
        self._ranking = ranking

    def fit(self, dataset: Dataset) -> _Precomputed:
        return self

    def rank(self, users: np.ndarray, k: int, *, exclude: Any = None, at: Any = None) -> Ranking:
        rows = np.array([self._row[int(u)] for u in users], dtype=np.int64)
        return Ranking(self._ranking.items[rows, :k], self._ranking.scores[rows, :k])


def _evaluate(
    ranker: Any,
    split: Split,
    ks: Sequence[int],
    progress: bool,
    *,
    fit: bool,
    ray: str | None,
    ray_workers: int,
) -> EvalResult:
    """:func:`evaluate` on the test step, with an engine pipeline's ranking done on Ray when
    ``ray`` is set."""
    if ray is None or not hasattr(ranker, "engine"):
        return evaluate(ranker, split, stage="test", ks=ks, fit=fit, progress=progress)
    fit_seconds = 0.0
    if fit:
        t = time.perf_counter()
        ranker.fit(split.train_valid)
        fit_seconds = time.perf_counter() - t
    t = time.perf_counter()
    ranking = _ray_ranking(ranker.engine, split, max(ks), ray, ray_workers)
    rank_seconds = time.perf_counter() - t
    res = evaluate(_Precomputed(split.test.users, ranking), split, stage="test", ks=ks, fit=False)
    res.fit_seconds, res.rank_seconds = fit_seconds, rank_seconds
    return res


def _ray_ranking(engine: Any, split: Split, k: int, address: str, workers: int) -> Ranking:
    """The test users' top ``k`` (item indices, rows aligned with ``split.test``) from Ray."""
    import tempfile

    import polars as pl

    from driftrank.distributed import rank_all

    known = engine.known_users()
    users = [known[int(u)] for u in split.test.users.tolist()]
    with tempfile.TemporaryDirectory(prefix="driftrank-bench-ray-") as tmp:
        model = engine.save(Path(tmp) / "model")
        out = Path(tmp) / "ranks"
        rank_all(
            model, out, users, k=k, workers=workers, chunk_size=256, at=split.test.timestamps.tolist(),
            address=address,
        )  # fmt: skip
        table = pl.read_parquet(sorted(out.glob("*.parquet")))
    items = np.full((len(users), k), -1, dtype=np.int64)
    scores = np.full((len(users), k), np.nan, dtype=np.float32)
    row = {u: j for j, u in enumerate(users)}
    rows = np.array([row[u] for u in table["user_id"].to_list()], dtype=np.int64)
    cols = table["rank"].to_numpy().astype(np.int64) - 1
    items[rows, cols] = split.train_valid.item_ids.indices(table["item_id"].to_list())
    scores[rows, cols] = table["score"].to_numpy()
    return Ranking(items, scores)


def _check_bench_args(
    seed: object, out: str | os.PathLike[str] | None, save_predictions: str | os.PathLike[str] | None
) -> None:
    """Refuse, before any fitting, a seed the generators cannot take or an output path that
    names an existing file (results go into a folder)."""
    from driftrank.errors import ConfigError

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**31:
        raise ConfigError(f"seed must be an integer in [0, 2**31), got {seed!r}")
    if out is not None and os.path.lexists(out) and not Path(out).is_dir():
        raise ConfigError(
            f"out must name a folder for the results (bench --out), got the existing file {out}"
        )
    if save_predictions is not None and Path(save_predictions).is_dir():
        raise ConfigError(f"save_predictions must name a file, got the folder {save_predictions}")


def run_benchmark(
    dataset: Dataset,
    specs: Sequence[PipelineSpec],
    *,
    protocol: Protocol = "loo",
    ks: Sequence[int] = (10, 20),
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    save_predictions: str | os.PathLike[str] | None = None,
    latency_users: int = 200,
    compare_to: str | None = None,
    progress: bool = True,
    keep_rankers: bool = False,
    ablation: bool = False,
    ray: str | None = None,
    ray_workers: int = 2,
) -> BenchResult:
    """Fit and evaluate every pipeline on the test step of one split of ``dataset``.

    Records metrics with bootstrap 95% CIs, fit and ranking time, single-user latency,
    candidate recall@50/100/200 for pipelines that generate candidates, and paired per-user
    comparisons of every pipeline against ``compare_to`` (default: the first pipeline).
    ``save_predictions`` writes the top-20 of the last pipeline as ``user_id,items`` CSV.
    ``keep_rankers`` keeps the fitted rankers in ``result.rankers`` (not saved to disk).

    A pipeline that a fitted one can serve without refitting (``rerank`` after ``hybrid`` with
    the same settings: the same deterministic component fits, see ``EngineRanker.derive``)
    reuses it; its ``fit_seconds`` are then those of the shared fit, and ``fit_shared_with``
    names it. ``ablation`` adds, for every pipeline with a trained fusion layer, the fusion
    ablation table on the test step (each signal group removed, each alone, and the fusion
    methods side by side on the same candidates; :func:`fusion_ablation`).

    ``ray``: rank the test users of every engine pipeline on Ray Data (``"local"`` or a
    cluster address; ``ray_workers`` actors) through :func:`driftrank.distributed.rank_all`,
    on the fitted engine saved to a temporary folder; the metrics are those of the
    single-process path (the same chunks of 256 users, ranked at their test times). Other
    pipelines rank in this process.
    """
    from driftrank._progress import bar as progress_bar

    _check_bench_args(seed, out, save_predictions)
    data, split = prepare_split(dataset, protocol)
    result = BenchResult(dataset=data.describe(), protocol=protocol, seed=seed)
    result.dataset["n_test_users"] = len(split.test)
    if len(split.test) < MIN_RELIABLE_USERS:
        result.warnings.append(
            f"only {len(split.test)} test users (fewer than {MIN_RELIABLE_USERS}): the metrics, their "
            "bootstrap intervals and the paired p-values are too noisy to compare pipelines"
        )
        log.warning("%s", result.warnings[-1])
    last: EvalResult | None = None
    fitted: dict[str, Any] = {}
    for spec in progress_bar(specs, enabled=progress, desc=f"bench {data.name}", unit="pipeline"):
        log.info("pipeline %s (%s) on %s", spec.name, spec.kind, data.name)
        ranker = build_pipeline(spec, seed)
        shared = _shared_fit(ranker, fitted)
        if shared is not None:
            ranker = shared[1]
            res = _evaluate(ranker, split, ks, progress, fit=False, ray=ray, ray_workers=ray_workers)
            res.fit_seconds = result.pipelines[shared[0]]["fit_seconds"]
        else:
            res = _evaluate(ranker, split, ks, progress, fit=True, ray=ray, ray_workers=ray_workers)
            fitted[spec.name] = ranker
        entry: dict[str, Any] = {
            "spec": spec.to_dict(),
            "metrics": res.metrics,
            "ci": {
                m: list(bootstrap_ci(res.per_user[m], seed=seed))
                for m in res.per_user
                if m.startswith(("NDCG", "HR", "MRR"))
            },
            "fit_seconds": res.fit_seconds,
            "rank_seconds": res.rank_seconds,
            "n_users": len(res.users),
        }
        if shared is not None:
            entry["fit_shared_with"] = shared[0]
        if hasattr(ranker, "candidates"):
            cands = ranker.candidates(
                split.test.users, max(RECALL_NS), exclude=split.train_valid.seen, at=split.test.timestamps
            )
            entry["candidate_recall"] = candidate_recall(cands, split.test.items)
        if hasattr(ranker, "channel_recall"):
            entry["channel_recall"] = ranker.channel_recall(
                split.test.users, split.test.items, split.train_valid.seen, split.test.timestamps
            )
        if latency_users > 0:
            lat = _latencies(ranker, split, latency_users, max(ks))
            result.latencies[spec.name] = lat
            entry["latency_ms"] = {
                **{f"p{q}": float(np.percentile(lat, q) * 1e3) for q in LATENCY_PERCENTILES},
                "n": len(lat),
            }
        if hasattr(ranker, "report"):
            entry["report"] = ranker.report()
        if ablation and shared is None and hasattr(ranker, "fusion_training_data"):
            entry["ablation"] = fusion_ablation(ranker, split, ks, seed)
        result.pipelines[spec.name] = entry
        result.per_user[spec.name] = res.per_user
        if keep_rankers:
            result.rankers[spec.name] = ranker
        last = res
    names = list(result.pipelines)
    base = compare_to or (names[0] if names else None)
    if base is not None and base not in result.per_user:
        raise ValueError(f"compare_to={base!r} is not one of the pipelines {names}")
    for name in names:
        if base is None or name == base:
            continue
        for metric in ("NDCG@10", "HR@10"):
            if metric in result.per_user[name]:
                c = paired_bootstrap(result.per_user[base][metric], result.per_user[name][metric], seed=seed)
                result.comparisons.append({"a": base, "b": name, "metric": metric, **c.as_dict()})
    if save_predictions is not None and last is not None:
        write_predictions(save_predictions, split.train_valid, last.users, last.ranked)
    if out is not None:
        result.save(out)
    return result


def _shared_fit(ranker: Any, fitted: dict[str, Any]) -> tuple[str, Any] | None:
    """``(name, ranker)`` when an already fitted pipeline can serve ``ranker``'s config."""
    config = getattr(ranker, "config", None)
    for name, other in fitted.items():
        derive = getattr(other, "derive", None)
        if derive is not None and config is not None:
            view = derive(config)
            if view is not None:
                return name, view
    return None


def fusion_ablation(ranker: Any, split: Split, ks: Sequence[int], seed: int) -> dict[str, Any]:
    """The fusion ablation of a fitted engine pipeline on the test step.

    A fresh fuser of the engine's kind is trained on the very held-out inputs the engine's
    fusion layer was trained on (each user's last training event) for every variant: all
    signal groups, each group removed, each candidate-level group alone; then scored on the
    test users' candidates. Also the fusion methods (gated with and without its MLP, logistic
    linear, reciprocal rank) on the same inputs. The candidates are fixed, so the retrieval
    recall is the same in every row; metrics on candidates equal full-catalog metrics.
    """
    import dataclasses

    from driftrank.fusion import (
        FusionModel,
        LinearFusion,
        LinearFusionConfig,
        ReciprocalRankFusion,
        RRFConfig,
        ablation,
        candidate_metrics,
    )

    kt = tuple(int(k) for k in ks)
    train_in, train_t = ranker.fusion_training_data()
    test_in = ranker.signals(split.test.users, exclude=split.train_valid.seen, at=split.test.timestamps)
    test_t = np.asarray(split.test.items, dtype=np.int64)
    fcfg = ranker.engine.config.fusion_config
    start = time.perf_counter()
    table = ablation(lambda: FusionModel(fcfg), train_in, train_t, test_in, test_t, ks=kt)
    # The gated layer with every signal is the table's "all" row: same fuser, same inputs.
    full = table.row(0, named=True)
    metric_keys = [k for k in full if k.split("@")[0] in ("NDCG", "HR", "MRR")] + ["recall"]
    methods = [
        {"method": "gated", "n_users": float((test_t >= 0).sum()), **{k: full[k] for k in metric_keys}}
    ]
    makers: dict[str, Any] = {
        "gated, no MLP": lambda: FusionModel(dataclasses.replace(fcfg, mlp_hidden=0)),
        "linear (logistic)": lambda: LinearFusion(LinearFusionConfig(method="logistic")),
        "reciprocal rank": lambda: ReciprocalRankFusion(RRFConfig()),
    }
    for label, make in makers.items():
        fuser = make().fit(train_in, train_t)
        m = candidate_metrics(test_in.candidates, fuser.score(test_in), test_t, kt)
        methods.append({"method": label, **m})
    return {
        "groups": dict(train_in.groups),
        "table": table.to_dicts(),
        "methods": methods,
        "seconds": time.perf_counter() - start,
    }


def _ablation_markdown(name: str, abl: dict[str, Any]) -> list[str]:
    """The fusion ablation tables of one pipeline as markdown lines."""
    md = [
        f"## Fusion ablation: {name} (test step, the engine's own candidates)",
        "",
        "| variant | signal group | NDCG@10 | HR@10 | MRR@10 | ΔNDCG@10 | ΔHR@10 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in abl["table"]:
        md.append(
            f"| {row['variant']} | {row['group'] or '(all)'} | {row['NDCG@10']:.4f} | {row['HR@10']:.4f} "
            f"| {row['MRR@10']:.4f} | {row['dNDCG@10']:+.4f} | {row['dHR@10']:+.4f} |"
        )
    md += ["", "| fusion method | NDCG@10 | HR@10 | MRR@10 |", "|---|---|---|---|"]
    for row in abl["methods"]:
        md.append(f"| {row['method']} | {row['NDCG@10']:.4f} | {row['HR@10']:.4f} | {row['MRR@10']:.4f} |")
    recall = abl["table"][0]["recall"] if abl["table"] else float("nan")
    md += ["", f"Target among the candidates (recall): {recall:.4f}.", ""]
    return md
