"""The trainable sequence re-ranker (driftrank.rerank._model) on small synthetic data."""

from __future__ import annotations

import json
import re
import zlib

import numpy as np
import pytest

import driftrank.rerank._model as model_module
from driftrank.data import Dataset, make_drifting
from driftrank.errors import ConfigError, DataError, ModelFileError, NotFittedError
from driftrank.eval import Targets, evaluate, leave_one_out
from driftrank.rerank._model import SequenceReranker, SequenceRerankerConfig
from driftrank.rerank._seqdata import Histories, carve_last, history_pairs, training_windows
from driftrank.types import Candidates, Ranker, Ranking

TINY = {
    "dim": 16,
    "n_layers": 1,
    "n_heads": 2,
    "max_len": 12,
    "dropout": 0.1,
    "batch_size": 32,
    "listwise_positions": 2,
    "n_hard": 4,
    "n_random": 12,
    "early_stopping": False,
    "max_epochs": 4,
}


def title_vectors(ds: Dataset, dim: int = 24) -> np.ndarray:
    """Tiny stand-in for sentence embeddings: hashed bag of words of each item's text."""
    out = np.zeros((ds.n_items, dim), dtype=np.float32)
    for i, text in enumerate(ds.item_texts):
        for word in re.findall(r"[a-z']+", text.lower()):
            out[i, zlib.crc32(word.encode()) % dim] += 1.0
    return out


def random_vectors(ds: Dataset, dim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(ds.n_items, dim)).astype(np.float32)


@pytest.fixture(scope="module")
def fitted(small_drifting: Dataset) -> SequenceReranker:
    return SequenceReranker(SequenceRerankerConfig(**TINY)).fit(
        small_drifting, random_vectors(small_drifting)
    )


