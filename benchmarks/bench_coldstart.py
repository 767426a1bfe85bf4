"""Cold start: new items and new users under one protocol, hybrid engine vs CF-only vs popularity.

    DRIFTRANK_DATA_HOME=../shared/data .venv/bin/python benchmarks/bench_coldstart.py \\
        --out benchmarks/results/coldstart

Split (:func:`driftrank.eval.cold_start_split`, seed ``--seed``): 10% of the items with events
lose all their events (their catalog rows stay known); 10% of the users with more than 3 events
are held out entirely, each keeping their first 3 events as the history and their 4th as the
target; every other user's last event on a training item is a warm reference target. The
training data is re-indexed, so no model learns anything about a new item or a new user.

Systems, each fitted on the same training data:

* ``hybrid``: ``Engine(EngineConfig(seed=...))`` (``--quick``: the re-ranker trains 2 epochs).
  New items go in with ``engine.add_items(new_items)`` (text only); a new user is ranked with
  ``engine.rank(user_id, history=[(item_id, ts), ...])`` (fold-in + interest vector); warm users
  with ``engine.rank_batch`` (the same path as ``rank``, batched). Text-only sub-protocol: each
  new user is ranked with ``engine.rank(text=...)``, the text built from the titles and genres
  of their history items (the history items are filtered out).
* ``cf-only``: the engine's ALS channel alone (``ALSChannel(config.als)``, the ``implicit``
  library): item factors fitted on the training data, exact least-squares fold-in for new
  users; it has no vector for a new item, so it can never rank one.
* ``popularity``: training event counts; new items have none.

Segments: ``new-items`` (warm users, target = their first event on a held-out item),
``new-users`` (history of 3), ``new-users-text`` (text only) and ``warm`` (reference). Every
list ranks the full catalog (training items + new items) minus the user's known items; HR@10,
NDCG@10 and MRR@10 per user, with percentile bootstrap 95% CIs over users and paired bootstrap
differences hybrid − baseline. Also: the share of top-10 slots held by new items, and the
hybrid's candidate recall@200 (is the target among the retrieved candidates at all).

New users are ranked in the order of their target times; the engine keeps each one's history
(as a deployed engine would), so popularity and co-visitation see earlier new users' events.
``--ablation`` also fits the engine without reserved cold-item slots (``cold_item_slots=0``,
the engine before them) and with ``cold_item_dropout=0.1``. Writes ``results.json``,
``results.md``, ``per_user.npz`` and ``coldstart.png`` (HR@10 / NDCG@10 bars with 95% CIs)
to ``--out``, with the machine, the seed and the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from driftrank._atomic import atomic_path, write_text_atomic
from driftrank.bench._harness import machine_info
from driftrank.data import load_dataset
from driftrank.engine import Engine, EngineConfig
from driftrank.engine._ranker import EngineRanker
from driftrank.eval import (
    ColdStartSplit,
    Targets,
    bootstrap_ci,
    cold_start_split,
    metrics_at,
    paired_bootstrap,
    target_ranks,
)
from driftrank.retrieval import ALSChannel, PopularityRanker

K = 10
N_CANDIDATES = 200
METRICS = (f"HR@{K}", f"NDCG@{K}", f"MRR@{K}")
SEGMENTS = ("new-items", "new-users", "new-users-text", "warm")

log = logging.getLogger("bench_coldstart")


def seen_matrix(rows: list[np.ndarray], n_rows: int, n_cols: int, users: np.ndarray) -> sp.csr_matrix:
    """Binary CSR ``[n_rows, n_cols]`` whose row ``users[j]`` holds the items ``rows[j]``."""
    r = np.concatenate([np.full(len(x), u, dtype=np.int64) for u, x in zip(users, rows, strict=True)])
    c = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
    m = sp.csr_matrix((np.ones(len(c), np.float32), (r, c)), shape=(n_rows, n_cols))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def widen(m: sp.csr_matrix, n_rows: int, n_cols: int) -> sp.csr_matrix:
    """``m`` padded with empty rows/columns to ``[n_rows, n_cols]``."""
    m = m.tocsr()
    indptr = np.concatenate([m.indptr, np.full(n_rows - m.shape[0], m.indptr[-1])])
    return sp.csr_matrix((m.data, m.indices, indptr), shape=(n_rows, n_cols))


def subsample(t: Targets, n: int | None, seed: int) -> Targets:
    """At most ``n`` targets, drawn without replacement (order kept); all when ``n`` is None."""
    if n is None or len(t) <= n:
        return t
    keep = np.sort(np.random.default_rng(seed).choice(len(t), n, replace=False))
    return Targets(t.users[keep], t.items[keep], t.timestamps[keep])


def score(
    ranked: np.ndarray, targets: np.ndarray, n_train_items: int, seed: int
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metrics with CIs for one system on one segment; ``ranked: int64[n, K]`` catalog indices."""
    ranks = target_ranks(ranked[:, :K], targets)
    per_user = metrics_at(ranks, K)
    top = ranked[:, :K]
    new_slots = ((top >= n_train_items).sum(axis=1) / K).astype(np.float64)
    per_user["new_item_share@10"] = new_slots
    out: dict[str, Any] = {
        "n_users": len(targets),
        "metrics": {m: float(v.mean()) if v.size else float("nan") for m, v in per_user.items()},
        "ci": {m: list(bootstrap_ci(per_user[m], seed=seed)) for m in METRICS},
        "users_with_a_new_item_in_top10": float((new_slots > 0).mean()) if len(new_slots) else float("nan"),
        "distinct_new_items_in_top10s": int(np.unique(top[top >= n_train_items]).size),
        "empty_slots@10": float((top < 0).mean()) if top.size else float("nan"),
    }
    return out, per_user


