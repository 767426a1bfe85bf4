"""Cold start: the split holds out exactly what it says (checked against a slow, obvious reference),
and the engine retrieves and scores new items and new users."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import small_engine_config
from driftrank.data import Dataset, make_drifting
from driftrank.engine import Engine, EngineConfig
from driftrank.engine._ranker import EngineRanker
from driftrank.errors import ConfigError, DataError
from driftrank.eval import ColdStartSplit, cold_start_split
from driftrank.types import Candidates, Ranking

Event = tuple[object, object, float]  # raw user id, raw item id, unix seconds


def _events(ds: Dataset) -> dict[object, list[Event]]:
    """Each raw user's events in time order (ties by source row), as raw ids."""
    inter = ds.interactions.sort(["user", "timestamp", "row"])
    uids, iids = ds.user_ids.ids, ds.item_ids.ids
    out: dict[object, list[Event]] = defaultdict(list)
    for u, i, t in zip(inter["user"].to_list(), inter["item"].to_list(), inter["timestamp"].to_list()):
        out[uids[u].item()].append((uids[u].item(), iids[i].item(), float(t)))
    return out


@dataclass
class _Expected:
    train: list[Event]
    warm: dict[object, Event]
    new_item: dict[object, Event]
    hist: dict[object, list[Event]]
    target: dict[object, Event]


def _reference(ds: Dataset, held: set[object], new_users: set[object], h: int) -> _Expected:
    """What the split should hold, computed user by user with plain loops."""
    out = _Expected([], {}, {}, {}, {})
    for u, evs in _events(ds).items():
        if u in new_users:
            out.hist[u], out.target[u] = evs[:h], evs[h]
            continue
        warm_evs = [e for e in evs if e[1] not in held]
        if len(warm_evs) >= 2:
            out.warm[u] = warm_evs[-1]
            warm_evs = warm_evs[:-1]
        out.train += warm_evs
        if warm_evs:
            on_held = [e for e in evs if e[1] in held]
            if on_held:
                out.new_item[u] = on_held[0]
    return out


def _check(ds: Dataset, s: ColdStartSplit, h: int) -> None:
    cat = s.catalog.ids
    n_tr = s.train.n_items
    held = set(cat[s.held_out_items].tolist())
    new_users = set(s.new_users.user_ids.tolist())
    ref = _reference(ds, held, new_users, h)

    # the catalog: training vocabulary, then exactly the items without a training event
    assert cat[:n_tr].tolist() == s.train.item_ids.ids.tolist()
    assert sorted(cat.tolist()) == sorted(ds.item_ids.ids.tolist())
    assert s.new_items["item_id"].to_list() == cat[n_tr:].tolist()
    assert s.new_items["title"].to_list() == [
        ds.items["title"][ds.item_ids.index(i)] for i in cat[n_tr:].tolist()
    ]
    assert s.held_out_items.tolist() == list(range(n_tr, n_tr + len(held)))

    # training names no held-out item and no new user, anywhere
    tr_items = set(s.train.item_ids.ids.tolist())
    assert not held & tr_items
    assert not held & set(s.train.items["item_id"].to_list())
    assert not new_users & set(s.train.user_ids.ids.tolist())
    got_train = sorted(
        (s.train.user_ids.ids[u].item(), s.train.item_ids.ids[i].item(), float(t))
        for u, i, t in zip(s.train.user_index, s.train.item_index, s.train.timestamps)
    )
    assert got_train == sorted(ref.train)  # type: ignore[type-var]

    def as_events(users: np.ndarray, items: np.ndarray, times: np.ndarray, uids: np.ndarray) -> dict:
        return {
            uids[u].item(): (uids[u].item(), cat[i].item(), float(t)) for u, i, t in zip(users, items, times)
        }

    tu = s.train.user_ids.ids
    t = s.warm_targets
    assert as_events(t.users, t.items, t.timestamps, tu) == ref.warm
    t = s.new_item_targets
    assert as_events(t.users, t.items, t.timestamps, tu) == ref.new_item
    assert set(cat[t.items].tolist()) <= held

    # new users: their first h events, then the next one, in time order
    nu = s.new_users
    assert nu.targets.users.tolist() == list(range(s.train.n_users, s.train.n_users + len(nu)))
    for j, uid in enumerate(nu.user_ids.tolist()):
        items, times = nu.history.user(j)
        assert 1 <= len(items) <= 3 and len(items) == h
        assert [(uid, cat[i].item(), float(x)) for i, x in zip(items, times)] == ref.hist[uid]
        assert np.all(np.diff(times) >= 0) and times.max() <= nu.targets.timestamps[j]
        assert (uid, cat[nu.targets.items[j]].item(), float(nu.targets.timestamps[j])) == ref.target[uid]
    assert set(ref.hist) == new_users


