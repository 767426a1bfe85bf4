"""The serving path's shortcuts against slow, obvious references: the sparse helpers and top-k
in ``driftrank.types``, and the caches of the re-ranker, the interest model and the engine
(each must give exactly what a fresh computation gives, also after observe/add_items/load)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from driftrank import types as types_module
from driftrank.data import Dataset, make_drifting
from driftrank.engine import EncoderConfig, Engine, EngineConfig
from driftrank.errors import ConfigError, DataError, UnknownIdError
from driftrank.fusion import FusionConfig
from driftrank.rerank._interest import InterestConfig, InterestModel
from driftrank.rerank._model import SequenceReranker, SequenceRerankerConfig
from driftrank.retrieval import _merge
from driftrank.types import Ranking, csr_coordinates, csr_from_coo, csr_take_rows, insert_events, topk


# ---------------------------------------------------------------------- sparse helpers
def random_csr(rng: np.random.Generator, shape: tuple[int, int], density: float) -> sp.csr_matrix:
    m = sp.random(*shape, density=density, format="csr", dtype=np.float32, random_state=rng)
    m.data[:] = rng.integers(1, 5, size=m.nnz)
    return m


@given(st.integers(0, 2**31 - 1))
@settings(max_examples=40, deadline=None)
def test_csr_take_rows_equals_scipy_indexing(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = random_csr(rng, (int(rng.integers(1, 9)), int(rng.integers(1, 12))), 0.4)
    rows = rng.integers(0, m.shape[0] + 3, size=int(rng.integers(0, 10)))  # some past the end
    got = csr_take_rows(m, rows, n_cols=m.shape[1] + 2)
    expect = np.zeros((len(rows), m.shape[1] + 2), dtype=np.float32)
    inside = rows < m.shape[0]
    expect[inside, : m.shape[1]] = m[rows[inside]].toarray()
    np.testing.assert_array_equal(got.toarray(), expect)
    if inside.all():  # same entries in the same stored order as scipy's fancy indexing
        ref = m[rows]
        np.testing.assert_array_equal(got.indptr, ref.indptr)
        np.testing.assert_array_equal(got.indices, ref.indices)
        np.testing.assert_array_equal(got.data, ref.data)
    r, c = csr_coordinates(m, rows)
    assert sorted(zip(r.tolist(), c.tolist(), strict=True)) == sorted(
        zip(*np.nonzero(expect[:, : m.shape[1]]), strict=True)
    )


def test_csr_coordinates_equal_tocoo_for_any_format() -> None:
    m = random_csr(np.random.default_rng(1), (5, 7), 0.5)
    m.data[0] = 0.0  # an explicit zero is a stored entry too
    coo = m.tocoo()
    rows = np.array([4, 0, 9, 4])  # 9 is past the last row: no entries
    picked = [(j, c) for j, r in enumerate(rows.tolist()) if r < 5 for c in m[r].indices.tolist()]
    for matrix in (m, m.tocoo(), m.tocsc()):
        r, c = csr_coordinates(matrix)
        assert sorted(zip(r.tolist(), c.tolist(), strict=True)) == sorted(
            zip(coo.row.tolist(), coo.col.tolist(), strict=True)
        )
        r, c = csr_coordinates(matrix, rows)
        assert sorted(zip(r.tolist(), c.tolist(), strict=True)) == sorted(picked)


@given(st.integers(0, 2**31 - 1))
@settings(max_examples=40, deadline=None)
def test_csr_from_coo_is_bitwise_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 6)), int(rng.integers(1, 8)))
    nnz = int(rng.integers(0, 30))
    rows = rng.integers(0, shape[0], size=nnz)  # unsorted, with duplicates
    cols = rng.integers(0, shape[1], size=nnz)
    data = rng.normal(size=nnz).astype(np.float32)
    got = csr_from_coo(data, rows, cols, shape)
    ref = sp.csr_matrix((data, (rows, cols)), shape=shape)
    np.testing.assert_array_equal(got.indptr, ref.indptr)
    np.testing.assert_array_equal(got.indices, ref.indices)
    assert got.data.dtype == ref.data.dtype
    np.testing.assert_array_equal(got.data, ref.data)  # duplicates summed in the same order


@given(st.integers(1, 6000), st.integers(1, 300), st.integers(0, 2**31 - 1))
@settings(max_examples=40, deadline=None)
def test_topk_is_the_stable_full_sort(n_items: int, k: int, seed: int) -> None:
    """Many ties (also across the k-th place), NaN, -inf and exclusions, narrow and wide."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=(3, n_items)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.05] = np.nan
    scores[rng.random(scores.shape) < 0.05] = -np.inf
    excl = sp.csr_matrix((rng.random(scores.shape) < 0.2).astype(np.float32))
    for exclude in (excl, csr_coordinates(excl)):
        r = topk(scores, k, exclude)
        s = np.where(np.isfinite(scores), scores, -np.inf).astype(np.float64)
        s[excl.toarray() > 0] = -np.inf
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(s, order, axis=1)
        expect = np.where(np.isfinite(top), order, -1)
        if expect.shape[1] < k:
            expect = np.pad(expect, ((0, 0), (0, k - expect.shape[1])), constant_values=-1)
        np.testing.assert_array_equal(r.items, expect)


