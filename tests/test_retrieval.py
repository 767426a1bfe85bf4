"""Retrieval channels and the merger: conformance suite, known answers, references, edge cases."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from driftrank.data import Dataset, make_drifting
from driftrank.errors import ConfigError, DataError, ModelFileError, NotFittedError
from driftrank.retrieval import (
    ALSChannel,
    ALSConfig,
    BPRChannel,
    BPRConfig,
    CandidateMerger,
    CovisitChannel,
    CovisitConfig,
    LightFMChannel,
    LightFMConfig,
    MergerConfig,
    PopularityChannel,
    PopularityConfig,
    PopularityRanker,
    candidate_recall,
)
from driftrank.retrieval._merge import merge_rankings
from driftrank.testing.retrieval import (
    CHANNEL_CHECKS,
    FACTOR_CHECKS,
    check_fold_in_matches_trained,
    check_fold_in_ranks_like_trained,
    check_online_equals_fold_in,
    roundtrip_state,
)
from driftrank.types import Candidates, Ranking

# Small, fast models: the conformance suite runs each check on each channel.
MAKERS = {
    "als": lambda: ALSChannel(ALSConfig(factors=8, iterations=6, regularization=1.0)),
    "als-decay": lambda: ALSChannel(ALSConfig(factors=6, iterations=4, half_life_days=0.5, alpha=2.0)),
    "bpr": lambda: BPRChannel(BPRConfig(factors=8, iterations=20, fold_in_regularization=1.0)),
    "lightfm": lambda: LightFMChannel(LightFMConfig(factors=8, epochs=10)),
    "lightfm-foldin": lambda: LightFMChannel(LightFMConfig(factors=8, epochs=3, user_vectors="fold_in")),
    "covisit": lambda: CovisitChannel(CovisitConfig(window=4, anchors=3)),
    "covisit-decay": lambda: CovisitChannel(CovisitConfig(half_life_days=2.0, backward_weight=0.0)),
    "pop": lambda: PopularityChannel(),
    "pop-recent": lambda: PopularityChannel(PopularityConfig(half_life_days=3.0)),
}
FACTOR_MAKERS = ("als", "als-decay", "bpr", "lightfm-foldin")


@pytest.mark.parametrize("check", CHANNEL_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("kind", list(MAKERS))
def test_channel_conformance(kind, check, small_drifting):
    check(MAKERS[kind], small_drifting)


@pytest.mark.parametrize("check", FACTOR_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("kind", FACTOR_MAKERS)
def test_factor_conformance(kind, check, small_drifting):
    check(MAKERS[kind], small_drifting)


def test_lightfm_trained_vectors_conformance(small_drifting):
    """LightFM serves its own trained vectors. Online updates keep the user's offset from the
    calibrated fold-in (checked exactly); the calibrated fold-in of a training user is only an
    approximation of the trained vector, so it must rank like it (0.87 of the top 10 shared
    measured here, 0.95 on the 300-user fixture; 0.7 required) and explain most of it (R² 0.51
    here, 0.8 on ml-100k with the default settings), but not reproduce it exactly."""
    make = MAKERS["lightfm"]
    check_online_equals_fold_in(make, small_drifting)
    check_fold_in_ranks_like_trained(make, small_drifting, min_overlap=0.7)
    ch = make().fit(small_drifting)
    users = np.arange(small_drifting.n_users)
    trained = ch.user_vectors(users)
    folded = np.stack([ch.fold_in(*_hist(small_drifting, u)) for u in users])
    r2 = 1 - ((folded - trained) ** 2).sum() / ((trained - trained.mean(0)) ** 2).sum()
    assert r2 > 0.4, f"calibrated fold-in explains only {r2:.2f} of the trained vectors"
    with pytest.raises(AssertionError, match="fold-in differs"):
        check_fold_in_matches_trained(make, small_drifting, rtol=1e-3)


def _hist(ds: Dataset, u: int) -> tuple[np.ndarray, np.ndarray]:
    items, times = ds.sequences.user(int(u))
    return items.astype(np.int64), times


# ---------------------------------------------------------------------- ALS against implicit
@pytest.fixture(scope="module")
def als_fit(drifting):
    return ALSChannel(
        ALSConfig(factors=16, iterations=15, regularization=0.5, alpha=2.0, half_life_days=1.0)
    ).fit(drifting)


def test_als_fold_in_matches_implicit_recalculate_user(als_fit, drifting):
    """Our fold-in against implicit's own exact solver (an independent implementation of the same
    least squares) on the same item factors: equal up to float32 rounding."""
    model = als_fit.implicit_model_
    conf = als_fit.confidence(drifting)
    for u in (0, 7, 123, 299):
        with threadpool_limits(1, "blas"):
            ref = model.recalculate_user(u, conf[u])
        ours = als_fit.fold_in(*_hist(drifting, u))
        np.testing.assert_allclose(ours, ref, rtol=2e-3, atol=2e-4)


def test_als_fold_in_close_to_implicits_trained_vectors(als_fit, drifting):
    """Fold-in vs the user factors implicit's training ended with. They differ only because
    training's last user step solved against the item factors of the previous sweep (with 3 CG
    steps), so the gap is what one more half-sweep would still move: measured at a median of
    3.0% and at most 4.5% on this fixture (1.3% / 2.4% on ml-100k with the defaults). The bounds
    (6% / 10%) leave room for BLAS rounding while a fold-in that ignores the confidences, the
    likeliest convention mistake, lands near 20%."""
    trained = als_fit.implicit_model_.user_factors
    served = als_fit.user_vectors(np.arange(drifting.n_users))
    rel = np.linalg.norm(served - trained, axis=1) / np.linalg.norm(trained, axis=1)
    assert np.median(rel) < 0.06 and rel.max() < 0.10, (np.median(rel), rel.max())
    wrong = ALSChannel(
        ALSConfig(factors=16, iterations=15, regularization=0.5, alpha=2.0, half_life_days=1.0)
    )
    wrong._fold_params = lambda: (0.5, 0.0)  # a fold-in ignoring the confidences must be caught
    wrong.fit(drifting)
    served_wrong = wrong.user_vectors(np.arange(drifting.n_users))
    rel_wrong = np.linalg.norm(served_wrong - wrong.implicit_model_.user_factors, axis=1) / np.linalg.norm(
        wrong.implicit_model_.user_factors, axis=1
    )
    assert np.median(rel_wrong) > 0.15


def test_als_scores_are_dot_products_and_match_bruteforce(als_fit, drifting):
    users = np.array([3, 1, 250])
    r = als_fit.candidates(users, 25, exclude=drifting.seen)
    x = als_fit.user_vectors(users).astype(np.float64)
    s = x @ als_fit.item_vectors.astype(np.float64).T
    for j, u in enumerate(users):
        s[j, drifting.seen[u].indices] = -np.inf
        ref = np.argsort(-s[j], kind="stable")[:25]
        # Same set and same order up to float32 near-ties.
        assert len(set(ref.tolist()) & set(r.items[j].tolist())) >= 24
        np.testing.assert_allclose(r.scores[j], s[j, r.items[j]], rtol=1e-4, atol=1e-5)


def test_als_recovers_drifting_topics(als_fit, drifting):
    """On the synthetic data a user's top candidates come mostly from their two topics."""
    users = np.arange(drifting.n_users)
    r = als_fit.candidates(users, 10, exclude=drifting.seen)
    topic = drifting.meta["item_topic"][r.items]
    mine = (topic == drifting.meta["topics"][:, :1]) | (topic == drifting.meta["topics"][:, 1:])
    assert mine.mean() > 0.6, mine.mean()


