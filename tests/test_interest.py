"""Time-decayed interest vectors and the interest retrieval channel."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import polars as pl
import pytest

from driftrank.data import Dataset
from driftrank.errors import ConfigError, DataError, ModelFileError, NotFittedError
from driftrank.rerank import _interest
from driftrank.rerank._encoder import HashingEncoder
from driftrank.rerank._index import ItemIndexConfig
from driftrank.rerank._interest import (
    InterestConfig,
    InterestModel,
    decay_weights,
    position_weights,
)
from driftrank.rerank._interest_channel import InterestChannel, InterestChannelConfig, _merge_max
from driftrank.types import CandidateGenerator

DAY = 86400.0
T0 = 1_000_000_000.0
RAW_VECS = {  # raw item id -> unit vector (3-d, 4 items: asymmetric on purpose)
    10: [1.0, 0.0, 0.0],
    11: [0.0, 1.0, 0.0],
    12: [0.0, 0.0, 1.0],
    13: [0.6, 0.8, 0.0],
}


@pytest.fixture(scope="module")
def tiny() -> tuple[Dataset, np.ndarray]:
    """User "a": items 10, 11, 12, 13 at days 0, 1, 2, 5. User "b": 13, 10, 11 in one second."""
    inter = pl.DataFrame(
        {
            "user_id": ["a", "a", "a", "a", "b", "b", "b"],
            "item_id": [10, 11, 12, 13, 13, 10, 11],
            "timestamp": [T0, T0 + DAY, T0 + 2 * DAY, T0 + 5 * DAY, T0 + 3 * DAY, T0 + 3 * DAY, T0 + 3 * DAY],
        }
    )
    ds = Dataset.from_frames(inter, name="tiny")
    vecs = np.array([RAW_VECS[int(i)] for i in ds.item_ids.ids], dtype=np.float32)
    return ds, vecs


HAND_CONFIG = InterestConfig(half_lives_days=(1.0, 2.0, math.inf), position_half_lives=(1.0,), mode="both")


# ---------------------------------------------------------------------- the formula
def test_hand_computed_example_at_a_time(tiny: tuple[Dataset, np.ndarray]) -> None:
    ds, vecs = tiny
    model = InterestModel(HAND_CONFIG).fit(ds, vecs)
    assert model.scale_names == ("time:1d", "time:2d", "time:infd", "position:1")
    a = ds.user_ids.index("a")
    v = model.vectors(np.array([a]), at=np.array([T0 + 2 * DAY]))[0]
    assert v.shape == (4, 3)
    # Item 13 (day 5) is in the future and must not count. Ages 2, 1, 0 days:
    # τ=1d: weights 1/4, 1/2, 1 (sum 1.75) -> (0.25 e10 + 0.5 e11 + e12) / 1.75
    np.testing.assert_allclose(v[0], [0.142857, 0.285714, 0.571429], atol=1e-6)
    # τ=2d: weights 2^-1, 2^-0.5, 1 (sum 2.207107)
    np.testing.assert_allclose(v[1], [0.226541, 0.320377, 0.453082], atol=1e-6)
    # τ=inf: the plain mean
    np.testing.assert_allclose(v[2], [1 / 3, 1 / 3, 1 / 3], atol=1e-6)
    # position τ=1: steps back 2, 1, 0 -> same weights as τ=1d here
    np.testing.assert_allclose(v[3], [0.142857, 0.285714, 0.571429], atol=1e-6)
    # Masses at half a day after the last counted event: Σw · 2^(-0.5/τ); position: Σw.
    m = model.mass(np.array([a]), at=np.array([T0 + 2.5 * DAY]))[0]
    np.testing.assert_allclose(m, [1.75 * 2**-0.5, 2.207107 * 2**-0.25, 3.0, 1.75], rtol=1e-6)


def test_hand_computed_example_latest_event(tiny: tuple[Dataset, np.ndarray]) -> None:
    ds, vecs = tiny
    model = InterestModel(HAND_CONFIG).fit(ds, vecs)
    a = ds.user_ids.index("a")
    v = model.vectors(np.array([a]))[0]  # at = the latest event (day 5)
    # τ=1d: ages 5, 4, 3, 0 -> 1/32, 1/16, 1/8, 1 (sum 1.21875)
    np.testing.assert_allclose(v[0], [0.517949, 0.707692, 0.102564], atol=1e-6)
    np.testing.assert_allclose(v[2], [(1 + 0.6) / 4, (1 + 0.8) / 4, 1 / 4], atol=1e-6)


def test_coarse_timestamps_need_the_position_variant(tiny: tuple[Dataset, np.ndarray]) -> None:
    ds, vecs = tiny
    model = InterestModel(HAND_CONFIG).fit(ds, vecs)
    b = ds.user_ids.index("b")
    v = model.vectors(np.array([b]))[0]
    # All three events share one second: every time scale degenerates to the plain mean ...
    for s in range(3):
        np.testing.assert_allclose(v[s], [(0.6 + 1) / 3, (0.8 + 1) / 3, 0.0], atol=1e-6)
    # ... while positions (file order 13, 10, 11) weigh 1/4, 1/2, 1.
    np.testing.assert_allclose(v[3], [(0.15 + 0.5) / 1.75, (0.2 + 1.0) / 1.75, 0.0], atol=1e-6)


def test_future_events_are_never_used(tiny: tuple[Dataset, np.ndarray]) -> None:
    ds, vecs = tiny
    model = InterestModel(HAND_CONFIG).fit(ds, vecs)
    a = ds.user_ids.index("a")
    at = T0 + 2 * DAY + 3600
    before = model.vectors(np.array([a]), at=at)
    # Changing what happens after `at` changes nothing.
    model.observe(np.array([a, a]), np.array([0, 1]), np.array([at + 1, at + 10 * DAY]))
    np.testing.assert_array_equal(model.vectors(np.array([a]), at=at), before)
    items, times = model.history(a)
    keep = times <= at
    np.testing.assert_allclose(
        model.vector_for_history(items[keep], times[keep], at=at), before[0], atol=1e-7
    )
    # Before the first event there is no interest at all.
    assert np.all(model.vectors(np.array([a]), at=T0 - 1) == 0)
    assert np.all(model.mass(np.array([a]), at=T0 - 1) == 0)


def test_decay_formula_is_the_same_for_numpy_and_torch() -> None:
    import torch

    age = np.array([0.0, 0.5, 1.0, 3.0]) * DAY
    np.testing.assert_allclose(decay_weights(age, 1.0), [1.0, 2**-0.5, 0.5, 0.125])
    np.testing.assert_array_equal(decay_weights(age, math.inf), np.ones(4))
    tau = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    w = decay_weights(torch.tensor(age), tau)
    np.testing.assert_allclose(w.detach().numpy(), decay_weights(age, 2.0), rtol=1e-12)
    w.sum().backward()
    # d/dτ 2^(-a/τ) = 2^(-a/τ) · ln2 · a / τ²  (a in days)
    a_days = age / DAY
    expected = np.sum(2 ** (-a_days / 2) * np.log(2) * a_days / 4)
    assert tau.grad is not None and abs(tau.grad.item() - expected) < 1e-9
    np.testing.assert_allclose(position_weights(np.arange(3.0), 2.0), [1.0, 2**-0.5, 0.5])


# ---------------------------------------------------------------------- batch, trajectory, state
def test_batch_equals_one_by_one(small_drifting: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = small_drifting
    vecs = HashingEncoder().encode(ds.item_texts)
    model = InterestModel(InterestConfig(half_lives_days=(0.5, 7.0), position_half_lives=(3.0,), mode="both"))
    model.fit(ds, vecs)
    rng = np.random.default_rng(0)
    users = np.r_[rng.integers(0, ds.n_users, 25), [ds.n_users + 4, 3, 3]]
    ts = ds.timestamps
    at = rng.uniform(ts.min() - DAY, ts.max() + DAY, len(users))
    at[[2, 7]] = np.nan
    batch = model.vectors(users, at)
    assert batch.shape == (28, 3, vecs.shape[1]) and batch.dtype == np.float32
    single = np.stack([model.vectors(users[j : j + 1], at[j : j + 1])[0] for j in range(len(users))])
    np.testing.assert_allclose(batch, single, rtol=1e-6, atol=1e-7)
    assert np.all(batch[25] == 0)  # a user index the model has never seen
    # The chunked path (many small chunks) gives the same numbers.
    monkeypatch.setattr(_interest, "_CHUNK_EVENTS", 15)
    np.testing.assert_allclose(model.vectors(users, at), batch, rtol=1e-6, atol=1e-7)


def test_trajectory_and_vector_for_history(small_drifting: Dataset) -> None:
    ds = small_drifting
    vecs = HashingEncoder().encode(ds.item_texts)
    model = InterestModel(InterestConfig(half_lives_days=(1.0, 30.0))).fit(ds, vecs)
    items, times = model.history(4)
    grid = np.linspace(times[0] - 10, times[-1] + DAY, 7)
    traj = model.trajectory(4, grid)
    assert traj.shape == (7, 2, vecs.shape[1])
    for j, t in enumerate(grid):
        np.testing.assert_allclose(traj[j], model.vectors(np.array([4]), np.array([t]))[0], atol=1e-7)
    assert np.all(traj[0] == 0)
    # A history given out of order is put in time order.
    perm = np.random.default_rng(1).permutation(len(items))
    np.testing.assert_allclose(
        model.vector_for_history(items[perm], times[perm]), model.vectors(np.array([4]))[0], atol=1e-6
    )
    with pytest.raises(DataError, match="timestamps"):
        model.vector_for_history(items)
    pos = InterestModel(InterestConfig(mode="position", position_half_lives=(2.0,))).fit(ds, vecs)
    np.testing.assert_allclose(pos.vector_for_history(items), pos.vectors(np.array([4]))[0], atol=1e-6)


@pytest.mark.parametrize("path", ["catalog-product", "gather"])
def test_similarity_is_cosine_to_each_scale(
    small_drifting: Dataset, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import driftrank.rerank._interest as interest_mod

    ds = small_drifting
    # Tiny blocks so that both paths run several chunks (two users' scores, three candidates).
    monkeypatch.setattr(interest_mod, "_DENSE_SIMILARITY", 10**9 if path == "catalog-product" else 0)
    monkeypatch.setattr(interest_mod, "_SIMILARITY_BLOCK", 2 * 2 * ds.n_items)
    monkeypatch.setattr(interest_mod, "_SIMILARITY_ROWS", 3)
    vecs = HashingEncoder().encode(ds.item_texts)
    model = InterestModel(InterestConfig(half_lives_days=(1.0, 30.0))).fit(ds, vecs)
    users, items = np.array([0, 0, 5, 9, 5, 2, 0]), np.array([3, 7, 7, 0, 1, 4, 7])
    at = np.array([np.nan, np.nan, np.nan, np.nan, np.nan, np.nan, ds.timestamps.min()])
    sim = model.similarity(users, items, at)
    assert sim.shape == (7, 2) and sim.dtype == np.float32
    v = model.vectors(users, at)
    norm = np.linalg.norm(v, axis=2, keepdims=True)
    ref = np.einsum("msd,md->ms", v / np.where(norm > 0, norm, 1.0), vecs[items])
    np.testing.assert_allclose(sim, ref, atol=1e-6)


def test_observe_equals_fitting_on_all_events(small_drifting: Dataset) -> None:
    ds = small_drifting
    vecs = HashingEncoder().encode(ds.item_texts)
    cfg = InterestConfig(half_lives_days=(0.5, 7.0), position_half_lives=(3.0,), mode="both")
    full = InterestModel(cfg).fit(ds, vecs)
    cut = np.quantile(ds.timestamps, 0.6)
    early = ds.filter_rows(ds.timestamps < cut)
    online = InterestModel(cfg).fit(early, vecs)
    late = np.flatnonzero(ds.timestamps >= cut)
    rng = np.random.default_rng(2)
    for chunk in np.array_split(rng.permutation(late), 3):  # in shuffled batches
        online.observe(ds.user_index[chunk], ds.item_index[chunk], ds.timestamps[chunk])
    users = np.arange(ds.n_users)
    np.testing.assert_allclose(online.vectors(users), full.vectors(users), atol=1e-6)
    assert (full.seen(users) != ds.seen).nnz == 0
    assert (online.seen(users) != ds.seen).nnz == 0
    # A new user index grows the state; the users in between have no history.
    online.observe(np.array([ds.n_users + 2]), np.array([1]), np.array([cut]))
    assert online.n_users == ds.n_users + 3
    assert np.all(online.vectors(np.array([ds.n_users])) == 0)
    np.testing.assert_allclose(online.vectors(np.array([ds.n_users + 2]))[0, 0], vecs[1], atol=1e-6)
    with pytest.raises(DataError, match="extend_items"):
        online.observe(np.array([0]), np.array([ds.n_items]), np.array([cut]))


def test_extend_items(tiny: tuple[Dataset, np.ndarray]) -> None:
    ds, vecs = tiny
    model = InterestModel(InterestConfig(half_lives_days=(1.0,))).fit(ds, vecs)
    new = np.array([[0.0, 0.6, 0.8]], dtype=np.float32)
    model.extend_items(new)
    assert model.n_items == 5
    a = ds.user_ids.index("a")
    model.observe(np.array([a]), np.array([4]), np.array([T0 + 100 * DAY]))
    np.testing.assert_allclose(model.vectors(np.array([a]))[0, 0], new[0], atol=1e-6)
    with pytest.raises(DataError, match="3-d"):
        model.extend_items(np.ones((1, 4)))


def test_state_round_trip(small_drifting: Dataset) -> None:
    ds = small_drifting
    vecs = HashingEncoder().encode(ds.item_texts)
    cfg = InterestConfig(half_lives_days=(1.0, math.inf), position_half_lives=(4.0,), mode="both")
    model = InterestModel(cfg).fit(ds, vecs)
    model.observe(np.array([1, ds.n_users]), np.array([2, 3]), np.array([ds.timestamps.max() + 5] * 2))
    config, arrays = model.get_state()
    loaded = InterestModel.from_state(json.loads(json.dumps(config)), arrays)
    assert loaded.config == cfg
    users = np.arange(ds.n_users + 1)
    np.testing.assert_array_equal(loaded.vectors(users), model.vectors(users))
    np.testing.assert_array_equal(loaded.mass(users), model.mass(users))
    with pytest.raises(ModelFileError, match="version"):
        InterestModel.from_state({**config, "format_version": 2}, arrays)
    with pytest.raises(ModelFileError, match="inconsistent"):
        InterestModel.from_state(config, {**arrays, "items": arrays["items"][:-1]})
    with pytest.raises(ModelFileError):
        InterestModel.from_state(config, {k: v for k, v in arrays.items() if k != "indptr"})


def test_inputs_not_mutated(small_drifting: Dataset) -> None:
    ds = small_drifting
    vecs = HashingEncoder().encode(ds.item_texts)
    v0 = vecs.copy()
    model = InterestModel().fit(ds, vecs)
    users, at = np.array([3, 1]), np.array([np.nan, ds.timestamps.max()])
    u0, a0 = users.copy(), at.copy()
    model.vectors(users, at)
    model.observe(users, np.array([0, 1]), np.array([1e9, 1e9]))
    np.testing.assert_array_equal(vecs, v0)
    np.testing.assert_array_equal(users, u0)
    np.testing.assert_array_equal(at, a0)
    vecs[:] = 0  # the model holds its own copy
    assert np.any(model.item_vectors != 0)


def test_validation() -> None:
    with pytest.raises(ConfigError, match="positive"):
        InterestConfig(half_lives_days=(1.0, -2.0))
    with pytest.raises(ConfigError, match="repeat"):
        InterestConfig(half_lives_days=(1.0, 1.0))
    with pytest.raises(ConfigError, match="mode"):
        InterestConfig(mode="recent")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="half_lives_days"):
        InterestConfig(half_lives_days=())
    assert InterestConfig(half_lives_days=(), mode="position").n_scales == 1
    cfg = InterestConfig(half_lives_days=[1, math.inf], mode="both")  # type: ignore[arg-type]
    assert InterestConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(NotFittedError):
        InterestModel().vectors(np.array([0]))


def test_fit_and_read_validation(tiny: tuple[Dataset, np.ndarray]) -> None:
    ds, vecs = tiny
    with pytest.raises(DataError, match="4 items"):
        InterestModel().fit(ds, vecs[:3])
    bad = vecs.copy()
    bad[0, 0] = np.inf
    with pytest.raises(DataError, match="infinite"):
        InterestModel().fit(ds, bad)
    model = InterestModel().fit(ds, vecs)
    with pytest.raises(DataError, match="one time per user"):
        model.vectors(np.array([0, 1]), at=np.array([1.0]))
    with pytest.raises(DataError, match="non-negative"):
        model.vectors(np.array([-1]))


# ---------------------------------------------------------------------- the known answer: drift
def topic_auc(sims: np.ndarray, ds: Dataset) -> np.ndarray:
    """Per user: P(a new-topic item scores above an old-topic item)."""
    topics, item_topic = ds.meta["topics"], ds.meta["item_topic"]
    out = np.empty(ds.n_users)
    for u in range(ds.n_users):
        new = sims[u, item_topic == topics[u, 1]]
        old = sims[u, item_topic == topics[u, 0]]
        out[u] = (new[:, None] > old[None, :]).mean()
    return out


def test_decayed_interest_ranks_the_new_topic_first(drifting: Dataset) -> None:
    """Users switch topic half way. The short-scale decayed interest must put new-topic items
    above old-topic items for nearly everyone; the non-decayed mean must not separate them."""
    ds = drifting
    vecs = HashingEncoder().encode(ds.item_texts)
    cfg = InterestConfig(half_lives_days=(1.0, math.inf), position_half_lives=(4.0,), mode="both")
    v = InterestModel(cfg).fit(ds, vecs).vectors(np.arange(ds.n_users))
    auc = {name: topic_auc(v[:, s] @ vecs.T, ds) for s, name in enumerate(cfg.scale_names)}
    assert np.mean(auc["time:1d"] > 0.9) >= 0.95
    assert np.mean(auc["position:4"] > 0.9) >= 0.95
    # Half the history on each topic: the mean is a coin flip (measured 0.57 mean AUC).
    assert np.mean(auc["time:infd"] > 0.9) <= 0.3
    assert 0.35 <= auc["time:infd"].mean() <= 0.7


# ---------------------------------------------------------------------- the channel
@pytest.fixture(scope="module")
def drift_vectors(drifting: Dataset) -> np.ndarray:
    return HashingEncoder().encode(drifting.item_texts)


def channel(ds: Dataset, vecs: np.ndarray, **kw: Any) -> InterestChannel:
    return InterestChannel(InterestChannelConfig(**kw), item_vectors=vecs).fit(ds)


def test_channel_is_a_candidate_generator(drifting: Dataset, drift_vectors: np.ndarray) -> None:
    ch = channel(drifting, drift_vectors)
    assert isinstance(ch, CandidateGenerator) and ch.name == "interest"
    users = np.arange(40)
    r = ch.candidates(users, 30, exclude=drifting.seen)
    assert r.items.shape == (40, 30) and r.items.dtype == np.int64 and r.scores.dtype == np.float32
    seen = drifting.seen
    for j, u in enumerate(users):
        assert len(set(r.items[j])) == 30 and np.all(r.items[j] >= 0)
        assert not set(r.items[j]) & set(seen[u].indices)
        assert np.all(np.diff(r.scores[j]) <= 1e-7)


@pytest.mark.parametrize("combine", ["sum", "max"])
def test_channel_retrieves_the_new_topic(drifting: Dataset, drift_vectors: np.ndarray, combine: str) -> None:
    ds = drifting
    short = channel(ds, drift_vectors, interest=InterestConfig(half_lives_days=(1.0,)), combine=combine)
    flat = channel(ds, drift_vectors, interest=InterestConfig(half_lives_days=(math.inf,)), combine=combine)
    users = np.arange(ds.n_users)
    new_topic = ds.meta["topics"][:, 1]

    def share_new(ch: InterestChannel) -> float:
        r = ch.candidates(users, 20, exclude=ds.seen)
        return float(np.mean(ds.meta["item_topic"][r.items] == new_topic[:, None]))

    assert share_new(short) >= 0.85
    assert share_new(flat) <= 0.65


@pytest.mark.parametrize("combine", ["sum", "max"])
def test_channel_batch_equals_single_and_state_round_trip(
    drifting: Dataset, drift_vectors: np.ndarray, combine: str
) -> None:
    ds = drifting
    ch = channel(
        ds,
        drift_vectors,
        interest=InterestConfig(half_lives_days=(1.0, 30.0), position_half_lives=(4.0,), mode="both"),
        combine=combine,
        scale_weights=(2.0, 1.0, 0.5),
        index=ItemIndexConfig(kind="hnsw"),
    )
    rng = np.random.default_rng(4)
    users = rng.integers(0, ds.n_users, 30)
    at = rng.uniform(ds.timestamps.min(), ds.timestamps.max(), 30)
    batch = ch.candidates(users, 25, exclude=ds.seen, at=at)
    for j in range(0, 30, 7):
        one = ch.candidates(users[j : j + 1], 25, exclude=ds.seen, at=at[j : j + 1])
        np.testing.assert_array_equal(one.items[0], batch.items[j])
        np.testing.assert_allclose(one.scores[0], batch.scores[j], rtol=1e-6)
    config, arrays = ch.get_state()
    assert "index.vectors" not in arrays and "index.faiss_index" in arrays
    loaded = InterestChannel.from_state(json.loads(json.dumps(config)), arrays)
    assert loaded.config == ch.config and loaded.name == ch.name
    again = loaded.candidates(users, 25, exclude=ds.seen, at=at)
    np.testing.assert_array_equal(again.items, batch.items)
    np.testing.assert_array_equal(again.scores, batch.scores)


def test_channel_cold_users_get_no_candidates(drifting: Dataset, drift_vectors: np.ndarray) -> None:
    ch = channel(drifting, drift_vectors)
    first = drifting.timestamps.min()
    r = ch.candidates(
        np.array([0, drifting.n_users + 3]), 10, exclude=drifting.seen, at=np.array([first - 1, first])
    )
    assert np.all(r.items == -1) and np.all(np.isnan(r.scores))
    assert ch.candidates(np.zeros(0, np.int64), 10).items.shape == (0, 10)


def test_channel_observe_and_extend_items(drifting: Dataset, drift_vectors: np.ndarray) -> None:
    ds = drifting
    ch = InterestChannel(
        InterestChannelConfig(interest=InterestConfig(half_lives_days=(1.0,))),
        encoder=HashingEncoder(),
    ).fit(ds)
    np.testing.assert_array_equal(ch.interest.item_vectors, drift_vectors)
    u = 0
    old, new = ds.meta["topics"][u]
    third = next(t for t in range(len(ds.meta["topic_names"])) if t not in (old, new))
    third_items = np.flatnonzero(ds.meta["item_topic"] == third)[:6]
    t_end = ds.timestamps.max() + DAY
    ch.observe(np.full(6, u), third_items, t_end + np.arange(6) * 3600.0)
    r = ch.candidates(np.array([u]), 10)
    assert np.mean(ds.meta["item_topic"][r.items[0]] == third) >= 0.8
    # A new user, unknown to the exclusion matrix, is served from observed events.
    newbie = ds.n_users
    ch.observe(np.array([newbie]), third_items[:1], np.array([t_end]))
    r = ch.candidates(np.array([newbie]), 5, exclude=ds.seen)
    assert r.items[0, 0] == third_items[0]
    # exclude="seen": fitted and observed events alike.
    r = ch.candidates(np.array([u, newbie]), 30, exclude="seen")
    assert not set(r.items[0]) & (set(ds.seen[u].indices) | set(third_items))
    assert third_items[0] not in r.items[1] and np.all(r.items >= 0)
    with pytest.raises(DataError, match="'seen'"):
        ch.candidates(np.array([u]), 5, exclude="unseen")  # type: ignore[arg-type]
    # New items: one given as a vector, two as texts (encoded with the channel's encoder).
    query = ch.interest.vectors(np.array([u]))[0, 0]
    ch.extend_items(1, (query / np.linalg.norm(query))[None, :])
    ch.extend_items(2, ["Unrelated Words Here", "Other Text Entirely"])
    assert ch.index.n_items == ch.interest.n_items == ds.n_items + 3
    r = ch.candidates(np.array([u]), 3)
    assert r.items[0, 0] == ds.n_items and abs(r.scores[0, 0] - 1.0) < 1e-5
    with pytest.raises(DataError, match="expected 2"):
        ch.extend_items(2, np.ones((3, drift_vectors.shape[1])))


def test_channel_config_validation_and_json(drifting: Dataset, drift_vectors: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="one weight per scale"):
        InterestChannelConfig(scale_weights=(1.0, 2.0))
    with pytest.raises(ConfigError, match="not all 0"):
        InterestChannelConfig(scale_weights=(0.0,))
    with pytest.raises(ConfigError, match="combine"):
        InterestChannelConfig(combine="mean")  # type: ignore[arg-type]
    cfg = InterestChannelConfig(
        interest=InterestConfig(half_lives_days=(1.0, math.inf)), scale_weights=(2, 1), combine="max"
    )
    assert InterestChannelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(DataError, match="n_items"):
        InterestChannel(item_vectors=drift_vectors[:5]).fit(drifting)
    with pytest.raises(NotFittedError):
        InterestChannel().candidates(np.array([0]), 5)
    with pytest.raises(ConfigError, match="positive integer, got 0"):
        channel(drifting, drift_vectors).candidates(np.array([0]), 0)


def test_merge_max_matches_a_slow_reference() -> None:
    rng = np.random.default_rng(9)
    m, width, n = 12, 15, 6
    items = rng.integers(-1, 20, (m, width))
    scores = np.round(rng.random((m, width)), 2).astype(np.float32)  # rounded: ties happen
    scores[items < 0] = np.nan
    r = _merge_max(items, scores, n)
    for row in range(m):
        best: dict[int, float] = {}
        for i, s in zip(items[row], scores[row]):
            if i >= 0:
                best[int(i)] = max(best.get(int(i), -np.inf), float(s))
        ref = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        got = [(int(i), float(s)) for i, s in zip(r.items[row], r.scores[row]) if i >= 0]
        assert got == [(i, pytest.approx(s)) for i, s in ref]
        assert np.all(r.items[row, len(ref) :] == -1)