def test_split_holds_out_what_it_says(drifting: Dataset) -> None:
    s = cold_start_split(drifting, item_share=0.1, user_share=0.1, new_user_history=3, seed=0)
    _check(drifting, s, 3)
    with_events = int((drifting.item_popularity > 0).sum())
    assert len(s.held_out_items) == round(0.1 * with_events)
    eligible = int((drifting.sequences.lengths() > 3).sum())
    assert len(s.new_users) == round(0.1 * eligible)
    assert len(s.new_item_targets) > 0 and len(s.warm_targets) > 0
    assert s.info["n_train_interactions"] == s.train.n_interactions
    assert s.is_new_item(np.array([0, s.train.n_items, -1])).tolist() == [False, True, False]


@given(
    st.integers(0, 2**16),
    st.sampled_from([0.0, 0.05, 0.3]),
    st.sampled_from([0.0, 0.1, 0.5]),
    st.integers(1, 3),
)
@settings(max_examples=15, deadline=None)
def test_split_invariants_hold_for_any_seed_and_shares(
    seed: int, item_share: float, user_share: float, h: int
) -> None:
    ds = make_drifting(n_users=25, n_items=40, n_topics=2, events_per_user=(3, 9), seed=seed % 7)
    s = cold_start_split(ds, item_share=item_share, user_share=user_share, new_user_history=h, seed=seed)
    _check(ds, s, h)


def test_split_on_ml100k_has_no_leak(ml100k: Dataset) -> None:
    s = cold_start_split(ml100k, seed=0)
    cat = s.catalog.ids
    held = set(cat[s.held_out_items].tolist())
    assert len(held) == round(0.1 * ml100k.n_items)
    assert not held & set(s.train.item_ids.ids.tolist())
    assert not set(s.new_users.user_ids.tolist()) & set(s.train.user_ids.ids.tolist())
    # every warm user's history (their training events) precedes nothing they are tested on
    # that the split removed: targets are absent from training
    seen = s.train.seen.tocsr()
    t = s.new_item_targets
    assert np.all(t.items >= s.train.n_items)
    w = s.warm_targets
    inside = w.items < s.train.n_items
    # (warm users may have rated an item once only; the target pair is not in training)
    assert not np.asarray(seen[w.users[inside], w.items[inside]]).any()
    assert s.info["n_new_users"] == len(s.new_users) > 50


def test_same_seed_same_split_other_seed_other_split(small_drifting: Dataset) -> None:
    a = cold_start_split(small_drifting, seed=3)
    b = cold_start_split(small_drifting, seed=3)
    c = cold_start_split(small_drifting, seed=4)
    assert a.catalog == b.catalog and a.train.user_ids == b.train.user_ids
    assert a.new_users.user_ids.tolist() == b.new_users.user_ids.tolist()
    np.testing.assert_array_equal(a.new_item_targets.items, b.new_item_targets.items)
    np.testing.assert_array_equal(a.train.item_index, b.train.item_index)
    assert a.new_items.equals(b.new_items)
    held = {x for x in a.catalog.ids[a.held_out_items].tolist()}
    assert held != set(c.catalog.ids[c.held_out_items].tolist())
    assert a.new_users.user_ids.tolist() != c.new_users.user_ids.tolist()