def test_decay_makes_recent_items_count_more():
    """Two users, same items, opposite orders: with a half-life the newest item weighs more."""
    ds = make_drifting(n_users=80, n_items=60, n_topics=3, events_per_user=(8, 12), seed=4)
    ch = ALSChannel(ALSConfig(factors=8, iterations=5, half_life_days=0.1)).fit(ds)
    items, times = _hist(ds, 0)
    fwd = ch.fold_in(items, times)
    rev = ch.fold_in(items[::-1].copy(), times)  # same times: now the first item is the newest
    assert not np.allclose(fwd, rev)
    y = ch.item_vectors
    # Each vector scores its own newest item above the other's.
    assert fwd @ y[items[-1]] - fwd @ y[items[0]] > rev @ y[items[-1]] - rev @ y[items[0]]
    # Without a half-life, order does not matter.
    flat = ALSChannel(ALSConfig(factors=8, iterations=5, half_life_days=None)).fit(ds)
    np.testing.assert_allclose(flat.fold_in(items, times), flat.fold_in(items[::-1].copy(), times), rtol=1e-5)


def test_online_stats_survive_many_half_lives(small_drifting):
    """Events hundreds of half-lives apart re-anchor the statistics instead of overflowing."""
    ch = ALSChannel(ALSConfig(factors=6, iterations=3, half_life_days=0.01)).fit(small_drifting)
    u = small_drifting.n_users
    items = np.array([1, 2, 3, 4, 5], dtype=np.int64)
    times = 1.6e9 + np.array([0.0, 1.0, 2.0, 3.0, 4.0]) * 86400.0  # 100 half-lives apart
    for i, t in zip(items, times, strict=True):
        ch.observe(np.array([u]), np.array([i]), np.array([t]))
    got = ch.user_vectors(np.array([u]))[0]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ch.fold_in(items, times), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------- co-visitation