@given(st.integers(0, 2**31 - 1), st.booleans())
@settings(max_examples=40, deadline=None)
def test_insert_events_is_the_stable_sort_of_all_events(seed: int, many_users: bool) -> None:
    """insert_events (per-user insertion, or the full re-sort for batches of many users) gives
    exactly a stable sort of stored-then-new events by (user, time)."""
    rng = np.random.default_rng(seed)
    n_users = int(rng.integers(0, 8))
    lengths = rng.integers(0, 6, size=n_users)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    old_users = np.repeat(np.arange(n_users), lengths)
    times = rng.integers(0, 5, size=len(old_users)).astype(np.float64)  # small range: many ties
    order = np.lexsort((times, old_users))
    times = times[order]
    items = rng.integers(0, 100, size=len(times)).astype(np.int64)
    m = int(rng.integers(0, 12))
    users = rng.integers(0, n_users + 3, size=m)
    new_items = rng.integers(100, 200, size=m)
    new_times = rng.integers(0, 5, size=m).astype(np.float64)
    with pytest.MonkeyPatch.context() as mp:
        if many_users:
            mp.setattr(types_module, "_INSERT_MAX_USERS", 0)
        got = insert_events(indptr, items, times, users, new_items, new_times)
    all_users = np.concatenate([old_users, users])
    all_times = np.concatenate([times, new_times])
    ref = np.lexsort((all_times, all_users))
    size = max(n_users, int(users.max()) + 1 if m else 0)
    ref_ptr = np.concatenate([[0], np.cumsum(np.bincount(all_users, minlength=size))])
    np.testing.assert_array_equal(got[0], ref_ptr)
    np.testing.assert_array_equal(got[1], np.concatenate([items, new_items])[ref])
    np.testing.assert_array_equal(got[2], all_times[ref])


@given(st.integers(0, 2**31 - 1), st.integers(1, 5))
@settings(max_examples=40, deadline=None)
def test_event_log_batch_reads_equal_per_user_reads(seed: int, width: int) -> None:
    """EventLog.seen, recent and latest read a batch at once: per user, exactly np.unique of
    the history, its newest ``width`` items and its length and latest time, for users held as CSR rows, users that
    ``add`` moved apart, and users past the log; in any order, with repeats."""
    from driftrank.retrieval._common import EventLog

    rng = np.random.default_rng(seed)
    n_users = int(rng.integers(0, 7))
    lengths = rng.integers(0, 7, size=n_users)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = rng.integers(0, 9, size=int(indptr[-1])).astype(np.int64)  # few items: repeats
    log = EventLog(indptr, items, np.arange(len(items), dtype=np.float64))
    m = int(rng.integers(0, 5))
    log.add(rng.integers(0, n_users + 2, size=m), rng.integers(0, 12, size=m), np.full(m, 1e6))
    users = rng.integers(0, n_users + 4, size=int(rng.integers(0, 10)))
    rows, cols = log.seen(users)
    recent, count = log.recent(users, width)
    lengths, last = log.latest(users)
    for j, u in enumerate(users.tolist()):
        history, times = log.user(u)
        assert lengths[j] == len(history)
        np.testing.assert_array_equal(last[j], times[-1] if len(times) else np.nan)
        np.testing.assert_array_equal(cols[rows == j], np.unique(history))
        newest = history[::-1][:width]
        np.testing.assert_array_equal(recent[j], np.concatenate([newest, np.full(width - len(newest), -1)]))
        assert count[j] == log.length(u)
    assert np.all(np.diff(rows) >= 0)