def some_candidates(ds: Dataset, users: np.ndarray, seed: int = 3) -> Candidates:
    """Different numbers of candidates per user (one user gets none)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 20, size=len(users))
    counts[1] = 0
    items = np.concatenate([rng.choice(ds.n_items, size=c, replace=False) for c in counts]).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    m = len(items)
    return Candidates(
        users, offsets, items, np.zeros((m, 1), np.float32), np.zeros((m, 1), np.float32), ("x",)
    )


# ---------------------------------------------------------------------- the serving contract
def test_is_a_ranker(fitted: SequenceReranker) -> None:
    assert isinstance(fitted, Ranker)
    # The protocol is structural: something without rank() is not one (so the check can fail).
    assert not isinstance(object(), Ranker)


def test_batch_scores_equal_single_user_scores(fitted: SequenceReranker, small_drifting: Dataset) -> None:
    users = np.array([5, 0, 17, 33, 5, 59], dtype=np.int64)
    cands = some_candidates(small_drifting, users)
    at = small_drifting.timestamps.max() - np.arange(len(users)) * 86400.0
    batch = fitted.score(users, cands, at)
    assert batch.dtype == np.float32 and batch.shape == (len(cands.items),)
    for j, u in enumerate(users):
        single = fitted.score(np.array([u]), [cands.items[cands.of(j)]], at[j : j + 1])
        np.testing.assert_allclose(batch[cands.of(j)], single, rtol=1e-5, atol=1e-5)
    # The same user twice in one batch gets the same scores for the same items.
    assert np.isfinite(batch).all()


def test_rank_matches_score_and_respects_exclude(fitted: SequenceReranker, small_drifting: Dataset) -> None:
    users = np.arange(0, 60, 7, dtype=np.int64)
    seen = small_drifting.seen
    r = fitted.rank(users, 10, exclude=seen)
    assert r.items.shape == (len(users), 10) and r.scores.shape == (len(users), 10)
    for row, u in zip(r.items, users):
        assert not set(row.tolist()) & set(seen[u].indices.tolist())
    # The full-catalog path and the candidate path give the same numbers.
    again = fitted.score(users, [row for row in r.items])
    np.testing.assert_allclose(again, r.scores.ravel(), rtol=1e-5, atol=1e-5)
    assert (np.diff(r.scores, axis=1) <= 1e-6).all()  # best first
    # One user at a time gives the same lists.
    for j, u in enumerate(users[:3]):
        one = fitted.rank(np.array([u]), 10, exclude=seen)
        np.testing.assert_array_equal(one.items[0], r.items[j])


def test_no_peeking_at_the_future(small_drifting: Dataset) -> None:
    model = SequenceReranker(SequenceRerankerConfig(**TINY)).fit(
        small_drifting, random_vectors(small_drifting)
    )
    users = np.array([2, 9, 40], dtype=np.int64)
    items = [np.arange(30), np.arange(30, 60), np.arange(60, 90)]
    _, times = model.histories_.user(9) if model.histories_ else (None, None)
    at = np.array([times[4] + 1.0, times[4] + 1.0, times[4] + 1.0])  # mid-history for user 9
    before = model.score(users, items, at)
    # Events after `at` change nothing ...
    model.observe(users, np.array([5, 6, 7]), at + 3600.0)
    np.testing.assert_array_equal(model.score(users, items, at), before)
    # ... while the same events before `at` do (so the check above can fail).
    model.observe(users, np.array([5, 6, 7]), at - 60.0)
    assert not np.allclose(model.score(users, items, at), before)


def test_time_of_request_matters(fitted: SequenceReranker) -> None:
    """Later requests see older events: the decayed interests and the gap buckets move."""
    items, times = fitted.histories_.user(3) if fitted.histories_ else (None, None)
    cands = np.arange(90)
    now = fitted.score_history(items, times, cands, at=float(times[-1]))
    later = fitted.score_history(items, times, cands, at=float(times[-1]) + 200 * 86400.0)
    assert not np.allclose(now, later)


def test_score_history_equals_stored_user(fitted: SequenceReranker, small_drifting: Dataset) -> None:
    items, times = small_drifting.sequences.user(11)
    cands = np.array([0, 4, 8, 80, 3], dtype=np.int64)
    at = float(times[-1]) + 3600.0
    stored = fitted.score(np.array([11]), [cands], np.array([at]))
    # Order of the given events does not matter (they are sorted by time).
    perm = np.random.default_rng(0).permutation(len(items))
    cold = fitted.score_history(items[perm], times[perm], cands, at=at)
    np.testing.assert_allclose(cold, stored, rtol=1e-5, atol=1e-5)


def test_observe_grows_users_and_is_used(fitted: SequenceReranker, small_drifting: Dataset) -> None:
    model = SequenceReranker.from_state(*fitted.get_state())
    items, times = small_drifting.sequences.user(4)
    new_user = model.n_users + 2
    cands = np.arange(20, dtype=np.int64)
    cold = model.score(np.array([new_user]), [cands])
    pop = np.log1p(np.bincount(model.histories_.items, minlength=90)[:20]).astype(np.float32)  # type: ignore[union-attr]
    np.testing.assert_allclose(cold, pop)  # no history: the popularity fallback
    model.observe(np.full(len(items), new_user), items, times)
    assert model.n_users == new_user + 1
    warm = model.score(np.array([new_user]), [cands])
    np.testing.assert_allclose(warm, model.score_history(items, times, cands), rtol=1e-5, atol=1e-5)
    assert model.rank(np.array([new_user - 1]), 5).items.shape == (1, 5)  # the empty slot in between


def test_empty_candidates_and_empty_batch(fitted: SequenceReranker) -> None:
    out = fitted.score(np.array([1, 2]), [np.zeros(0, dtype=np.int64), np.array([3])])
    assert out.shape == (1,)
    assert fitted.score(np.zeros(0, dtype=np.int64), []).shape == (0,)
    r = fitted.rank(np.zeros(0, dtype=np.int64), 5)
    assert r.items.shape == (0, 5)


def test_k_larger_than_catalog_pads(fitted: SequenceReranker, small_drifting: Dataset) -> None:
    r = fitted.rank(np.array([0]), 200, exclude=small_drifting.seen)
    n_left = 90 - small_drifting.seen[0].nnz
    assert (r.items[0, :n_left] >= 0).all() and (r.items[0, n_left:] == -1).all()
    assert np.isnan(r.scores[0, n_left:]).all()


# ---------------------------------------------------------------------- training
def test_same_seed_same_model_other_seed_other_model(small_drifting: Dataset) -> None:
    text = random_vectors(small_drifting)
    users = np.arange(10, dtype=np.int64)
    cands = [np.arange(90)] * len(users)
    cfg = SequenceRerankerConfig(**{**TINY, "max_epochs": 2})
    a = SequenceReranker(cfg).fit(small_drifting, text).score(users, cands)
    b = SequenceReranker(cfg).fit(small_drifting, text).score(users, cands)
    np.testing.assert_array_equal(a, b)
    c = SequenceReranker(SequenceRerankerConfig(**{**TINY, "max_epochs": 2, "seed": 1}))
    assert not np.allclose(c.fit(small_drifting, text).score(users, cands), a)


def test_state_roundtrip_gives_identical_scores(fitted: SequenceReranker, small_drifting: Dataset) -> None:
    config, arrays = fitted.get_state()
    config = json.loads(json.dumps(config))  # JSON-able
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    back = SequenceReranker.from_state(config, {k: v.copy() for k, v in arrays.items()})
    users = np.arange(60, dtype=np.int64)
    np.testing.assert_array_equal(
        back.rank(users, 10, exclude=small_drifting.seen).items,
        fitted.rank(users, 10, exclude=small_drifting.seen).items,
    )
    cands = some_candidates(small_drifting, users[:8])
    np.testing.assert_array_equal(back.score(users[:8], cands), fitted.score(users[:8], cands))
    np.testing.assert_array_equal(back.half_lives_days, fitted.half_lives_days)
    assert back.fit_report_ == fitted.fit_report_
    bad = dict(arrays)
    del bad["net.item_bias"]
    with pytest.raises(ModelFileError, match="incomplete"):
        SequenceReranker.from_state(config, bad)
    with pytest.raises(ModelFileError, match="format"):
        SequenceReranker.from_state({**config, "format": "other/1"}, arrays)


def test_without_candidate_attention_the_model_fits_serves_and_round_trips(small_drifting: Dataset) -> None:
    """``candidate_attention=False`` (the dot product and the decayed interests only) trains and
    serves like the full model: batches equal one-user calls, and a saved model scores the same."""
    cfg = SequenceRerankerConfig(**{**TINY, "candidate_attention": False, "max_epochs": 2})
    model = SequenceReranker(cfg).fit(small_drifting, random_vectors(small_drifting))
    users = np.arange(8, dtype=np.int64)
    cands = some_candidates(small_drifting, users)
    batch = model.score(users, cands)
    assert np.isfinite(batch).all()
    for j, u in enumerate(users.tolist()):
        lo, hi = cands.offsets[j], cands.offsets[j + 1]
        one = model.score(np.array([u]), [cands.items[lo:hi]])
        np.testing.assert_allclose(one, batch[lo:hi], rtol=1e-5, atol=1e-5)
    back = SequenceReranker.from_state(*model.get_state())
    np.testing.assert_array_equal(back.score(users, cands), batch)
    assert back.rank(users, 5, exclude=small_drifting.seen).items.shape == (8, 5)


def test_state_carries_every_users_encoded_history(
    fitted: SequenceReranker, small_drifting: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The saved state holds the transformer state of each stored user's latest window (and the
    query side of a one-user request at the default time, where the memo has it), so a rebuilt
    model scores its users without encoding them, bit for bit as the saved one; files without
    those arrays still load, and malformed ones are refused."""
    model = SequenceReranker.from_state(*fitted.get_state())
    model.clear_memo()
    users = np.arange(60, dtype=np.int64)
    model.prepare(users[:5])  # the query side of these five at the default time
    config, arrays = model.get_state()
    n_stored = int((small_drifting.sequences.lengths() > 0).sum())
    assert arrays["serving.keys"].shape == (n_stored, 16)
    assert arrays["serving.states"].shape == (n_stored, fitted.config.dim)
    assert int(arrays["serving.has_query"].sum()) == 5 and arrays["serving.query_keys"].shape == (5, 24)
    back = SequenceReranker.from_state(config, arrays)
    assert back._memo is not None and len(back._memo[1]) == n_stored + 5
    net = back.net_
    assert net is not None

    def not_again(*args: object, **kwargs: object) -> None:
        raise AssertionError("a stored user's history was encoded again")

    monkeypatch.setattr(net, "encode", not_again)
    cands = some_candidates(small_drifting, users)
    np.testing.assert_array_equal(back.score(users, cands), fitted.score(users, cands))
    monkeypatch.setattr(back, "_query", not_again)  # one-user requests of the five: nothing to compute
    for u in users[:5].tolist():
        one = [cands.items[:5]]
        np.testing.assert_array_equal(back.score(np.array([u]), one), fitted.score(np.array([u]), one))
    monkeypatch.undo()
    # Past the memo's capacity, the users with the newest latest events are kept, each with
    # its query side.
    monkeypatch.setattr(model_module, "_STATE_MEMO_ENTRIES", 3)
    few = SequenceReranker.from_state(config, arrays)
    assert few._memo is not None
    rows: list[list[bytes]] = []
    q = iter(arrays["serving.query_keys"])
    for key, has in zip(arrays["serving.keys"], arrays["serving.has_query"], strict=True):
        rows.append([key.tobytes()] + ([next(q).tobytes()] if has else []))
    expected: list[bytes] = []
    for row in reversed(rows):
        if len(expected) + len(row) > 3:
            break
        expected = row + expected
    assert list(few._memo[1]) == expected
    monkeypatch.undo()
    # An older file without the arrays: the same scores, encoded on request.
    old = {k: v for k, v in arrays.items() if not k.startswith("serving.")}
    plain = SequenceReranker.from_state(config, old)
    assert plain._memo is None
    np.testing.assert_allclose(plain.score(users, cands), fitted.score(users, cands), rtol=1e-5, atol=1e-6)
    for key, value in (
        ("serving.states", arrays["serving.states"][:-1]),
        ("serving.states", arrays["serving.states"].astype(np.float64)),
        ("serving.keys", arrays["serving.keys"][:, :8]),
        ("serving.states", np.full_like(arrays["serving.states"], np.nan)),
    ):
        with pytest.raises(ModelFileError, match="serving"):
            SequenceReranker.from_state(config, {**arrays, key: value})
    with pytest.raises(ModelFileError, match="serving"):
        SequenceReranker.from_state(config, {k: v for k, v in arrays.items() if k != "serving.states"})
    # States without query sides (the first version of these arrays) load as such.
    states_only = {k: v for k, v in arrays.items() if not k.startswith(("serving.has_", "serving.query_"))}
    assert len(SequenceReranker.from_state(config, states_only)._memo[1]) == n_stored  # type: ignore[index]
    bad_keys = arrays["serving.query_keys"].copy()
    bad_keys[0, 0] ^= 1  # a query entry that names another window
    for key, value in (
        ("serving.query_keys", bad_keys),
        ("serving.query_bias", np.full_like(arrays["serving.query_bias"], np.inf)),
        ("serving.has_query", np.zeros(n_stored, dtype=bool)),
    ):
        with pytest.raises(ModelFileError, match="serving"):
            SequenceReranker.from_state(config, {**arrays, key: value})