def to_catalog(split: ColdStartSplit, item_ids: np.ndarray) -> np.ndarray:
    """``int64[K]`` catalog indices of raw item ids, -1 padded."""
    out = np.full(K, -1, dtype=np.int64)
    idx = split.catalog.indices(item_ids.tolist())
    out[: len(idx)] = idx
    return out


def history_text(split: ColdStartSplit, items: np.ndarray) -> str:
    """What a new user might type: their first items' titles and genres (``items``: catalog indices)."""
    frame = pl.concat([split.train.items.drop("item"), split.new_items], how="vertical_relaxed")
    rows = frame[items.tolist()]
    return "; ".join(
        f"{t} ({', '.join(g)})" if len(g) else t
        for t, g in zip(rows["title"].to_list(), rows["genres"].to_list(), strict=True)
    )


@dataclass
class Selection:
    """The targets each segment is measured on, and the new users' histories (catalog indices)."""

    new_items: Targets
    warm: Targets
    new_users: Targets
    new_user_ids: list[Any]
    history: list[np.ndarray]
    history_ts: list[np.ndarray]
    texts: list[str]

    @property
    def warm_users(self) -> np.ndarray:
        """Training user indices ranked once for both warm-user segments."""
        return np.union1d(self.new_items.users, self.warm.users)

    def rows(self, seg: str) -> np.ndarray:
        """Rows of the warm-user ranking that belong to segment ``seg``'s targets."""
        pos = {u: j for j, u in enumerate(self.warm_users.tolist())}
        t = self.new_items if seg == "new-items" else self.warm
        return np.array([pos[u] for u in t.users.tolist()], dtype=np.int64)


def select(split: ColdStartSplit, max_users: int | None, seed: int) -> Selection:
    """Every target of the split, or at most ``max_users`` per segment (development runs)."""
    nu = split.new_users
    keep = np.arange(len(nu))
    if max_users is not None and len(nu) > max_users:
        keep = np.sort(np.random.default_rng(seed + 2).choice(len(nu), max_users, replace=False))
    return Selection(
        new_items=subsample(split.new_item_targets, max_users, seed),
        warm=subsample(split.warm_targets, max_users, seed + 1),
        new_users=Targets(nu.targets.users[keep], nu.targets.items[keep], nu.targets.timestamps[keep]),
        new_user_ids=[nu.user_ids[j].item() for j in keep],
        history=[nu.history.user(int(j))[0] for j in keep],
        history_ts=[nu.history.user(int(j))[1] for j in keep],
        texts=[history_text(split, nu.history.user(int(j))[0]) for j in keep],
    )