@given(st.integers(0, 2**31 - 1), st.sampled_from(["rrf", "quota"]))
@settings(max_examples=30, deadline=None)
def test_merge_dense_counting_equals_sorting(seed: int, order: str) -> None:
    """merge_rankings' dense (small catalogs) and sorted (large catalogs) paths agree exactly."""
    rng = np.random.default_rng(seed)
    b, n_items = int(rng.integers(1, 5)), int(rng.integers(1, 50))
    lists = []
    for _ in range(int(rng.integers(1, 4))):
        depth = int(rng.integers(1, 12))
        items = np.full((b, depth), -1, dtype=np.int64)
        scores = np.full((b, depth), np.nan, dtype=np.float32)
        for r in range(b):
            m = int(rng.integers(0, min(depth, n_items) + 1))
            items[r, :m] = rng.choice(n_items, size=m, replace=False)
            scores[r, :m] = np.sort(rng.random(m))[::-1]
        lists.append(Ranking(items, scores))
    quotas = rng.choice([0.0, 0.5, 1.0, 3.0], size=len(lists))
    quotas[0] = 1.0
    names = tuple("abc"[: len(lists)])
    users = np.arange(b) * 2
    out = []
    for slots, per_pair in ((10**9, 10**9), (0, 0)):  # always dense, never dense
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_merge, "_DENSE_SLOTS", slots)
            mp.setattr(_merge, "_DENSE_PER_PAIR", per_pair)
            out.append(_merge.merge_rankings(users, lists, names, quotas, 15, order))  # type: ignore[arg-type]
    dense, sort = out
    for f in ("offsets", "items", "scores", "ranks"):
        np.testing.assert_array_equal(getattr(dense, f), getattr(sort, f))


@given(st.integers(0, 2**31 - 1))
@settings(max_examples=40, deadline=None)
def test_merge_of_one_user_equals_the_batch_path(seed: int) -> None:
    """merge_rankings' one-user shortcut (order "rrf") gives exactly what the batch path gives
    for that user's rows (checked in a batch of two copies of the user)."""
    rng = np.random.default_rng(seed)
    n_items = int(rng.integers(1, 40))
    lists = []
    for _ in range(int(rng.integers(1, 5))):
        depth = int(rng.integers(1, 15))
        items = np.full((1, depth), -1, dtype=np.int64)
        scores = np.full((1, depth), np.nan, dtype=np.float32)
        m = int(rng.integers(0, min(depth, n_items) + 1))
        items[0, :m] = rng.choice(n_items, size=m, replace=False)
        scores[0, :m] = np.sort(rng.random(m))[::-1]
        lists.append(Ranking(items, scores))
    quotas = rng.choice([0.0, 0.5, 1.0, 3.0], size=len(lists))
    quotas[0] = 1.0
    names = tuple("abcd"[: len(lists)])
    n = int(rng.integers(1, 20))
    one = _merge.merge_rankings(np.array([4]), lists, names, quotas, n, "rrf")
    pair = [Ranking(np.repeat(r.items, 2, axis=0), np.repeat(r.scores, 2, axis=0)) for r in lists]
    batch = _merge.merge_rankings(np.array([4, 4]), pair, names, quotas, n, "rrf")
    rows = slice(0, int(batch.offsets[1]))
    np.testing.assert_array_equal(one.offsets, batch.offsets[:2])
    np.testing.assert_array_equal(one.items, batch.items[rows])
    np.testing.assert_array_equal(one.scores, batch.scores[rows])
    np.testing.assert_array_equal(one.ranks, batch.ranks[rows])
    assert one.sources == batch.sources


# ---------------------------------------------------------------------- component caches
def tiny_reranker(ds: Dataset) -> SequenceReranker:
    cfg = SequenceRerankerConfig(
        dim=16, n_layers=1, n_heads=2, max_len=12, max_epochs=2, early_stopping=False
    )
    vecs = np.random.default_rng(0).normal(size=(ds.n_items, 8)).astype(np.float32)
    return SequenceReranker(cfg).fit(ds, vecs)