def _tiny(seqs: dict[int, list[int]], n_items: int = 6) -> Dataset:
    rows = [(u, i, 1000.0 * u + 10.0 * k) for u, s in seqs.items() for k, i in enumerate(s)]
    inter = pl.DataFrame(
        {"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows], "timestamp": [r[2] for r in rows]}
    )
    items = pl.DataFrame({"item_id": list(range(n_items)), "title": [f"t{i}" for i in range(n_items)]})
    return Dataset.from_frames(inter, items, catalog="all")


def test_covisit_known_answer():
    """Hand-computed co-visitation on three sequences (window 2, distance 1/k, backward 0.5)."""
    ds = _tiny({0: [0, 1, 2], 1: [0, 1, 3], 2: [4, 0]})
    ch = CovisitChannel(CovisitConfig(window=2, distance_power=1.0, backward_weight=0.5, anchors=1)).fit(ds)
    idx = ds.item_ids.index
    # Row of item 0: forward 0->1 (x2), 0->2 at distance 2 (0.5), 0->3 (0.5); backward 0<-4 (0.5 * 1).
    c0 = {idx(1): 2.0, idx(2): 0.5, idx(3): 0.5, idx(4): 0.5}
    total = sum(c0.values())
    user = ds.user_ids.index(2)  # history 4, 0: anchor = item 0
    r = ch.candidates(np.array([user]), 6)
    got = {int(i): float(s) for i, s in zip(r.items[0], r.scores[0], strict=True) if i >= 0}
    assert got == pytest.approx({k: v / total for k, v in c0.items()})
    assert int(r.items[0][0]) == idx(1)


def test_covisit_online_pairs_equal_refit():
    """fit(D) then observe(E) gives the scores of fit(D + E) when E comes after D."""
    ds = make_drifting(n_users=50, n_items=70, n_topics=3, events_per_user=(6, 10), seed=3)
    cut = ds.timestamps < np.quantile(ds.timestamps, 0.7)
    past = ds.filter_rows(cut)
    later = ds.interactions.filter(pl.Series(~cut)).sort("timestamp", maintain_order=True)
    cfg = CovisitConfig(window=3, anchors=4, popularity_power=0.5)
    online = CovisitChannel(cfg).fit(past)
    online.observe(
        later["user"].to_numpy().astype(np.int64),
        later["item"].to_numpy().astype(np.int64),
        later["timestamp"].to_numpy(),
    )
    full = CovisitChannel(cfg).fit(ds)
    users = np.arange(ds.n_users)
    a = online.candidates(users, 30, exclude=ds.seen)
    b = full.candidates(users, 30, exclude=ds.seen)
    np.testing.assert_allclose(
        np.nan_to_num(a.scores, nan=-1), np.nan_to_num(b.scores, nan=-1), rtol=1e-5, atol=1e-7
    )


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), anchors=st.integers(1, 6))
def test_covisit_anchors_are_the_latest_distinct_items(seed: int, anchors: int) -> None:
    """The vectorised anchors equal the plain loop over each history, newest first, with
    repeated items (which make the reader look further back), empty histories, users the log
    holds apart after observe, and users past the log; one user's scores equal the batch's."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 9, 6
    rows = [
        (u, int(rng.integers(n_items)), float(t))
        for u in range(n_users - 2)
        for t in range(rng.integers(0, 14))
    ]
    inter = pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row")
    items = pl.DataFrame({"item_id": list(range(n_items)), "title": [f"t{i}" for i in range(n_items)]})
    users = pl.DataFrame({"user_id": list(range(n_users))})
    ds = Dataset.from_frames(inter, items, users=users, catalog="all")
    ch = CovisitChannel(CovisitConfig(window=3, anchors=anchors)).fit(ds)
    touched = rng.choice(n_users, size=3, replace=False).astype(np.int64)
    with_events = [u for u in range(n_users) if len(ch._log.user(u)[0])]
    if with_events:
        touched[0] = with_events[0]  # one of them has events before: new pairs
    with pytest.MonkeyPatch.context() as mp:  # keep the new pairs in the delta matrix
        mp.setattr("driftrank.retrieval._covisit._MERGE_SHARE", 10.0)
        ch.observe(touched, rng.integers(n_items, size=3).astype(np.int64), np.full(3, 100.0))

    def latest_distinct(u: int) -> list[int]:
        out: list[int] = []
        for it in ch._log.user(u)[0][::-1].tolist():
            if it not in out and len(out) < anchors:
                out.append(it)
        return out

    every = np.arange(n_users + 2, dtype=np.int64)  # two users past the log
    got = ch._recent_distinct(every)
    for u in every.tolist():
        want = latest_distinct(u)
        assert got[u].tolist() == want + [-1] * (anchors - len(want))
        assert ch.anchors_of(u).tolist() == want
    # One user's scores (read off the matrices' rows) are the batch's (a sparse product), bit
    # for bit, with the pairs observed since the fit still in the delta matrix.
    assert ch._delta is not None or not with_events
    batch = ch._scores(every)
    for u in every.tolist():
        np.testing.assert_array_equal(ch._scores(np.array([u])), batch[u : u + 1])
    # and the anchor rows: decay^place / rowsum, items with an empty row left out
    a = ch._anchor_rows(every).toarray()
    for u in every.tolist():
        want_row = np.zeros(n_items)
        for place, it in enumerate(latest_distinct(u)):
            if ch._rowsum[it] > 0:
                want_row[it] = ch.config.anchor_decay**place / ch._rowsum[it]
        # The channel may fold the power and the division in another order: one unit in the last
        # place apart on some machines.
        np.testing.assert_allclose(a[u], want_row, rtol=1e-12, atol=0.0)


def test_covisit_new_item_gains_signal_online(small_drifting):
    ch = CovisitChannel().fit(small_drifting)
    n = small_drifting.n_items
    ch.extend_items(1)
    t = float(small_drifting.timestamps.max())
    # Users 0..4 each watch item 3 then the new item; user 10 then watches item 3.
    for u in range(5):
        ch.observe(np.array([u, u]), np.array([3, n]), np.array([t + u * 10 + 1, t + u * 10 + 2]))
    ch.observe(np.array([10]), np.array([3]), np.array([t + 100]))
    r = ch.candidates(np.array([10]), 5, exclude="seen")
    assert n in r.items[0]
    # Row sums over rows with no entries (an anchor whose pairs are all among those observed
    # since the last merge) are float zeros: numpy's bincount of nothing is int64, and a
    # one-user request once crashed adding the pending pairs' float sums onto it.
    empty = ch._row_sums(sp.csr_matrix((n + 1, n + 1)), np.array([n]), np.array([1.0]))
    assert empty.dtype == np.float64 and not empty.any()


# ---------------------------------------------------------------------- popularity
def test_popularity_known_answer_and_observe():
    ds = _tiny({0: [0, 1, 2], 1: [0, 1], 2: [0]})
    idx = ds.item_ids.index
    pop = PopularityChannel().fit(ds)
    r = pop.candidates(np.array([0]), 6)
    assert [int(i) for i in r.items[0][:3]] == [idx(0), idx(1), idx(2)]
    np.testing.assert_array_equal(r.scores[0][:3], [3.0, 2.0, 1.0])
    assert (r.items[0][3:] == -1).all(), "items without events must not be returned"
    pop.observe(np.array([5, 5, 5]), np.array([idx(2), idx(2), idx(2)]), np.array([1e4, 1e4, 1e4]))
    assert int(pop.candidates(np.array([0]), 1).items[0][0]) == idx(2)


def test_popularity_recency_online_equals_refit():
    ds = make_drifting(n_users=40, n_items=50, n_topics=2, events_per_user=(5, 8), seed=5)
    cut = ds.timestamps < np.quantile(ds.timestamps, 0.6)
    later = ds.interactions.filter(pl.Series(~cut))
    cfg = PopularityConfig(half_life_days=0.5)
    online = PopularityChannel(cfg).fit(ds.filter_rows(cut))
    online.observe(
        later["user"].to_numpy().astype(np.int64),
        later["item"].to_numpy().astype(np.int64),
        later["timestamp"].to_numpy(),
    )
    full = PopularityChannel(cfg).fit(ds)
    np.testing.assert_allclose(online.scores_, full.scores_, rtol=1e-5)


def test_popularity_ranker_known_answer_ml100k(ml100k):
    """The foundation's known answer still holds for the reworked class."""
    from driftrank.eval import evaluate, leave_one_out

    res = evaluate(PopularityRanker(PopularityConfig()), leave_one_out(ml100k), ks=(10,))
    assert res.metrics["HR@10"] == pytest.approx(0.0859, abs=5e-4)
    assert res.metrics["NDCG@10"] == pytest.approx(0.0449, abs=5e-4)