@pytest.mark.parametrize("average", [1, 3])
def test_early_stopping_reports_and_restores_best(small_drifting: Dataset, average: int) -> None:
    cfg = SequenceRerankerConfig(
        **{**TINY, "early_stopping": True, "max_epochs": 6, "patience": 2, "average_checkpoints": average}
    )
    model = SequenceReranker(cfg).fit(small_drifting, random_vectors(small_drifting))
    rep = model.fit_report_
    assert rep is not None and rep.best_score is not None
    scores = [h["ndcg@10"] for h in rep.history]
    assert rep.best_score == max(scores)
    assert rep.history[rep.best_epoch - 1]["ndcg@10"] == rep.best_score
    kept = rep.best_score
    if average > 1:
        assert rep.averaged == tuple(range(rep.epochs - 2, rep.epochs + 1))
        assert rep.averaged_score is not None
        kept = rep.averaged_score
    else:
        assert rep.averaged == () and rep.averaged_score is None
    # The kept weights are the best epoch's (or the average): re-measuring validation gives its score.
    train, val = carve_last(small_drifting)
    probe = SequenceReranker.from_state(*model.get_state())
    probe.histories_ = Histories.from_dataset(train)
    ranked = probe.rank(val.users, 10, exclude=train.seen, at=val.timestamps)
    hits = ranked.items == val.items[:, None]
    ndcg = np.where(hits.any(1), 1.0 / np.log2(hits.argmax(1) + 2.0), 0.0).mean()
    assert ndcg == pytest.approx(kept, abs=1e-9)


