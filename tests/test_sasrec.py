"""The SASRec baseline (driftrank.rerank._sasrec) on small synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from driftrank.data import Dataset, make_drifting
from driftrank.errors import ConfigError, DataError, ModelFileError, NotFittedError
from driftrank.eval import evaluate, leave_one_out
from driftrank.rerank._sasrec import SASRec, SASRecConfig
from driftrank.retrieval import PopularityRanker
from driftrank.types import Ranker

TINY = {"dim": 16, "n_layers": 1, "max_len": 12, "batch_size": 16, "early_stopping": False, "max_epochs": 4}


@pytest.fixture(scope="module")
def fitted(small_drifting: Dataset) -> SASRec:
    return SASRec(SASRecConfig(**TINY)).fit(small_drifting)


def test_is_a_ranker_and_excludes_seen(fitted: SASRec, small_drifting: Dataset) -> None:
    assert isinstance(fitted, Ranker)
    users = np.arange(0, 60, 3, dtype=np.int64)
    r = fitted.rank(users, 15, exclude=small_drifting.seen)
    assert r.items.shape == (len(users), 15) and r.items.dtype == np.int64
    for row, u in zip(r.items, users):
        assert not set(row.tolist()) & set(small_drifting.seen[u].indices.tolist())
    assert (np.diff(r.scores, axis=1) <= 1e-6).all()


def test_batch_equals_single(fitted: SASRec, small_drifting: Dataset) -> None:
    users = np.array([4, 0, 59, 4, 21], dtype=np.int64)
    at = small_drifting.timestamps.max() - np.arange(5) * 3 * 86400.0
    batch = fitted.rank(users, 10, exclude=small_drifting.seen, at=at)
    for j, u in enumerate(users):
        one = fitted.rank(np.array([u]), 10, exclude=small_drifting.seen, at=at[j : j + 1])
        np.testing.assert_array_equal(one.items[0], batch.items[j])
        np.testing.assert_allclose(one.scores[0], batch.scores[j], rtol=1e-5, atol=1e-5)


def test_same_seed_same_ranking_other_seed_differs(small_drifting: Dataset) -> None:
    cfg = SASRecConfig(**{**TINY, "max_epochs": 2})
    users = np.arange(60, dtype=np.int64)
    a = SASRec(cfg).fit(small_drifting).rank(users, 10)
    b = SASRec(cfg).fit(small_drifting).rank(users, 10)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_array_equal(a.scores, b.scores)
    c = SASRec(SASRecConfig(**{**TINY, "max_epochs": 2, "seed": 7})).fit(small_drifting).rank(users, 10)
    assert not np.array_equal(a.scores, c.scores)


def test_state_roundtrip(fitted: SASRec, small_drifting: Dataset) -> None:
    config, arrays = fitted.get_state()
    back = SASRec.from_state(json.loads(json.dumps(config)), arrays)
    users = np.arange(60, dtype=np.int64)
    a = fitted.rank(users, 10, exclude=small_drifting.seen)
    b = back.rank(users, 10, exclude=small_drifting.seen)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_array_equal(a.scores, b.scores)
    with pytest.raises(ModelFileError):
        SASRec.from_state(config, {k: v for k, v in arrays.items() if k != "net.item.weight"})


def test_no_peeking_and_observe(fitted: SASRec, small_drifting: Dataset) -> None:
    model = SASRec.from_state(*fitted.get_state())
    users = np.array([1, 2], dtype=np.int64)
    at = np.array([small_drifting.timestamps.max() + 10.0] * 2)
    before = model.rank(users, 10, at=at)
    model.observe(users, np.array([5, 6]), at + 100.0)  # after the request time: invisible
    after = model.rank(users, 10, at=at)
    np.testing.assert_array_equal(before.scores, after.scores)
    model.observe(users, np.array([5, 6]), at - 100.0)  # before it: the next item changes
    assert not np.allclose(model.rank(users, 10, at=at).scores, before.scores)
    # A user index beyond the data: no history, so the most popular items.
    far = model.rank(np.array([500]), 3)
    pop = np.bincount(model.histories_.items, minlength=90)  # type: ignore[union-attr]
    assert set(far.items[0].tolist()) <= set(np.argsort(-pop, kind="stable")[:5].tolist())


def test_learns_the_drift_and_beats_popularity() -> None:
    """Users switch topic half way; SASRec must pick up the new topic (popularity cannot)."""
    ds = make_drifting(n_users=150, n_items=90, n_topics=3, events_per_user=(10, 16), noise=0.05, seed=4)
    split = leave_one_out(ds)
    cfg = SASRecConfig(dim=24, n_layers=1, max_len=16, batch_size=16, max_epochs=25, patience=4, lr=3e-3)
    sas = evaluate(SASRec(cfg), split, stage="test", ks=(10,))
    pop = evaluate(PopularityRanker(), split, stage="test", ks=(10,))
    assert sas.metrics["HR@10"] > pop.metrics["HR@10"] + 0.15
    topics, item_topic = ds.meta["topics"], ds.meta["item_topic"]
    top_topics = item_topic[sas.ranked[:, :5]]
    new_share = (top_topics == topics[sas.users, 1][:, None]).mean()
    old_share = (top_topics == topics[sas.users, 0][:, None]).mean()
    assert new_share > 0.6 and new_share > 3 * old_share


def test_bad_inputs(fitted: SASRec, small_drifting: Dataset) -> None:
    with pytest.raises(DataError, match="`k` must be a positive integer, got 0"):
        fitted.rank(np.array([0]), 0)
    with pytest.raises(DataError, match="one time per user"):
        fitted.rank(np.array([0, 1]), 3, at=np.array([1.0, 2.0, 3.0]))
    with pytest.raises(DataError, match="one length"):
        fitted.observe(np.array([0]), np.array([1, 2]), np.array([1.0]))
    with pytest.raises(DataError, match=r"\[0, 90\)"):
        fitted.observe(np.array([0]), np.array([90]), np.array([1.0]))
    with pytest.raises(NotFittedError):
        SASRec().rank(np.array([0]), 3)
    with pytest.raises(ConfigError, match="divisible"):
        SASRecConfig(dim=10, n_heads=3)
    with pytest.raises(ConfigError, match="dropout"):
        SASRecConfig(dropout=-0.1)
    with pytest.raises(ConfigError, match="unknown"):
        SASRecConfig.from_dict({"hidden": 3})
    assert SASRecConfig.from_dict(SASRecConfig(stride=25).to_dict()) == SASRecConfig(stride=25)