# ---------------------------------------------------------------------- merger
def _ranking(rows: list[list[int]], n: int) -> Ranking:
    items = np.full((len(rows), n), -1, dtype=np.int64)
    scores = np.full((len(rows), n), np.nan, dtype=np.float32)
    for j, r in enumerate(rows):
        items[j, : len(r)] = r
        scores[j, : len(r)] = np.arange(len(r), 0, -1, dtype=np.float32)
    return Ranking(items, scores)


def test_merge_quota_order_known_answer():
    a = _ranking([[1, 2, 3, 4]], 4)
    b = _ranking([[2, 9, 8]], 4)
    c = merge_rankings(np.array([0]), [a, b], ("a", "b"), np.array([2.0, 1.0]), 6, "quota")
    # Positions: a -> 0.5, 1, 1.5, 2; b -> 1, 2, 3. Ties go to channel order; 2 is kept once.
    assert c.items.tolist() == [1, 2, 3, 4, 9, 8]
    np.testing.assert_array_equal(c.ranks[:, 0], [0, 1, 2, 3, np.nan, np.nan])
    np.testing.assert_array_equal(c.ranks[:, 1], [np.nan, 0, np.nan, np.nan, 1, 2])
    np.testing.assert_array_equal(c.scores[1], [3.0, 3.0])