def test_hard_negatives_from_candidates(small_drifting: Dataset) -> None:
    text = random_vectors(small_drifting)
    n = small_drifting.n_users
    pool = np.tile(np.arange(10, dtype=np.int64), (n, 1))
    plain = SequenceReranker(SequenceRerankerConfig(**TINY)).fit(small_drifting, text)
    with_ranking = SequenceReranker(SequenceRerankerConfig(**TINY)).fit(
        small_drifting, text, candidates=Ranking(pool, np.zeros(pool.shape, np.float32))
    )
    with_callable = SequenceReranker(SequenceRerankerConfig(**TINY)).fit(
        small_drifting,
        text,
        candidates=lambda users: Ranking(pool[: len(users)], np.zeros((len(users), 10), np.float32)),
    )
    users = np.arange(8, dtype=np.int64)
    cands = [np.arange(90)] * len(users)
    np.testing.assert_array_equal(with_ranking.score(users, cands), with_callable.score(users, cands))
    assert not np.allclose(plain.score(users, cands), with_ranking.score(users, cands))
    with pytest.raises(DataError, match="outside the catalog"):
        SequenceReranker(SequenceRerankerConfig(**TINY)).fit(
            small_drifting, text, candidates=Ranking(pool + 100, np.zeros(pool.shape, np.float32))
        )


def test_masked_pretraining_runs_and_is_reported(small_drifting: Dataset) -> None:
    cfg = SequenceRerankerConfig(**{**TINY, "max_epochs": 1, "pretrain": "masked", "pretrain_epochs": 2})
    model = SequenceReranker(cfg).fit(small_drifting, random_vectors(small_drifting))
    assert model.fit_report_ is not None and len(model.fit_report_.pretrain_history) == 2
    assert np.isfinite(model.fit_report_.pretrain_history[-1]["loss"])


def test_new_items_are_scored_by_text(small_drifting: Dataset) -> None:
    text = title_vectors(small_drifting)
    model = SequenceReranker(SequenceRerankerConfig(**TINY)).fit(small_drifting, text)
    n = model.n_items
    model.extend_items(text[[0, 1]])
    assert model.n_items == n + 2
    r = model.rank(np.arange(5), 100)
    assert r.items.max() == n + 1  # the new items are ranked too
    out = model.score(np.array([0]), [np.array([0, n, 1, n + 1])])
    assert np.isfinite(out).all()
    back = SequenceReranker.from_state(*model.get_state())
    np.testing.assert_array_equal(back.score(np.array([0]), [np.array([0, n, 1, n + 1])]), out)
    model.observe(np.array([0]), np.array([n]), np.array([2e9]))  # and can be observed
    with pytest.raises(DataError, match="columns"):
        model.extend_items(np.ones((1, 3), np.float32))


# ---------------------------------------------------------------------- the known answer
def test_drifting_users_get_their_new_topic() -> None:
    """Users switch topic half way: after training, the new topic must rank above the old one.

    The time-blind reference (mean of the history's text vectors) cannot tell the two topics
    apart, so this needs the recency modelling.
    """
    ds = make_drifting(n_users=120, n_items=90, n_topics=3, events_per_user=(10, 16), noise=0.05, seed=3)
    text = title_vectors(ds)
    cfg = SequenceRerankerConfig(
        **{**TINY, "dim": 24, "max_len": 16, "max_epochs": 8, "batch_size": 16, "id_dropout": 0.3}
    )
    model = SequenceReranker(cfg).fit(ds, text)
    topics, item_topic = ds.meta["topics"], ds.meta["item_topic"]
    users = np.arange(ds.n_users, dtype=np.int64)
    scores = model.score(users, [np.arange(ds.n_items)] * len(users)).reshape(len(users), -1)
    unit = text / np.linalg.norm(text, axis=1, keepdims=True)
    wins = ref_wins = 0
    for u in users:
        old, new = topics[u]
        seen = np.zeros(ds.n_items, dtype=bool)
        seen[ds.sequences.user(int(u))[0]] = True
        old_items = np.flatnonzero((item_topic == old) & ~seen)
        new_items = np.flatnonzero((item_topic == new) & ~seen)
        wins += scores[u, new_items].mean() > scores[u, old_items].mean()
        ref = unit @ unit[ds.sequences.user(int(u))[0]].mean(0)
        ref_wins += ref[new_items].mean() > ref[old_items].mean()
    assert wins / len(users) >= 0.85
    assert ref_wins / len(users) <= 0.75  # the check is not trivially passed by any text model

    # New items (no learned ID) of the new topic also rank above old-topic ones, by text alone.
    n = model.n_items
    model.extend_items(text[: 3 * 10])  # copies of 10 items of each topic (items cycle topics)
    fresh = np.arange(n, n + 30)
    fresh_topic = item_topic[:30]
    cold = model.score(users, [fresh] * len(users)).reshape(len(users), -1)
    cold_wins = np.mean(
        [
            cold[u, fresh_topic == topics[u, 1]].mean() > cold[u, fresh_topic == topics[u, 0]].mean()
            for u in users
        ]
    )
    assert cold_wins >= 0.75