def test_reranker_item_tables_follow_weight_changes(small_drifting: Dataset) -> None:
    model = tiny_reranker(small_drifting)
    users = np.array([0, 3])
    cands = [np.arange(0, 30), np.arange(10, 25)]
    before = model.score(users, cands)  # fills the cache
    np.testing.assert_array_equal(model.score(users, cands), before)
    # extend_items swaps the item tensors: new items get scores, old ones a fresh computation's
    n = model.n_items
    model.extend_items(np.ones((2, 8), dtype=np.float32))
    with_new = [np.array([0, n, 5, n + 1]), np.arange(10, 25)]
    fresh = SequenceReranker.from_state(*model.get_state())
    np.testing.assert_array_equal(model.score(users, with_new), fresh.score(users, with_new))
    # an in-place weight change (what an optimiser step or load_state_dict does) is seen too
    with torch.no_grad():
        model.net_.item_bias.add_(1.0)  # type: ignore[union-attr]
    changed = model.score(users, cands)
    fresh = SequenceReranker.from_state(*model.get_state())
    np.testing.assert_array_equal(changed, fresh.score(users, cands))
    assert not np.array_equal(changed, before)
    # so is a replaced tensor, even one whose version counter matches the old one's
    net = model.net_
    assert net is not None
    net.text = torch.flip(net.text, dims=[0]).contiguous()
    replaced = model.score(users, cands)
    fresh = SequenceReranker.from_state(*model.get_state())
    np.testing.assert_array_equal(replaced, fresh.score(users, cands))
    assert not np.array_equal(replaced, changed)


def test_interest_memo_follows_observe_and_returns_copies(small_drifting: Dataset) -> None:
    vecs = np.random.default_rng(1).normal(size=(small_drifting.n_items, 6)).astype(np.float32)
    model = InterestModel(InterestConfig(mode="both")).fit(small_drifting, vecs)
    users = np.array([2, 5])
    first = model.vectors(users)
    first[:] = 0.0  # the caller's copy: must not reach the memo
    again = model.vectors(users)
    assert np.abs(again).sum() > 0
    # "at the latest event" and at that event's time are the same request
    last = np.array([model.history(int(u))[1][-1] for u in users])
    np.testing.assert_array_equal(model.vectors(users, last), again)
    np.testing.assert_array_equal(model.mass(users, last), model.mass(users))
    # an event before user 2's latest one: the request looks the same, the interest is not
    model.observe(np.array([2]), np.array([7]), np.array([last[0] - 60.0]))
    fresh = InterestModel.from_state(*model.get_state())
    np.testing.assert_array_equal(model.vectors(users), fresh.vectors(users))
    assert not np.array_equal(model.vectors(users)[0], again[0])
    model.observe(np.array([2]), np.array([9]), np.array([last[0] + 3600.0]))
    fresh = InterestModel.from_state(*model.get_state())
    np.testing.assert_array_equal(model.vectors(users), fresh.vectors(users))
    items = np.array([1, 2, 3, 4])
    np.testing.assert_array_equal(
        model.similarity(np.array([2, 2, 5, 5]), items), fresh.similarity(np.array([2, 2, 5, 5]), items)
    )


# ---------------------------------------------------------------------- the engine
def small_config() -> EngineConfig:
    return EngineConfig(
        encoder=EncoderConfig(kind="hashing", dim=64),
        reranker=SequenceRerankerConfig(dim=32, n_layers=1, max_epochs=2, n_hard=8, n_random=16),
        fusion_config=FusionConfig(max_epochs=15),
        n_candidates=40,
    )


@pytest.fixture(scope="module")
def saved_engine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Dataset]:
    data = make_drifting(n_users=60, n_items=90, n_topics=4, events_per_user=(10, 16), seed=7)
    engine = Engine(small_config()).fit(data)
    return engine.save(tmp_path_factory.mktemp("serving") / "model"), data


def _same(a: list, b: list) -> None:
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.item_ids, y.item_ids)
        np.testing.assert_array_equal(x.scores, y.scores)
        assert x.titles == y.titles
        assert x.contributions.keys() == y.contributions.keys()
        for g in x.contributions:
            np.testing.assert_array_equal(x.contributions[g], y.contributions[g])