def test_merge_rrf_known_answer():
    a = _ranking([[1, 2, 3]], 3)
    b = _ranking([[3, 4]], 3)
    c = merge_rankings(np.array([5]), [a, b], ("a", "b"), np.array([1.0, 1.0]), 3, "rrf", rrf_k=0.0)
    # rrf: 1 -> 1, 2 -> 1/2, 3 -> 1/3 + 1, 4 -> 1/2: 3 first; 2 and 4 tie, 2 was seen first.
    assert c.items.tolist() == [3, 1, 2]
    assert c.users.tolist() == [5]


def test_merge_zero_quota_adds_no_items_but_keeps_scores():
    a = _ranking([[1, 2], [7]], 2)
    b = _ranking([[2, 5], [8, 7]], 2)
    c = merge_rankings(np.array([0, 1]), [a, b], ("a", "b"), np.array([1.0, 0.0]), 5, "quota")
    assert c.counts().tolist() == [2, 1]
    assert c.items.tolist() == [1, 2, 7]
    np.testing.assert_array_equal(c.ranks[:, 1], [np.nan, 0, 1])


def _merge_reference(lists, quotas, n, order, rrf_k):
    """Per user in plain Python: the merged sequence, first appearances, RRF totals, order."""
    out = []
    n_ch, depth = len(lists), max(r.items.shape[1] for r in lists)
    for row in range(lists[0].items.shape[0]):
        seq = []  # (sort key within the sequence, channel, rank, item)
        for c, r in enumerate(lists):
            for j in range(r.items.shape[1]):
                item = int(r.items[row, j])
                if item < 0 or quotas[c] <= 0:
                    continue
                key = (j + 1) / quotas[c] if order == "quota" else float(j)
                seq.append((key, c, j, item))
        seq.sort(key=lambda e: (e[0], e[1], e[2]) if order == "quota" else (e[2], e[1]))
        first, total = {}, {}
        for pos, (_, c, j, item) in enumerate(seq):
            first.setdefault(item, pos)
            total[item] = total.get(item, 0.0) + quotas[c] / (rrf_k + j + 1.0)
        if order == "quota":
            ranked = sorted(first, key=lambda i: first[i])
        else:
            ranked = sorted(
                first, key=lambda i: (-total[i] + 1e-12 * first[i] / max(1, n_ch * depth), first[i])
            )
        for item in ranked[:n]:
            ch = [
                (c, j, r.scores[row, j])
                for c, r in enumerate(lists)
                for j in range(r.items.shape[1])
                if r.items[row, j] == item
            ]
            out.append((row, item, ch))
    return out