def test_evaluate_protocol_runs(small_drifting: Dataset) -> None:
    split = leave_one_out(small_drifting)
    model = SequenceReranker(SequenceRerankerConfig(**TINY), item_text_vectors=title_vectors(small_drifting))
    res = evaluate(model, split, stage="validation", ks=(10,))
    assert 0.0 <= res.metrics["NDCG@10"] <= 1.0
    assert res.ranked.shape == (len(split.validation), 10)


# ---------------------------------------------------------------------- input checks
def test_bad_inputs_raise_clear_errors(fitted: SequenceReranker, small_drifting: Dataset) -> None:
    with pytest.raises(DataError, match="`k` must be a positive integer, got 0"):
        fitted.rank(np.array([0]), 0)
    with pytest.raises(DataError, match="`k` must be a positive integer, got -3"):
        fitted.rank(np.array([0]), -3)
    with pytest.raises(DataError, match="one time per user"):
        fitted.rank(np.array([0, 1]), 5, at=np.array([1.0]))
    with pytest.raises(DataError, match="1-d"):
        fitted.rank(np.array([[0, 1]]), 5)
    with pytest.raises(DataError, match="one item array per user"):
        fitted.score(np.array([0, 1]), [np.array([1])])
    with pytest.raises(DataError, match="outside the catalog"):
        fitted.score(np.array([0]), [np.array([1, 90])])
    with pytest.raises(DataError, match="expected exactly `users`"):
        fitted.score(np.array([0, 2]), some_candidates(small_drifting, np.array([0, 1])))
    with pytest.raises(DataError, match="one length"):
        fitted.score_history(np.array([1, 2]), np.array([1.0]), np.array([3]))
    with pytest.raises(DataError, match="one length"):
        fitted.observe(np.array([0, 1]), np.array([1]), np.array([1.0]))
    with pytest.raises(DataError, match="outside the catalog"):
        fitted.observe(np.array([0]), np.array([500]), np.array([1.0]))
    with pytest.raises(DataError, match="90 columns"):
        fitted.rank(np.array([0]), 5, exclude=small_drifting.seen[:, :10])
    with pytest.raises(DataError, match="one row per item"):
        SequenceReranker(SequenceRerankerConfig(**TINY)).fit(small_drifting, np.ones((3, 4), np.float32))
    with pytest.raises(ConfigError, match="item_text_vectors"):
        SequenceReranker(SequenceRerankerConfig(**TINY)).fit(small_drifting)
    with pytest.raises(NotFittedError):
        SequenceReranker().rank(np.array([0]), 5)


def test_unknown_items_can_be_warned_and_skipped(fitted: SequenceReranker) -> None:
    config, arrays = fitted.get_state()
    config["config"]["unknown_items"] = "warn"
    model = SequenceReranker.from_state(config, arrays)
    before = model.histories_.lengths().sum()  # type: ignore[union-attr]
    with pytest.warns(UserWarning, match="outside the catalog"):
        model.observe(np.array([0, 0]), np.array([3, 999]), np.array([2e9, 2e9]))
    assert model.histories_.lengths().sum() == before + 1  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"dim": 10, "n_heads": 4}, "divisible"),
        ({"dropout": 1.0}, "dropout"),
        ({"max_len": 0}, "max_len"),
        ({"half_lives_days": (1.0, -2.0)}, "half_lives_days"),
        ({"listwise_weight": 0.0}, "listwise_weight"),
        ({"pretrain": "bert"}, "pretrain"),
        ({"stride": 0}, "stride"),
        ({"n_hard": 0, "n_random": 0}, "negatives"),
    ],
)
def test_config_is_validated(changes: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SequenceRerankerConfig(**changes)


def test_config_roundtrips_through_json() -> None:
    cfg = SequenceRerankerConfig(half_lives_days=(0.5, 10.0), stride=None, pretrain="masked")
    assert SequenceRerankerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="unknown"):
        SequenceRerankerConfig.from_dict({"width": 3})
    SequenceRerankerConfig(listwise_weight=0.0, candidate_attention=False)  # allowed together