def test_engine_caches_follow_observe_and_add_items(saved_engine: tuple[Path, Dataset]) -> None:
    """A warm engine (every cache filled) answers exactly like a freshly loaded one that went
    through the same updates without serving anything before."""
    path, data = saved_engine
    warm, cold = Engine.load(path), Engine.load(path)
    users = list(data.user_ids.ids[:8])
    _same([warm.rank(u, k=10) for u in users], [cold.rank(u, k=10) for u in users])

    warm.rank(text="space heist", k=3)  # fills the titles cache with the old catalog
    new_items = [
        {"item_id": 10_000 + j, "title": f"brand new film {j}", "text": f"space heist caper {j}"}
        for j in range(3)
    ]
    events = [(users[0], new_items[0]["item_id"], 2e9), (users[1], data.item_ids.ids[4], 2e9 + 1)]
    warm.add_items(new_items)
    warm.observe(events)
    fresh = Engine.load(path)
    fresh.add_items(new_items)
    fresh.observe(events)
    _same([warm.rank(u, k=10) for u in users], [fresh.rank(u, k=10) for u in users])
    _same(warm.rank_batch(users, k=10), fresh.rank_batch(users, k=10))
    # titles come from the grown catalog
    title_of = dict(zip(data.items["item_id"].to_list(), data.items["title"].to_list(), strict=True))
    title_of.update({it["item_id"]: it["title"] for it in new_items})
    r = warm.rank(text="space heist caper", k=5)
    assert {it["item_id"] for it in new_items} & set(r.item_ids.tolist())
    assert r.titles == [title_of[i] for i in r.item_ids.tolist()]
    # and a save/load of the updated engine still ranks the same
    warm.save(path.parent / "updated")
    again = Engine.load(path.parent / "updated")
    _same([again.rank(u, k=10) for u in users], [warm.rank(u, k=10) for u in users])
    # clear_caches forgets the encoded histories; they are recomputed to the same rankings
    warm.clear_caches()
    again.clear_caches()
    _same(warm.rank_batch(users, k=10), again.rank_batch(users, k=10))
    assert [r.item_ids.tolist() for r in warm.rank_batch(users, k=10)] == [
        r.item_ids.tolist() for r in again.rank_batch(users, k=10)
    ]


def test_observe_and_prepare_encode_histories_ahead_of_requests(saved_engine: tuple[Path, Dataset]) -> None:
    """``observe`` (with ``encode_on_observe``, the default) and ``prepare`` encode the users'
    latest histories, so their next requests encode nothing; rankings are unchanged."""
    path, data = saved_engine
    users = list(data.user_ids.ids[:5])
    t = float(data.timestamps.max()) + 3600.0
    events = [(users[0], data.item_ids.ids[3], t), (users[1], data.item_ids.ids[5], t + 1.0)]

    def counting(engine: Engine) -> list[int]:
        net = engine._reranker.net_  # type: ignore[union-attr]
        calls = [0]
        encode = net.encode

        def wrapped(*args: object, **kwargs: object) -> object:
            calls[0] += len(args[1])  # type: ignore[arg-type]  # rows encoded
            return encode(*args, **kwargs)

        net.encode = wrapped  # type: ignore[method-assign]
        return calls

    lazy, eager = Engine.load(path), Engine.load(path)
    lazy.config = dataclasses.replace(lazy.config, encode_on_observe=False)
    lazy_calls, eager_calls = counting(lazy), counting(eager)
    reranker = eager._reranker
    assert reranker is not None
    query = reranker._query
    queried = [0]

    def counting_query(*args: object, **kwargs: object) -> object:
        queried[0] += 1
        return query(*args, **kwargs)  # type: ignore[arg-type]

    reranker._query = counting_query  # type: ignore[method-assign]
    # The model file holds the encoded histories and the query sides that fit computed.
    loaded = [eager.rank(u, k=10) for u in users]
    assert eager_calls[0] == 0 and queried[0] == 0
    del reranker._query
    lazy.clear_caches()
    eager.clear_caches()  # from here on nothing is memoised
    eager.prepare(users)
    assert eager_calls[0] == len(users)
    expected = [lazy.rank(u, k=10) for u in users]  # the lazy engine encodes on request
    assert lazy_calls[0] == len(users)
    got = [eager.rank(u, k=10) for u in users]
    assert eager_calls[0] == len(users)  # nothing more
    _same(loaded, got)
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a.item_ids, b.item_ids)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)

    lazy.observe(events)
    eager.observe(events)
    assert lazy_calls[0] == len(users) and eager_calls[0] == len(users) + 2  # the two touched users
    expected = [lazy.rank(u, k=10) for u in users[:2]]
    got = [eager.rank(u, k=10) for u in users[:2]]
    assert lazy_calls[0] == len(users) + 2 and eager_calls[0] == len(users) + 2
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a.item_ids, b.item_ids)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)
    # prepare checks its input like rank_batch
    with pytest.raises(UnknownIdError):
        eager.prepare(["no such user"])
    with pytest.raises(DataError, match="sequence of user ids"):
        eager.prepare("u1")  # type: ignore[arg-type]