@given(st.integers(0, 2**31 - 1), st.sampled_from(["quota", "rrf"]), st.booleans())
@settings(max_examples=40, deadline=None)
def test_merge_equals_plain_reference(seed, order, sparse_path):
    import driftrank.retrieval._merge as merge_mod

    rng = np.random.default_rng(seed)
    b, n_ch, n_items = int(rng.integers(1, 6)), int(rng.integers(1, 4)), int(rng.integers(3, 30))
    lists = []
    for _ in range(n_ch):
        depth = int(rng.integers(1, n_items + 1))
        items = np.full((b, depth), -1, dtype=np.int64)
        for row in range(b):
            got = rng.permutation(n_items)[: int(rng.integers(0, depth + 1))]
            items[row, : len(got)] = got
        lists.append(
            Ranking(items, np.where(items >= 0, rng.standard_normal(items.shape), np.nan).astype(np.float32))
        )
    quotas = rng.choice([0.0, 0.5, 1.0, 2.0], size=n_ch)
    n = int(rng.integers(1, n_items + 3))
    rrf_k = float(rng.choice([0.0, 60.0]))
    saved = merge_mod._DENSE_SLOTS, merge_mod._DENSE_PER_PAIR
    if sparse_path:  # the sorting path large catalogs take
        merge_mod._DENSE_SLOTS, merge_mod._DENSE_PER_PAIR = 0, 0
    try:
        c = merge_rankings(np.arange(b), lists, tuple(f"c{i}" for i in range(n_ch)), quotas, n, order, rrf_k)
    finally:
        merge_mod._DENSE_SLOTS, merge_mod._DENSE_PER_PAIR = saved
    expect = _merge_reference(lists, quotas, n, order, rrf_k)
    rows = c.user_of_row()
    assert [(int(r), int(i)) for r, i in zip(rows, c.items, strict=True)] == [(r, i) for r, i, _ in expect]
    for k, (_, _, ch) in enumerate(expect):
        want_rank = np.full(n_ch, np.nan, dtype=np.float32)
        want_score = np.full(n_ch, np.nan, dtype=np.float32)
        for cidx, j, sc in ch:
            want_rank[cidx], want_score[cidx] = j, sc
        np.testing.assert_array_equal(c.ranks[k], want_rank)
        np.testing.assert_array_equal(c.scores[k], want_score)