# ---------------------------------------------------------------------- sequence data helpers
def test_windows_and_histories() -> None:
    h = Histories(np.array([0, 3, 3, 5]), np.array([4, 5, 6, 7, 8]), np.array([10.0, 20.0, 20.0, 5.0, 9.0]))
    w = h.windows(np.array([0, 1, 2, 7]), np.array([20.0, 0.0, 8.0, 0.0]), 2)
    np.testing.assert_array_equal(w.items, [[5, 6], [-1, -1], [-1, 7], [-1, -1]])
    np.testing.assert_array_equal(w.lengths, [2, 0, 1, 0])
    items, times, users = training_windows(h, 2, stride=1)
    np.testing.assert_array_equal(items, [[4, 5, 6], [-1, 4, 5], [-1, 7, 8]])
    np.testing.assert_array_equal(times[2], [0.0, 5.0, 9.0])
    np.testing.assert_array_equal(users, [0, 0, 2])
    grown = h.append(np.array([4, 0]), np.array([1, 2]), np.array([1.0, 20.0]))
    assert grown.n_users == 5
    np.testing.assert_array_equal(grown.user(0)[0], [4, 5, 6, 2])  # a tie goes after stored events
    np.testing.assert_array_equal(grown.user(4)[0], [1])


def test_carve_last_matches_leave_one_out(small_drifting: Dataset) -> None:
    split = leave_one_out(small_drifting)
    train, val = carve_last(split.train_valid)
    assert train.n_interactions == split.train.n_interactions
    np.testing.assert_array_equal(val.items, split.validation.items)
    np.testing.assert_array_equal(val.users, split.validation.users)
    assert isinstance(val, Targets)


def test_history_pairs_mask_the_past_but_never_the_target() -> None:
    inp = np.array([[-1, 4, 5], [7, 8, 7]])
    tgt = np.array([[4, 5, 6], [8, 7, 9]])
    rows, items = history_pairs(inp, tgt)
    # Valid positions in row-major order: (0,1) (0,2) (1,0) (1,1) (1,2); at (1,1) the target 7
    # is also a past item (a repeat) and stays in the softmax.
    np.testing.assert_array_equal(rows, [0, 1, 1, 2, 3, 4, 4, 4])
    np.testing.assert_array_equal(items, [4, 4, 5, 7, 8, 7, 8, 7])


def test_decayed_interests_against_hand_computed_weights() -> None:
    import torch

    from driftrank.rerank._seqnets import decayed_interests

    # One query at T seeing 3 events 0, 1 and 2 days old (a 4th is hidden), two half-lives.
    gap = torch.tensor([[[2.0, 1.0, 0.0, 0.5]]])
    visible = torch.tensor([[[True, True, True, False]]])
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [9.0, 9.0]]])
    out = decayed_interests(gap, visible, x, torch.log(torch.tensor([1.0, 2.0])))
    for s, tau in enumerate([1.0, 2.0]):
        w = np.array([2 ** (-2 / tau), 2 ** (-1 / tau), 1.0])
        expect = (w[:, None] * np.array([[1, 0], [0, 1], [1, 1]])).sum(0) / w.sum()
        np.testing.assert_allclose(out[0, 0, s].numpy(), expect, rtol=1e-6)
    # τ = 1 day: weights 1/4, 1/2, 1 -> (1.25, 1.5) / 1.75.
    np.testing.assert_allclose(out[0, 0, 0].numpy(), [1.25 / 1.75, 1.5 / 1.75], rtol=1e-6)
    # Events years old do not underflow to NaN.
    far = decayed_interests(gap * 1e6, visible, x, torch.zeros(1))
    assert torch.isfinite(far).all()


def test_gap_buckets_are_log2_minutes() -> None:
    import torch

    from driftrank.rerank._seqnets import gap_buckets

    minute = 1.0 / 1440.0
    gaps = torch.tensor([-1.0, 0.0, 0.5 * minute, minute, 3 * minute, 1.0 / 24, 1.0, 7.0, 365.0, 1e5])
    expect = [0, 0, 0, 1, 2, 5, 10, 13, 19, 23]  # floor(log2(1 + minutes)), capped at 23
    assert gap_buckets(gaps, 24).tolist() == expect


def test_sampled_softmax_batches_for_large_catalogs(small_drifting: Dataset) -> None:
    cfg = SequenceRerankerConfig(**{**TINY, "softmax_items": 20})
    model = SequenceReranker(cfg)
    h = Histories.from_dataset(small_drifting)
    w_items, w_times, w_users = training_windows(h, cfg.max_len, cfg.stride)
    rng = np.random.default_rng(0)
    n_items = small_drifting.n_items
    assert n_items > 20
    b = model._make_batch(w_items[:8], w_times[:8], w_users[:8], n_items, rng, None)
    sample = b["sample"].numpy()
    inp, tgt = w_items[:8, :-1], w_items[:8, 1:]
    targets = tgt[inp >= 0]
    assert np.all(np.diff(sample) > 0) and len(sample) >= 20 and np.isin(targets, sample).all()
    # the history mask points at sample columns holding exactly the masked history items
    rows_full, items_full = history_pairs(inp, tgt)
    in_sample = np.isin(items_full, sample)
    np.testing.assert_array_equal(b["hist_rows"].numpy(), rows_full[in_sample])
    np.testing.assert_array_equal(sample[b["hist_items"].numpy()], items_full[in_sample])
    # a catalog no larger than softmax_items keeps the full softmax
    full = SequenceReranker(SequenceRerankerConfig(**{**TINY, "softmax_items": n_items}))
    assert full._make_batch(w_items[:8], w_times[:8], w_users[:8], n_items, rng, None)["sample"] is None
    # training with the sampled softmax is deterministic and learns something
    text = random_vectors(small_drifting)
    a = SequenceReranker(cfg).fit(small_drifting, text)
    c = SequenceReranker(cfg).fit(small_drifting, text)
    users = np.arange(small_drifting.n_users)
    np.testing.assert_array_equal(a.rank(users, 10).items, c.rank(users, 10).items)
    assert a.fit_report_ is not None and a.fit_report_.history[-1]["loss"] < a.fit_report_.history[0]["loss"]