def test_add_items_keeps_the_encoded_histories(saved_engine: tuple[Path, Dataset]) -> None:
    """New items leave the old items' vectors alone, so ``add_items`` keeps every user's encoded
    history: the next requests encode nothing and rank as an engine that encodes afresh."""
    path, data = saved_engine
    users = list(data.user_ids.ids[:6])
    new_items = [
        {"item_id": 20_000 + j, "title": f"new film {j}", "text": f"a heist in space {j}"} for j in range(3)
    ]
    kept, fresh = Engine.load(path), Engine.load(path)
    net = kept._reranker.net_  # type: ignore[union-attr]
    calls = [0]
    encode = net.encode

    def counting(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        return encode(*args, **kwargs)

    net.encode = counting  # type: ignore[method-assign]
    kept.add_items(new_items)
    got = [kept.rank(u, k=10) for u in users] + kept.rank_batch(users, k=10)
    assert calls[0] == 0
    fresh.clear_caches()
    fresh.add_items(new_items)
    expected = [fresh.rank(u, k=10) for u in users] + fresh.rank_batch(users, k=10)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a.item_ids, b.item_ids)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, atol=1e-6)


def test_memo_capacity_bounds_the_memo_and_leaves_rankings_alone(saved_engine: tuple[Path, Dataset]) -> None:
    path, data = saved_engine
    users = list(data.user_ids.ids[:10])
    full, small, none = Engine.load(path), Engine.load(path), Engine.load(path)
    assert full.memo_entries == 200_000
    full.clear_caches()  # loaded with every stored user's state; count from none
    small.memo_entries = 4
    none.memo_entries = 0
    expected = [full.rank(u, k=10) for u in users]

    def memo_size(engine: Engine) -> int:
        memo = engine._reranker._memo  # type: ignore[union-attr]
        return 0 if memo is None else len(memo[1])

    assert memo_size(full) == 2 * len(users)  # a state and a query side per user
    for engine in (small, none):
        for _ in range(2):  # the second pass reads what the first left, or recomputes it
            _same([engine.rank(u, k=10) for u in users], expected)
        _same(engine.rank_batch(users, k=10), full.rank_batch(users, k=10))
    assert memo_size(small) == 4 and memo_size(none) == 0
    none.prepare()  # nothing to keep
    assert memo_size(none) == 0
    full.memo_entries = 3  # shrinking drops the oldest entries now
    assert memo_size(full) == 3 and full.memo_entries == 3
    for bad in (-1, 2.5, True, "10"):
        with pytest.raises(ConfigError, match="memo_entries must be a non-negative integer"):
            full.memo_entries = bad  # type: ignore[assignment]
    assert full.memo_entries == 3
    # an engine without the re-ranker memoises nothing and says so when asked to
    data_small = make_drifting(n_users=20, n_items=30, n_topics=2, events_per_user=(6, 8), seed=3)
    plain = Engine(dataclasses.replace(small_config(), reranker=None)).fit(data_small)
    assert plain.memo_entries == 0
    with pytest.raises(ConfigError, match="no re-ranker"):
        plain.memo_entries = 10


def test_merger_channel_lists_equal_each_channels_candidates(saved_engine: tuple[Path, Dataset]) -> None:
    """The one-user shortcut of CandidateMerger.channel_lists returns exactly every channel's
    own ``candidates`` (and so does the batch path)."""
    path, data = saved_engine
    engine = Engine.load(path)
    merger = engine._merger
    assert merger is not None and len(merger.channels) >= 2
    for users in (np.array([3]), np.array([len(data.user_ids) + 5]), np.array([0, 5, 7])):
        for exclude in (None, engine._seen_matrix(users), "seen"):
            got = merger.channel_lists(users, 25, exclude=exclude)  # type: ignore[arg-type]
            want = [ch.candidates(users, 25, exclude=exclude) for ch in merger.channels]  # type: ignore[arg-type]
            for a, b in zip(got, want, strict=True):
                np.testing.assert_array_equal(a.items, b.items)
                np.testing.assert_array_equal(a.scores, b.scores)