def test_merger_end_to_end_state_and_prefix(small_drifting):
    chans = [MAKERS["als"](), MAKERS["covisit"](), MAKERS["pop"]()]
    merger = CandidateMerger(chans, MergerConfig((("covisit", 2.0), ("als", 1.0), ("pop", 0.1)), depth=40))
    merger.fit(small_drifting)
    users = np.array([0, 5, small_drifting.n_users + 1])
    c = merger.candidates(users, 30, exclude="seen")
    assert isinstance(c, Candidates) and c.sources == ("covisit", "als", "pop")
    assert c.counts().tolist() == [30, 30, 30]
    for j, u in enumerate(users):
        rows = c.items[c.of(j)]
        assert len(set(rows.tolist())) == len(rows)
        assert (
            not set(rows.tolist()) & set(small_drifting.seen[u].indices.tolist())
            if u < small_drifting.n_users
            else True
        )
    # A cold user is served by popularity alone.
    cold = c.scores[c.of(2)]
    assert np.isnan(cold[:, :2]).all() and np.isfinite(cold[:, 2]).all()
    # Each channel's columns agree with that channel's own list.
    als_list = chans[0].candidates(users, 40, exclude="seen")  # the merger asks for depth=40
    rows = c.of(0)
    for item, rank in zip(c.items[rows], c.ranks[rows, 1], strict=True):
        if np.isfinite(rank):
            assert als_list.items[0][int(rank)] == item
    # Shorter lists are prefixes of longer ones.
    short = merger.candidates(users, 12, exclude="seen")
    for j in range(len(users)):
        assert short.items[short.of(j)].tolist() == c.items[c.of(j)][:12].tolist()
    # Save / load through JSON + npz.
    config, arrays = merger.get_state()
    json.dumps(config)
    loaded = CandidateMerger.from_state(json.loads(json.dumps(config)), arrays)
    c2 = loaded.candidates(users, 30, exclude="seen")
    np.testing.assert_array_equal(c2.items, c.items)
    np.testing.assert_array_equal(c2.scores, c.scores)
    # Online events reach every channel.
    merger.observe(np.array([0]), np.array([int(c.items[0])]), np.array([2e9]))
    after = merger.candidates(users[:1], 30, exclude="seen")
    assert int(c.items[0]) not in after.items


def test_candidate_recall_known_answer():
    cands = Candidates(
        users=np.array([0, 1, 2]),
        offsets=np.array([0, 3, 4, 6]),
        items=np.array([5, 6, 7, 1, 2, 3]),
        scores=np.zeros((6, 1), np.float32),
        ranks=np.zeros((6, 1), np.float32),
        sources=("x",),
    )
    rec = candidate_recall(cands, np.array([7, 9, 2]), ns=(1, 2, 3))
    assert rec == {"1": pytest.approx(1 / 3), "2": pytest.approx(1 / 3), "3": pytest.approx(2 / 3)}
    rk = Ranking(np.array([[5, 6, 7], [1, -1, -1], [2, 3, -1]]), np.zeros((3, 3), np.float32))
    assert candidate_recall(rk, np.array([7, 9, 2]), ns=(1, 3)) == {
        "1": pytest.approx(1 / 3),
        "3": pytest.approx(2 / 3),
    }


# ---------------------------------------------------------------------- errors and inputs
def test_configs_validate():
    with pytest.raises(ConfigError, match="factors"):
        ALSConfig(factors=0)
    with pytest.raises(ConfigError, match="regularization"):
        ALSConfig(regularization=0.0)
    with pytest.raises(ConfigError, match="half_life_days"):
        BPRConfig(half_life_days=-1.0)
    with pytest.raises(ConfigError, match="item_features"):
        LightFMConfig(item_features=("colour",))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="window"):
        CovisitConfig(window=0)
    with pytest.raises(ConfigError, match="unique"):
        MergerConfig((("a", 1.0), ("a", 2.0)))
    with pytest.raises(ConfigError, match="positive"):
        MergerConfig((("a", 0.0),))
    with pytest.raises(ConfigError, match="quotas name"):
        CandidateMerger([PopularityChannel()], MergerConfig((("als", 1.0),)))