def test_dropout_keeps_its_share_reproducibly_and_scales() -> None:
    import torch

    from driftrank.rerank._seqnets import Dropout

    torch.set_num_threads(1)
    drop = Dropout(0.2).train()
    x = torch.ones(200, 500, requires_grad=True)
    torch.manual_seed(3)
    y = drop(x)
    torch.manual_seed(3)
    again = drop(x)
    assert torch.equal(y, again)  # the numpy masks follow torch's seed
    kept = y != 0
    # 51 of 256 byte values drop: 19.92 %; 100,000 draws give a standard error of 0.13 %.
    assert abs(kept.float().mean().item() - 205 / 256) < 0.005
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 256 / 205))
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() * 256 / 205)
    assert torch.equal(drop.eval()(x), x)
    with pytest.raises(ValueError, match="dropout p"):
        Dropout(1.0)


def test_written_out_training_attention_equals_the_fused_kernel() -> None:
    import torch

    from driftrank.rerank._seqnets import TransformerBlock

    torch.set_num_threads(1)
    torch.manual_seed(0)
    # p = 0.001 rounds to no dropped byte value: the training path runs the written-out
    # attention (dropout > 0) with identity masks, so it must equal eval mode's SDPA.
    block = TransformerBlock(16, 2, 0.001, 32)
    x = torch.randn(3, 7, 16)
    allowed = torch.ones(7, 7, dtype=torch.bool).tril().expand(3, 7, 7).clone()
    allowed[0, :, :3] = False
    allowed[0] |= torch.eye(7, dtype=torch.bool)
    train_out = block.train()(x, allowed)
    eval_out = block.eval()(x, allowed)
    torch.testing.assert_close(train_out, eval_out, rtol=1e-5, atol=1e-6)


def test_last_position_encoding_equals_the_full_encoding() -> None:
    import torch

    from driftrank.rerank._seqnets import CausalEncoder

    torch.set_num_threads(1)
    torch.manual_seed(0)
    enc = CausalEncoder(16, 3, 2, 0.0, 32).eval()
    x = torch.randn(4, 9, 16)
    valid = torch.ones(4, 9, dtype=torch.bool)
    valid[0, :5] = False  # left padding
    valid[1, :8] = False  # one event
    with torch.inference_mode():
        full = enc(x, valid)
        last = enc(x, valid, last_only=True)
    assert last.shape == (4, 1, 16)
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("heads", [1, 2])
def test_served_candidate_scores_equal_the_training_path(heads: int) -> None:
    import torch

    from driftrank.rerank._seqnets import RerankerNet

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = RerankerNet(
        torch.randn(40, 12),
        (torch.arange(40) < 30).float(),
        dim=16,
        n_layers=1,
        heads=2,
        attention_heads=heads,
        max_len=8,
        dropout=0.0,
        half_lives_days=(1.0, 30.0),
        learn_half_lives=True,
        n_buckets=6,
        candidate_attention=True,
    ).eval()
    for p in net.parameters():  # att_o and att_gap start at zero: make every term count
        torch.nn.init.normal_(p, std=0.3)
    b, n, nq, c = 3, 8, 2, 5
    items = torch.randint(0, 40, (b, n))
    items[0, :3] = -1
    valid = items >= 0
    times = torch.sort(torch.rand(b, n) * 10, dim=1).values
    tables = net.item_tables()
    eh = net.history_vectors(tables[0], items, valid)
    qpos = torch.tensor([[5, 7], [7, 7], [2, 6]])
    gap, visible = net.context(times, valid, qpos, torch.full((b, nq), 11.0))
    u = torch.randn(b, nq, 16)
    cand = torch.randint(0, 40, (b, nq, c))
    with torch.no_grad():
        served = net.scores(u, net.gap_bias(gap, visible), eh, tables, cand)
    with torch.enable_grad():
        trained = net.scores(u, net.gap_bias(gap, visible), eh, tables, cand)
    assert served.shape == (b, nq, c)
    torch.testing.assert_close(served, trained.detach(), rtol=1e-5, atol=1e-5)


