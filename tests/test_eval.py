"""The evaluation protocol: split, metrics (hand-computed and property-based), known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftrank.data import Dataset, make_drifting
from driftrank.eval import (
    bootstrap_ci,
    coverage,
    evaluate,
    kcore,
    leave_one_out,
    metrics_at,
    paired_bootstrap,
    target_ranks,
    write_predictions,
)
from driftrank.retrieval import PopularityRanker
from driftrank.types import Ranking, topk


def _toy(events: list[tuple[int, int, float]]) -> Dataset:
    u, i, t = zip(*events, strict=True)
    return Dataset.from_frames(pl.DataFrame({"user_id": u, "item_id": i, "timestamp": t}))


def test_metrics_hand_computed() -> None:
    ranked = np.array([[5, 3, 9], [1, 2, 4], [7, 8, -1]])
    targets = np.array([3, 6, 7])
    ranks = target_ranks(ranked, targets)
    assert ranks.tolist() == [1, -1, 0]
    m = metrics_at(ranks, 2)
    assert m["HR@2"].tolist() == [1.0, 0.0, 1.0]
    assert m["NDCG@2"].tolist() == pytest.approx([1 / np.log2(3), 0.0, 1.0])
    assert m["MRR@2"].tolist() == pytest.approx([0.5, 0.0, 1.0])
    m1 = metrics_at(ranks, 1)
    assert m1["HR@1"].tolist() == [0.0, 0.0, 1.0]
    assert coverage(ranked, 2, 10) == pytest.approx(6 / 10)
    with pytest.raises(ValueError, match="positive integer, got 0"):
        metrics_at(ranks, 0)


@given(
    st.lists(st.integers(-1, 30), min_size=1, max_size=50),
    st.integers(1, 25),
)
def test_metric_bounds_and_order(ranks: list[int], k: int) -> None:
    m = metrics_at(np.array(ranks), k)
    for v in m.values():
        assert np.all((v >= 0) & (v <= 1))
    assert np.all(m[f"NDCG@{k}"] <= m[f"HR@{k}"] + 1e-12)
    assert np.all(m[f"MRR@{k}"] <= m[f"NDCG@{k}"] + 1e-12)
    perfect = metrics_at(np.zeros(len(ranks), dtype=int), k)
    assert all(np.all(v == 1.0) for v in perfect.values())


@given(st.integers(2, 40), st.integers(1, 10), st.integers(0, 2**31 - 1))
@settings(max_examples=40, deadline=None)
def test_topk_matches_full_sort_and_excludes(n_items: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, size=(3, n_items)).astype(np.float32)  # many ties
    exclude = np.zeros((3, n_items), dtype=bool)
    exclude[rng.random((3, n_items)) < 0.3] = True
    import scipy.sparse as sp

    r = topk(scores, k, sp.csr_matrix(exclude.astype(np.float32)))
    for row in range(3):
        allowed = [i for i in range(n_items) if not exclude[row, i]]
        expect = sorted(allowed, key=lambda i: (-scores[row, i], i))[:k]
        got = [int(i) for i in r.items[row] if i >= 0]
        assert got == expect
        assert not any(exclude[row, i] for i in got)


@given(st.integers(1, 60), st.integers(1, 70), st.integers(0, 2**31 - 1))
@settings(max_examples=60, deadline=None)
def test_topk_equals_stable_full_sort_on_mixed_rows(n_items: int, k: int, seed: int) -> None:
    # Rows of distinct scores (the fast unstable sort), of ties across the k-th place, and of
    # NaN/inf; every row must match the first k of a stable full sort, scores included.
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((6, n_items))
    scores[1] = rng.integers(0, 3, n_items)
    scores[2] = 1.0
    scores[3, rng.random(n_items) < 0.4] = np.nan
    scores[4, rng.random(n_items) < 0.3] = -np.inf
    scores[5, rng.random(n_items) < 0.3] = np.inf
    r = topk(scores, k)
    for row in range(6):
        finite = np.flatnonzero(np.isfinite(scores[row]))
        expect = finite[np.argsort(-scores[row, finite], kind="stable")][:k]
        got = r.items[row][r.items[row] >= 0]
        np.testing.assert_array_equal(got, expect)
        np.testing.assert_array_equal(r.scores[row][: len(got)], scores[row, expect].astype(np.float32))
        assert np.all(np.isnan(r.scores[row][len(got) :]))
        alone = topk(scores[row : row + 1], k)  # the one-row path of single-user requests
        np.testing.assert_array_equal(alone.items[0], r.items[row])


@given(st.integers(1, 40), st.integers(1, 50), st.integers(0, 2**31 - 1))
@settings(max_examples=60, deadline=None)
def test_topk_of_one_broadcast_row_equals_topk_of_its_copies(n_items: int, k: int, seed: int) -> None:
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    row = rng.integers(0, 4, n_items).astype(np.float32)  # ties
    row[rng.random(n_items) < 0.2] = np.nan
    exclude = sp.csr_matrix((rng.random((5, n_items)) < 0.4).astype(np.float32))
    shared = topk(np.broadcast_to(row, (5, n_items)), k, exclude)
    copies = topk(np.tile(row, (5, 1)), k, exclude)
    np.testing.assert_array_equal(shared.items, copies.items)
    np.testing.assert_array_equal(shared.scores, copies.scores)
    coords = exclude.nonzero()
    np.testing.assert_array_equal(topk(np.broadcast_to(row, (5, n_items)), k, coords).items, copies.items)


@given(st.lists(st.lists(st.integers(0, 6), min_size=1, max_size=12), min_size=1, max_size=8))
@settings(max_examples=60, deadline=None)
def test_split_partitions_in_time_order(histories: list[list[int]]) -> None:
    events = []
    for u, items in enumerate(histories):
        for j, i in enumerate(items):
            events.append((u, i, float(j // 2)))  # coarse timestamps: ties everywhere
    ds = _toy(events)
    split = leave_one_out(ds)
    rows_train = set(split.train.interactions["row"].to_list())
    rows_tv = set(split.train_valid.interactions["row"].to_list())
    assert rows_train <= rows_tv
    n_valid = len(rows_tv - rows_train)
    assert n_valid == len(split.validation)
    assert len(rows_tv) + len(split.test) == ds.n_interactions
    # Targets are each user's last (test) and second-to-last (validation) events in file order.
    for tgt, offset in ((split.test, 1), (split.validation, 2)):
        for u, item in zip(tgt.users, tgt.items, strict=True):
            raw_u = ds.user_ids.ids[u]
            hist = histories[raw_u]
            assert ds.item_ids.ids[item] == hist[len(hist) - offset]
    # every training event is earlier (or tied and earlier in the file) than the targets
    for u in split.test.users:
        t_test = split.test.timestamps[list(split.test.users).index(u)]
        _, times = split.train_valid.sequences.user(int(u))
        assert np.all(times <= t_test)


def test_users_with_few_events() -> None:
    ds = _toy([(1, 1, 0.0), (2, 1, 0.0), (2, 2, 1.0), (3, 1, 0.0), (3, 2, 1.0), (3, 3, 2.0)])
    split = leave_one_out(ds)
    assert sorted(ds.user_ids.ids[split.test.users].tolist()) == [2, 3]
    assert ds.user_ids.ids[split.validation.users].tolist() == [3]
    assert split.train.n_interactions == 3


def test_popularity_known_answer_ml100k(ml100k: Dataset) -> None:
    res = evaluate(PopularityRanker(), leave_one_out(ml100k))
    assert res.metrics["HR@10"] == pytest.approx(0.0859, abs=0.002)
    assert res.metrics["NDCG@10"] == pytest.approx(0.0449, abs=0.002)
    assert len(res.per_user["NDCG@10"]) == 943


def test_excluded_items_never_count(ml100k: Dataset) -> None:
    split = leave_one_out(ml100k)
    res = evaluate(PopularityRanker(), split, ks=(20,))
    seen = split.train_valid.seen
    for j, u in enumerate(res.users[:100]):
        row = set(seen[u].indices.tolist())
        assert not row & set(res.ranked[j].tolist())


def test_validation_stage_fits_on_train(ml100k: Dataset) -> None:
    split = leave_one_out(ml100k)

    class Spy(PopularityRanker):
        fitted_on = 0

        def fit(self, dataset: Dataset) -> Spy:
            Spy.fitted_on = dataset.n_interactions
            return super().fit(dataset)  # type: ignore[return-value]

    evaluate(Spy(), split, stage="validation")
    assert Spy.fitted_on == split.train.n_interactions


def test_kcore_iterates(ml_small: Dataset) -> None:
    core = kcore(ml_small, 5, 5)
    assert core.item_popularity.min() >= 5
    assert core.sequences.lengths().min() >= 5
    assert core.n_items < ml_small.n_items
    # titles survive re-indexing
    toy = core.items.row(core.item_ids.index(1), named=True)
    assert toy["title"] == "Toy Story (1995)"


def test_predictions_export(tmp_path: Path, ml100k: Dataset) -> None:
    split = leave_one_out(ml100k)
    res = evaluate(PopularityRanker(), split, ks=(20,))
    out = write_predictions(tmp_path / "pred.csv", split.train_valid, res.users, res.ranked)
    lines = out.read_text().splitlines()
    assert lines[0] == "user_id,items"
    assert len(lines) == 944
    first_user, items = lines[1].split(",")
    assert len(items.split()) == 20
    assert int(first_user) in set(ml100k.user_ids.ids.tolist())


def test_bootstrap_and_paired() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(500)
    lo, hi = bootstrap_ci(a, seed=1)
    assert lo < a.mean() < hi
    same = paired_bootstrap(a, a + 0.0)
    assert same.diff == 0 and same.p_value == pytest.approx(1.0)
    better = paired_bootstrap(a, a + 0.05 + rng.normal(0, 0.01, 500))
    assert better.ci_low > 0 and better.p_value < 0.01
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap(a, a[:3])


def test_ranking_shape_validation() -> None:
    with pytest.raises(ValueError, match="2-d of one shape"):
        Ranking(np.zeros((2, 3)), np.zeros((2, 2)))


def test_evaluate_on_synthetic_is_deterministic() -> None:
    ds = make_drifting(n_users=40, n_items=60, n_topics=3, seed=3)
    split = leave_one_out(ds)
    a = evaluate(PopularityRanker(), split).metrics
    b = evaluate(PopularityRanker(), split).metrics
    assert a == b