def test_item_draw_does_not_depend_on_user_share(small_drifting: Dataset) -> None:
    a = cold_start_split(small_drifting, user_share=0.1, seed=1)
    b = cold_start_split(small_drifting, user_share=0.3, seed=1)
    assert set(a.catalog.ids[a.held_out_items].tolist()) == set(b.catalog.ids[b.held_out_items].tolist())


def test_zero_shares_hold_out_only_warm_targets(small_drifting: Dataset) -> None:
    s = cold_start_split(small_drifting, item_share=0.0, user_share=0.0)
    assert len(s.held_out_items) == 0 and len(s.new_users) == 0 and len(s.new_item_targets) == 0
    assert len(s.warm_targets) == small_drifting.n_users
    assert s.train.n_interactions == small_drifting.n_interactions - small_drifting.n_users


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"item_share": 1.0}, ConfigError, r"item_share must be in \[0, 1\), got 1.0"),
        ({"item_share": -0.1}, ConfigError, r"item_share must be in \[0, 1\), got -0.1"),
        ({"user_share": float("nan")}, ConfigError, r"user_share must be in \[0, 1\), got nan"),
        ({"user_share": True}, ConfigError, "user_share must be a number in"),
        ({"user_share": "0.1"}, ConfigError, "user_share must be a number in"),
        ({"new_user_history": 0}, ConfigError, "new_user_history must be a positive integer, got 0"),
        ({"new_user_history": 2.5}, ConfigError, "new_user_history must be a positive integer, got 2.5"),
        ({"seed": -1}, ConfigError, "seed must be a non-negative integer, got -1"),
        ({"new_user_history": 20}, DataError, "no users with more than 20 events to hold out"),
        ({"item_share": 0.999}, DataError, r"item_share=0.999 would hold out (\d+) of the \1 items with"),
    ],
)
def test_bad_arguments_are_refused_clearly(
    small_drifting: Dataset, kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        cold_start_split(small_drifting, **kwargs)  # type: ignore[arg-type]


def test_bad_data_is_refused_clearly(small_drifting: Dataset) -> None:
    with pytest.raises(DataError, match="takes a driftrank Dataset, got DataFrame"):
        cold_start_split(pl.DataFrame({"user_id": [1]}))  # type: ignore[arg-type]
    empty = small_drifting.filter_rows(np.zeros(small_drifting.n_interactions, dtype=bool))
    with pytest.raises(DataError, match="has no interactions"):
        cold_start_split(empty)


# ---------------------------------------------------------------------- the engine's cold paths
def _small_config(**kw: object) -> EngineConfig:
    return small_engine_config(**{"cold_item_slots": 6, "cold_item_dropout": 0.2, **kw})


@pytest.fixture(scope="module")
def cold_split() -> ColdStartSplit:
    data = make_drifting(n_users=70, n_items=100, n_topics=4, events_per_user=(10, 16), seed=4)
    return cold_start_split(data, item_share=0.15, user_share=0.1, seed=0)


@pytest.fixture(scope="module")
def cold_model(cold_split: ColdStartSplit, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An engine fitted on the cold-start training data, saved once (tests load their own copy)."""
    engine = Engine(_small_config()).fit(cold_split.train)
    return engine.save(tmp_path_factory.mktemp("cold") / "model")


@pytest.fixture
def cold_engine(cold_model: Path, cold_split: ColdStartSplit) -> Engine:
    engine = Engine.load(cold_model)
    assert engine.add_items(cold_split.new_items) == len(cold_split.new_items)
    return engine


def _candidates(engine: Engine, users: np.ndarray) -> Candidates:
    adapter = EngineRanker(engine.config)
    adapter.engine = engine
    return adapter.candidates(users, engine.config.n_candidates, exclude=None)


def test_added_items_are_retrieved_and_scored(cold_engine: Engine, cold_split: ColdStartSplit) -> None:
    n_tr = cold_split.n_train_items
    users = np.arange(cold_split.train.n_users)
    cands = _candidates(cold_engine, users)
    new_rows = cands.items >= n_tr
    per_user = np.bincount(cands.user_of_row()[new_rows], minlength=len(users))
    assert per_user.max() <= 6  # the reserved slots, no more
    assert (per_user > 0).mean() > 0.9  # the interest channel finds new items for almost everyone
    assert np.all(cands.counts() <= 40)
    interest = cands.sources.index("interest")
    # retrieved by the interest channel only: every CF column is missing, the interest one is set
    assert np.isfinite(cands.scores[new_rows, interest]).all()
    cf = np.array([c for c, name in enumerate(cands.sources) if name != "interest"])
    assert np.isnan(cands.scores[np.ix_(new_rows, cf)]).all()
    scores, _ = cold_engine._score(cands, None)
    assert np.isfinite(scores[new_rows]).all()
    # and they are ranked by the public call, not dropped on the way
    ranked = cold_engine.rank_batch(list(cold_split.train.user_ids.ids), k=40)
    new_ids = set(cold_split.new_items["item_id"].to_list())
    assert np.mean([bool(new_ids & set(r.item_ids.tolist())) for r in ranked]) > 0.9


def test_without_reserved_slots_new_items_are_never_retrieved(
    cold_engine: Engine, cold_split: ColdStartSplit
) -> None:
    # The behaviour before the slots existed: the reciprocal-rank merge drops every new item.
    cold_engine.config = dataclasses.replace(cold_engine.config, cold_item_slots=0)
    cands = _candidates(cold_engine, np.arange(cold_split.train.n_users))
    assert not (cands.items >= cold_split.n_train_items).any()


def test_new_user_and_new_items_through_rank(cold_engine: Engine, cold_split: ColdStartSplit) -> None:
    nu = cold_split.new_users
    items, times = nu.history.user(0)
    history = list(zip(cold_split.catalog.ids[items].tolist(), times.tolist(), strict=True))
    uid = nu.user_ids[0].item()
    r = cold_engine.rank(uid, k=10, history=history)
    assert len(r) == 10 and not set(cold_split.catalog.ids[items].tolist()) & set(r.item_ids.tolist())
    assert np.isfinite(r.scores).all()
    assert cold_engine.history(uid)["item_id"].to_list() == cold_split.catalog.ids[items].tolist()


def test_fusion_trains_with_simulated_new_items(cold_model: Path, cold_split: ColdStartSplit) -> None:
    engine = Engine.load(cold_model)
    n = cold_split.train.n_items
    mask = engine._simulated_cold(n)
    assert mask is not None and mask.dtype == bool and mask.shape == (n,)
    again = engine._simulated_cold(n)
    assert again is not None and np.array_equal(mask, again)  # same seed, same items
    assert engine.fit_report["fusion_simulated_cold_items"] == int(mask.sum()) > 0
    users = np.arange(cold_split.train.n_users)
    cands = engine._candidates(users, None, exclude=None, cold_as=mask)
    rows = mask[cands.items]
    cf = np.array([c for c, name in enumerate(cands.sources) if name != "interest"])
    assert rows.any() and np.isnan(cands.scores[np.ix_(rows, cf)]).all()
    inputs = engine._fusion_input(cands, None, cold_as=mask)
    assert np.all(inputs.item_signals["popularity"][mask] == 0)
    assert np.isnan(inputs.signals["item_age_days"][rows]).all()
    off = Engine(dataclasses.replace(engine.config, cold_item_dropout=0.0))
    assert off._simulated_cold(n) is None


def test_drop_items_and_reserve_cold_known_answers() -> None:
    from driftrank.engine._engine import _drop_items, _reserve_cold

    r = Ranking(
        np.array([[4, 2, 7, -1], [1, 3, 2, 0]]), np.array([[9, 8, 7, np.nan], [6, 5, 4, 3]], np.float32)
    )
    drop = np.zeros(8, dtype=bool)
    drop[[2, 0]] = True
    d = _drop_items(r, drop)
    assert d.items.tolist() == [[4, 7, -1, -1], [1, 3, -1, -1]]
    np.testing.assert_array_equal(d.scores[:, :2], [[9, 7], [6, 5]])
    assert np.isnan(d.scores[:, 2:]).all()

    # two users, sources ("cf", "interest"); user 0 has 3 candidates, user 1 has 1
    cands = Candidates(
        users=np.array([5, 6]),
        offsets=np.array([0, 3, 4]),
        items=np.array([1, 2, 3, 1]),
        scores=np.array([[0.9, np.nan], [0.8, 0.5], [0.7, np.nan], [0.6, np.nan]], np.float32),
        ranks=np.array([[0, np.nan], [1, 0], [2, np.nan], [0, np.nan]], np.float32),
        sources=("cf", "interest"),
    )
    listed = Ranking(
        np.array([[2, 8, 9, 7], [9, 3, -1, -1]]),
        np.array([[0.5, 0.4, 0.3, 0.2], [0.7, 0.1, np.nan, np.nan]], np.float32),
    )
    cold = np.zeros(10, dtype=bool)
    cold[[7, 8, 9]] = True
    out = _reserve_cold(cands, listed, 1, cold, slots=2, n=4)
    # user 0: 8 and 9 are the first two cold items; 4 slots, so the merged tail (item 3) goes
    # user 1: 9 is cold and added after its one candidate
    assert out.offsets.tolist() == [0, 4, 6]
    assert out.items.tolist() == [1, 2, 8, 9, 1, 9]
    np.testing.assert_array_equal(out.scores[2:4, 1], listed.scores[0, 1:3])
    np.testing.assert_array_equal(out.ranks[2:4, 1], [1, 2])
    assert np.isnan(out.scores[2:4, 0]).all() and np.isnan(out.scores[5, 0])
    np.testing.assert_array_equal(out.scores[:2], cands.scores[:2])
    # nothing cold: the same candidates come back
    assert _reserve_cold(cands, listed, 1, np.zeros(10, dtype=bool), slots=2, n=4) is cands


def test_cold_item_settings_are_validated_and_saved(cold_model: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"cold_item_slots must be an integer in \[0, n_candidates=40\], got 41"
    ):
        _small_config(cold_item_slots=41)
    with pytest.raises(ConfigError, match="cold_item_slots must be an integer"):
        _small_config(cold_item_slots=True)
    with pytest.raises(ConfigError, match=r"cold_item_dropout must be in \[0, 1\), got 1.0"):
        _small_config(cold_item_dropout=1.0)
    with pytest.raises(ConfigError, match=r"cold_item_dropout must be in \[0, 1\), got -0.1"):
        _small_config(cold_item_dropout=-0.1)
    cfg = _small_config()
    assert EngineConfig.from_dict(cfg.to_dict()) == cfg
    assert Engine.load(cold_model).config == cfg  # stored with the model


def test_catalog_items_without_events_get_no_reserved_slots(cold_split: ColdStartSplit) -> None:
    # In a leave-one-out benchmark the fit catalog holds items whose only event is a test target;
    # reserving places for "items without events" would put exactly those among the candidates.
    # Only items that arrive through add_items are new; an item known at fit time is not.
    train = cold_split.train
    unseen = np.flatnonzero(train.item_popularity == 0)
    keep = np.ones(train.n_interactions, dtype=bool)
    dropped = np.array([], dtype=np.int64)
    if len(unseen) == 0:  # make some: drop every event of a few items
        dropped = np.unique(train.item_index)[:5]
        keep = ~np.isin(train.item_index, dropped)
    data = train.filter_rows(keep, name="no-events")
    no_events = np.union1d(unseen, dropped)
    assert len(no_events) and (data.item_popularity[no_events] == 0).all()
    engine = Engine(_small_config(cold_item_dropout=0.0)).fit(data)
    cands = _candidates(engine, np.arange(data.n_users))
    assert not np.isin(cands.items, no_events).any()
    # the same texts added after the fit are new items and do get the reserved places
    assert engine.add_items(cold_split.new_items) == len(cold_split.new_items)
    after = _candidates(engine, np.arange(data.n_users))
    assert (after.items >= data.n_items).any()