def test_served_states_are_memoised_per_history_window(
    fitted: SequenceReranker, small_drifting: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = SequenceReranker.from_state(*fitted.get_state())
    model.clear_memo()  # from_state restores every stored window; start with none
    net = model.net_
    assert net is not None
    encoded: list[int] = []
    encode = net.encode
    monkeypatch.setattr(
        net,
        "encode",
        lambda table, items, *a, **k: encoded.append(len(items)) or encode(table, items, *a, **k),
    )
    users = np.array([5, 0, 17, 33, 5, 59], dtype=np.int64)
    cands = some_candidates(small_drifting, users)
    at = small_drifting.timestamps.max() + np.arange(len(users)) * 86400.0
    first = model.score(users, cands, at)
    # User 5 twice in one batch: each distinct window is encoded.
    assert sum(encoded) == 6 and model._memo is not None and len(model._memo[1]) == 5
    # Other request times, same windows: nothing is encoded again, and the scores are those
    # of a model without the memo (time enters after the transformer).
    later = at + 3600.0
    again = model.score(users, cands, later)
    assert sum(encoded) == 6
    model.clear_memo()
    np.testing.assert_allclose(again, model.score(users, cands, later), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(first, model.score(users, cands, at), rtol=1e-5, atol=1e-6)
    assert sum(encoded) == 6 + 6  # refilled by the first call after clear_memo
    # A new event changes the user's window: it is encoded on the next request.
    items, _ = small_drifting.sequences.user(0)
    model.observe(np.array([0]), items[:1], np.array([at.max() + 86400.0]))
    before = sum(encoded)
    model.score(np.array([0]), [np.arange(10)])
    assert sum(encoded) == before + 1
    # New items change the tables but not the old items' vectors: the memo moves with them,
    # and the users are not encoded again; their scores are those of a fresh encoding.
    assert model._memo is not None
    entries = dict(model._memo[1])
    old_tables = model._memo[0]
    model.extend_items(np.ones((1, model.net_.text.shape[1]), np.float32))
    assert model._memo is not None and model._memo[0] is not old_tables and model._memo[1] == entries
    before = sum(encoded)
    carried = model.score(users, cands, later)
    assert sum(encoded) == before
    model.clear_memo()
    np.testing.assert_allclose(carried, model.score(users, cands, later), rtol=1e-6, atol=1e-6)
    assert sum(encoded) > before
    model.clear_memo()
    model.score(np.array([0]), [np.arange(10)])
    # (a one-user request memoises its window's state and its query side at the request time)
    assert len(model._memo[1]) == 2
    single = model.score(np.array([0]), [np.arange(10)])
    assert len(model._memo[1]) == 2
    fresh = SequenceReranker.from_state(*model.get_state()).score(np.array([0]), [np.arange(10)])
    np.testing.assert_array_equal(single, fresh)
    # The memo is bounded: the oldest windows go first.
    model.memo_entries = 3
    model.score(np.arange(8, dtype=np.int64), [np.arange(5)] * 8)
    assert len(model._memo[1]) == 3


def test_early_stopping_waits_for_min_epochs() -> None:
    import torch

    from driftrank.rerank._train import train_loop

    net = torch.nn.Linear(2, 1)

    def run(min_epochs: int) -> tuple[int, int]:
        scores = iter([0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.01, 0.0])  # only worse after epoch 1
        loop = train_loop(
            net,
            epochs=8,
            lr=1e-3,
            weight_decay=0.0,
            batches=lambda e: [torch.ones(4, 2)],
            step=lambda b: net(b).pow(2).mean(),
            validate=lambda: next(scores),
            patience=1,
            min_epochs=min_epochs,
        )
        return loop.epochs, loop.best_epoch

    assert run(0) == (2, 1)  # stops at the first evaluation without improvement
    assert run(5) == (5, 1)  # the same scores, but not before epoch 5; the best weights stay epoch 1


@pytest.mark.parametrize("average", [1, 3])
def test_train_loop_keeps_the_best_or_the_mean_of_the_last_checkpoints(average: int) -> None:
    import torch

    from driftrank.rerank._train import train_loop

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    seen: list[torch.Tensor] = []  # the weights at each evaluation
    scores = iter([0.1, 0.3, 0.2, 0.25, 0.15, 0.9])  # best at epoch 2, early stop after epoch 5

    def validate() -> float:
        seen.append(net.weight.detach().clone())
        return next(scores)

    loop = train_loop(
        net,
        epochs=8,
        lr=0.1,
        weight_decay=0.0,
        batches=lambda e: [torch.randn(5, 3)],
        step=lambda b: (net(b) - 1.0).pow(2).mean(),
        validate=validate,
        patience=3,
        average=average,
    )
    assert (loop.epochs, loop.best_epoch, loop.best_score) == (5, 2, 0.3)
    if average == 1:
        assert loop.averaged == () and loop.averaged_score is None
        assert torch.equal(net.weight, seen[1])
    else:
        # The last three checkpoints (epochs 3-5), averaged, then validated once more.
        assert loop.averaged == (3, 4, 5) and loop.averaged_score == 0.9
        assert torch.allclose(net.weight, torch.stack(seen[2:5]).mean(0), atol=1e-7)
        assert torch.equal(seen[-1], net.weight)  # the reported score is the average's
    assert not net.training
    with pytest.raises(ValueError, match="average must be a positive integer"):
        train_loop(net, epochs=1, lr=0.1, weight_decay=0.0, batches=lambda e: [], step=lambda b: b, average=0)