def run_hybrid(
    config: EngineConfig, split: ColdStartSplit, sel: Selection, text: bool
) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, Any]]:
    """Fit an engine on the training data, add the new items, rank every segment.

    Returns the top-K lists per segment (catalog indices, rows aligned with the segment's
    targets), the candidate recall@200 per segment, and a report (seconds, fit report).
    """
    n_cat = len(split.catalog)
    report: dict[str, Any] = {}
    t = time.perf_counter()
    engine = Engine(config).fit(split.train)
    report["fit_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    added = engine.add_items(split.new_items)
    report["add_items_seconds"] = time.perf_counter() - t
    if added != len(split.new_items) or engine.n_items != n_cat:
        raise RuntimeError("the engine's catalog after add_items differs from the split's catalog")
    report["fit_report"] = engine.fit_report
    adapter = EngineRanker(config)
    adapter.engine = engine
    ranked: dict[str, np.ndarray] = {}
    recall: dict[str, float] = {}

    # Warm users (new-item and warm targets): one ranking each, through rank_batch.
    users = sel.warm_users
    raw_users = split.train.user_ids.ids[users].tolist()
    top = np.full((len(users), K), -1, dtype=np.int64)
    t = time.perf_counter()
    for s in range(0, len(users), 64):
        for j, r in enumerate(engine.rank_batch(raw_users[s : s + 64], k=K), start=s):
            top[j] = to_catalog(split, r.item_ids)
    report["rank_warm_ms_per_user"] = 1e3 * (time.perf_counter() - t) / max(1, len(users))
    seen = widen(split.train.seen, split.train.n_users, n_cat)
    cands = adapter.candidates(users, N_CANDIDATES, exclude=seen)
    for seg, tg in (("new-items", sel.new_items), ("warm", sel.warm)):
        rows = sel.rows(seg)
        ranked[seg] = top[rows]
        recall[seg] = candidate_recall(cands, rows, tg.items)

    # New users, served in the order of their target times, each through rank(history=...).
    n_new = len(sel.new_user_ids)
    top = np.full((n_new, K), -1, dtype=np.int64)
    engine_user = np.zeros(n_new, dtype=np.int64)
    t = time.perf_counter()
    for j in np.argsort(sel.new_users.timestamps, kind="stable").tolist():
        history = list(
            zip(split.catalog.ids[sel.history[j]].tolist(), sel.history_ts[j].tolist(), strict=True)
        )
        r = engine.rank(sel.new_user_ids[j], k=K, history=history)
        top[j] = to_catalog(split, r.item_ids)
        engine_user[j] = engine.n_users - 1  # the user just registered
    report["rank_new_user_ms"] = 1e3 * (time.perf_counter() - t) / max(1, n_new)
    ranked["new-users"] = top
    ex = seen_matrix(sel.history, int(engine_user.max(initial=0)) + 1, n_cat, engine_user)
    cands = adapter.candidates(engine_user, N_CANDIDATES, exclude=ex)
    recall["new-users"] = candidate_recall(cands, np.arange(n_new), sel.new_users.items)

    if text:
        # Text only: what the user might type, the history items filtered out.
        top = np.full((n_new, K), -1, dtype=np.int64)
        t = time.perf_counter()
        for j in range(n_new):
            known = split.catalog.ids[sel.history[j]].tolist()
            allowed = [x for x in split.catalog.ids.tolist() if x not in known]
            r = engine.rank(text=sel.texts[j], k=K, filter=allowed)
            top[j] = to_catalog(split, r.item_ids)
        report["rank_text_ms"] = 1e3 * (time.perf_counter() - t) / max(1, n_new)
        ranked["new-users-text"] = top
    return ranked, recall, report


def candidate_recall(cands: Any, rows: np.ndarray, targets: np.ndarray) -> float:
    """Share of candidate lists ``rows`` (positions in ``cands``) that hold their target."""
    hit = [targets[k] in cands.items[cands.of(int(j))] for k, j in enumerate(rows.tolist())]
    return float(np.mean(hit)) if hit else float("nan")


def run_baselines(
    config: EngineConfig, split: ColdStartSplit, sel: Selection
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, float]]:
    """CF-only (the engine's ALS channel alone) and popularity on every segment."""
    train, n_cat = split.train, len(split.catalog)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    als = ALSChannel(config.als).fit(train)
    als.extend_items(n_cat - split.n_train_items)  # no vectors for them: never scored
    seconds["cf-only_fit"] = time.perf_counter() - t
    pop = PopularityRanker().fit(train)
    pop.extend_items(n_cat - split.n_train_items)
    users = sel.warm_users
    seen = widen(train.seen, train.n_users, n_cat)
    out: dict[str, dict[str, np.ndarray]] = {"cf-only": {}, "popularity": {}}
    warm = {
        "cf-only": als.rank(users, K, exclude=seen).items,
        "popularity": pop.rank(users, K, exclude=seen).items,
    }
    for seg in ("new-items", "warm"):
        for name, top in warm.items():
            out[name][seg] = top[sel.rows(seg)]
    nu = sel.new_users
    ex = seen_matrix(sel.history, int(nu.users.max(initial=0)) + 1, n_cat, nu.users)
    lengths = [len(x) for x in sel.history]
    if lengths:
        # Exact least-squares fold-in of each new user's history on the trained item factors.
        als.observe(np.repeat(nu.users, lengths), np.concatenate(sel.history), np.concatenate(sel.history_ts))
    out["cf-only"]["new-users"] = als.rank(nu.users, K, exclude=ex).items
    out["popularity"]["new-users"] = out["popularity"]["new-users-text"] = pop.rank(
        nu.users, K, exclude=ex
    ).items
    return out, seconds