def test_serving_errors(small_drifting):
    ch = PopularityChannel()
    with pytest.raises(NotFittedError):
        ch.candidates(np.array([0]), 5)
    ch.fit(small_drifting)
    with pytest.raises(DataError, match="positive integer"):
        ch.candidates(np.array([0]), 0)
    with pytest.raises(DataError, match=">= 0"):
        ch.candidates(np.array([-1]), 5)
    with pytest.raises(DataError, match="outside the catalog"):
        ch.observe(np.array([0]), np.array([small_drifting.n_items]), np.array([1.0]))
    with pytest.raises(DataError, match="one length"):
        ch.observe(np.array([0, 1]), np.array([1]), np.array([1.0]))
    with pytest.raises(DataError, match="exclude"):
        ch.candidates(np.array([0]), 5, exclude="everything")  # type: ignore[arg-type]
    als = MAKERS["als"]().fit(small_drifting)
    with pytest.raises(DataError, match="outside the catalog"):
        als.fold_in(np.array([10_000]))
    np.testing.assert_array_equal(als.fold_in(np.zeros(0, np.int64)), np.zeros(als.n_factors, np.float32))


def test_state_refuses_foreign_or_broken(small_drifting):
    als = MAKERS["als"]().fit(small_drifting)
    config, arrays = als.get_state()
    with pytest.raises(ModelFileError, match="type"):
        BPRChannel.from_state(config, arrays)
    with pytest.raises(ModelFileError, match="version"):
        ALSChannel.from_state({**config, "version": 99}, arrays)
    broken = dict(arrays)
    del broken["item_vectors"]
    with pytest.raises(ModelFileError, match="item_vectors"):
        ALSChannel.from_state(config, broken)
    bad = dict(arrays, user_vectors=arrays["user_vectors"][:, :3])
    with pytest.raises(ModelFileError, match="shapes"):
        ALSChannel.from_state(config, bad)


def test_exclude_matrix_of_other_widths(small_drifting):
    """An exclusion matrix built before the catalog grew, or with fewer user rows, still works."""
    ch = MAKERS["covisit"]().fit(small_drifting)
    ch.extend_items(4)
    narrow = small_drifting.seen[:10]
    r = ch.candidates(np.array([3, 50]), 8, exclude=narrow)
    assert not set(r.items[0].tolist()) & set(small_drifting.seen[3].indices.tolist())
    wide = sp.hstack([small_drifting.seen, sp.csr_matrix((small_drifting.n_users, 9))]).tocsr()
    ch.candidates(np.array([3]), 8, exclude=wide)


def test_import_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, driftrank.retrieval; "
        "print(sorted(m for m in ('implicit', 'lightfm', 'torch', 'faiss') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_roundtrip_helper_uses_no_pickle(small_drifting):
    ch = MAKERS["lightfm"]().fit(small_drifting)
    loaded = roundtrip_state(ch)
    users = np.arange(5)
    np.testing.assert_array_equal(ch.candidates(users, 5).items, loaded.candidates(users, 5).items)


# ---------------------------------------------------------------------- real data (slow)
@pytest.mark.slow
def test_accuracy_bands_ml100k(ml100k):
    """Bands around the measured test-split numbers (docs/retrieval.md): a regression in a
    channel, the fold-in or the merge moves them by more than the noise of a refit. The default
    merger must beat its best channel at every N."""
    from driftrank.eval import leave_one_out, metrics_at, rank_targets, target_ranks

    split = leave_one_out(ml100k)
    hist, tg = split.train_valid, split.test
    merger = CandidateMerger.default().fit(hist)
    out = {}
    for ch in merger.channels:
        ranking, _ = rank_targets(ch, hist, tg, 200)
        out[ch.name] = candidate_recall(ranking, tg.items)
        out[ch.name]["ndcg"] = float(metrics_at(target_ranks(ranking.items, tg.items), 10)["NDCG@10"].mean())
    # Measured: covisit 0.777 / 0.111, als 0.721 / 0.077, lightfm 0.759 / 0.084 (R@200 / NDCG@10).
    assert out["covisit"]["200"] > 0.75 and out["covisit"]["ndcg"] > 0.10, out["covisit"]
    assert out["als"]["200"] > 0.69 and out["als"]["ndcg"] > 0.07, out["als"]
    assert out["lightfm"]["200"] > 0.72 and out["lightfm"]["ndcg"] > 0.075, out["lightfm"]
    merged = candidate_recall(merger.candidates(tg.users, 200, exclude=hist.seen), tg.items)
    for n in ("50", "100", "200"):
        best = max(v[n] for v in out.values())
        assert merged[n] > best, (n, merged, out)