def main(argv: list[str] | None = None) -> int:
    """Run the cold-start benchmark and write its results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data-home", default=os.environ.get("DRIFTRANK_DATA_HOME"))
    parser.add_argument("--out", default="benchmarks/results/coldstart")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--item-share", type=float, default=0.1)
    parser.add_argument("--user-share", type=float, default=0.1)
    parser.add_argument("--history", type=int, default=3, help="events each new user brings")
    parser.add_argument("--quick", action="store_true", help="re-ranker trained 2 epochs (development)")
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="also fit the engine without reserved cold-item slots, and with cold_item_dropout=0.1",
    )
    parser.add_argument("--max-users", type=int, default=None, help="cap per segment (development)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=JSON",
        help="override an EngineConfig field, e.g. --set cold_item_slots=0",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import torch

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    ds = load_dataset(args.dataset, args.data_home, download=False)
    split = cold_start_split(ds, args.item_share, args.user_share, args.history, seed=args.seed)
    n_tr = split.n_train_items
    sel = select(split, args.max_users, args.seed)

    overrides: dict[str, Any] = {"seed": args.seed}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    if args.quick:
        from driftrank.rerank._model import SequenceRerankerConfig

        overrides["reranker"] = SequenceRerankerConfig(max_epochs=2)
    config = EngineConfig(**overrides)
    variants = {"hybrid": config}
    if args.ablation:
        variants["hybrid, no cold slots"] = dataclasses.replace(config, cold_item_slots=0)
        variants["hybrid, cold dropout 0.1"] = dataclasses.replace(config, cold_item_dropout=0.1)

    result: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": vars(args),
        "seed": args.seed,
        "machine": machine_info(),
        "split": split.info,
        "engine_config": config.to_dict(),
        "systems": {
            "hybrid": "Engine(config): add_items(new_items), rank(user, history=[(item, ts)...]), "
            "rank(text=...), rank_batch for warm users",
            "hybrid, no cold slots": "cold_item_slots=0 (the engine before the reserved slots)",
            "hybrid, cold dropout 0.1": "cold_item_dropout=0.1 (fusion trained with 10% simulated new items)",
            "cf-only": "ALSChannel(config.als) alone: implicit ALS, exact fold-in for new users",
            "popularity": "PopularityRanker: training event counts",
        },
        "protocol": __doc__,
    }

    ranked: dict[str, dict[str, np.ndarray]] = {s: {} for s in SEGMENTS}
    recall: dict[str, dict[str, float]] = {}
    reports: dict[str, Any] = {}
    for name, cfg in variants.items():
        log.info("fitting %s", name)
        r, recall[name], reports[name] = run_hybrid(cfg, split, sel, text=name == "hybrid")
        for seg, top in r.items():
            ranked[seg][name] = top
    base_ranked, base_seconds = run_baselines(config, split, sel)
    for name, per_seg in base_ranked.items():
        for seg, top in per_seg.items():
            ranked[seg][name] = top
    result["hybrid_reports"] = reports
    targets = {
        "new-items": sel.new_items,
        "warm": sel.warm,
        "new-users": sel.new_users,
        "new-users-text": sel.new_users,
    }
    result["text_example"] = sel.texts[0] if sel.texts else None

    segments: dict[str, Any] = {}
    per_user_all: dict[str, np.ndarray] = {}
    for seg in SEGMENTS:
        tg = targets[seg]
        entry: dict[str, Any] = {
            "n_users": len(tg),
            "targets_on_new_items": int((tg.items >= n_tr).sum()),
            "systems": {},
            "paired": [],
        }
        per: dict[str, dict[str, np.ndarray]] = {}
        for name, items in ranked[seg].items():
            entry["systems"][name], per[name] = score(items, tg.items, n_tr, args.seed)
            if seg in recall.get(name, {}):
                entry["systems"][name]["candidate_recall@200"] = recall[name][seg]
            for m, v in per[name].items():
                per_user_all[f"{seg}/{name}/{m}"] = v
        for other in per:
            if other == "hybrid":
                continue
            for m in (f"NDCG@{K}", f"HR@{K}"):
                c = paired_bootstrap(per[other][m], per["hybrid"][m], seed=args.seed)
                entry["paired"].append({"a": other, "b": "hybrid", "metric": m, **c.as_dict()})
        segments[seg] = entry
    result["segments"] = segments
    result["seconds"] = {
        **{f"{n}_fit": r["fit_seconds"] for n, r in reports.items()},
        **base_seconds,
        "total": time.perf_counter() - t_start,
    }

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "results.json", json.dumps(result, indent=2, default=float))
    write_text_atomic(out / "results.md", markdown(result))
    with atomic_path(out / "per_user.npz") as tmp:
        np.savez_compressed(tmp, **per_user_all)  # type: ignore[arg-type]
    if not args.no_plot:
        plot(result, out / "coldstart.png")
    print(markdown(result))
    return 0


def markdown(result: dict[str, Any]) -> str:
    """The results as a markdown report."""
    info = result["split"]
    lines = [
        f"# Cold start on {info['source']} (seed {result['seed']})",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']['cpu']} ({result['machine']['cpu_count']} CPUs), "
        f"commit {result['machine']['git_commit']}{' (dirty)' if result['machine']['git_dirty'] else ''}",
        "",
        f"Training: {info['n_train_users']} users, {info['n_train_items']} items, "
        f"{info['n_train_interactions']} events. Held out: {info['n_held_out_items']} items "
        f"(+{info['n_incidental_new_items']} left without events), {info['n_new_users']} users "
        f"(history {info['new_user_history']}), {info['n_warm_targets']} warm targets.",
        "",
        "| segment | system | n | HR@10 [95% CI] | NDCG@10 [95% CI] | MRR@10 [95% CI] | new items in top-10 | cand. recall@200 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for seg, e in result["segments"].items():
        for name, r in e["systems"].items():
            cells = [f"{r['metrics'][m]:.4f} [{r['ci'][m][0]:.4f}, {r['ci'][m][1]:.4f}]" for m in METRICS]
            cr = r.get("candidate_recall@200")
            lines.append(
                f"| {seg} | {name} | {r['n_users']} | "
                + " | ".join(cells)
                + f" | {r['metrics']['new_item_share@10']:.3f} | {'' if cr is None else f'{cr:.4f}'} |"
            )
    lines += [
        "",
        "New items in top-10: mean share of the 10 slots held by items without training events.",
        "",
        "## Paired differences (hybrid − baseline, per-user bootstrap)",
        "",
        "| segment | baseline | metric | diff | 95% CI | p |",
        "|---|---|---|---|---|---|",
    ]
    for seg, e in result["segments"].items():
        for c in e["paired"]:
            lines.append(
                f"| {seg} | {c['a']} | {c['metric']} | {c['diff']:+.4f} | "
                f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] | {c['p_value']:.4f} |"
            )
    secs = result["seconds"]
    lines += ["", "Seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in secs.items()), ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Bars with 95% CIs: one panel per metric, grouped by segment, one bar per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    segs = list(result["segments"])
    systems = list(dict.fromkeys(n for seg in segs for n in result["segments"][seg]["systems"]))
    palette = ["#4c72b0", "#64b5cd", "#8172b3", "#dd8452", "#8c8c8c"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(systems)
    for ax, metric in zip(axes, (f"HR@{K}", f"NDCG@{K}"), strict=True):
        for s, name in enumerate(systems):
            xs, vals, lo, hi = [], [], [], []
            for g, seg in enumerate(segs):
                r = result["segments"][seg]["systems"].get(name)
                if r is None:
                    continue
                v = r["metrics"][metric]
                xs.append(g + (s - (len(systems) - 1) / 2) * width)
                vals.append(v)
                lo.append(v - r["ci"][metric][0])
                hi.append(r["ci"][metric][1] - v)
            ax.bar(xs, vals, width, yerr=[lo, hi], capsize=3, label=name, color=palette[s % len(palette)])
        ax.set_xticks(range(len(segs)))
        ax.set_xticklabels(segs)
        ax.set_title(f"{metric} (95% bootstrap CI)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Cold start on {result['split']['source']} (seed {result['seed']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
