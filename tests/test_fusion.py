"""Fusion stage: feature builder, gated fusion model, baselines, contributions, ablation."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftrank.errors import ConfigError, DataError, NotFittedError
from driftrank.fusion import (
    FeatureBuilder,
    FeatureConfig,
    Fuser,
    FusionConfig,
    FusionInput,
    FusionModel,
    LinearFusion,
    LinearFusionConfig,
    ReciprocalRankFusion,
    RRFConfig,
    ablation,
    candidate_metrics,
    fuser_from_state,
    rank_candidates,
    target_positions,
)
from driftrank.types import Candidates

FEATURES = FeatureConfig(log_signals=("history", "popularity"))
SMALL = FusionConfig(features=FEATURES, max_epochs=15, mlp_hidden=8, gate_hidden=4)


def _ranks_within(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """0-based descending rank of each non-NaN value within its user (NaN stays NaN)."""
    out = np.full(len(values), np.nan)
    for j in range(len(offsets) - 1):
        v = values[offsets[j] : offsets[j + 1]]
        ok = np.flatnonzero(~np.isnan(v))
        order = ok[np.argsort(-v[ok], kind="stable")]
        r = np.full(len(v), np.nan)
        r[order] = np.arange(len(order))
        out[offsets[j] : offsets[j + 1]] = r
    return out


def make_gated_data(
    n_users: int, seed: int, n_cands: int = 30, n_items: int = 500, strength: float = 2.0
) -> tuple[FusionInput, np.ndarray, np.ndarray]:
    """Users are heavy (long histories) or light. The CF channel ``cf`` separates the target for
    heavy users only; the text signal ``text`` for light users only; ``popularity`` is noise.
    Returns the input, the target item per user and the heavy mask."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(n_cands - 8, n_cands + 8, size=n_users)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    m = int(offsets[-1])
    items = np.concatenate([rng.choice(n_items, size=c, replace=False) for c in counts]).astype(np.int64)
    user_of = np.repeat(np.arange(n_users), counts)
    tpos = np.array([rng.integers(0, c) for c in counts])
    targets = items[offsets[:-1] + tpos]
    is_t = np.zeros(m, dtype=bool)
    is_t[offsets[:-1] + tpos] = True
    heavy = rng.random(n_users) < 0.5
    hist = np.where(heavy, rng.integers(40, 400, n_users), rng.integers(1, 8, n_users)).astype(np.float64)
    cf = rng.standard_normal(m) + strength * (is_t & heavy[user_of])
    # the CF channel misses a fifth of the candidates (never a heavy user's target)
    cf[(rng.random(m) < 0.2) & ~(is_t & heavy[user_of])] = np.nan
    text = rng.standard_normal(m) + strength * (is_t & ~heavy[user_of])
    cand = Candidates(
        users=np.arange(n_users, dtype=np.int64),
        offsets=offsets,
        items=items,
        scores=cf[:, None].astype(np.float32),
        ranks=_ranks_within(cf, offsets)[:, None].astype(np.float32),
        sources=("cf",),
    )
    inp = FusionInput(
        cand,
        signals={"text": text.astype(np.float32)},
        item_signals={"popularity": rng.random(n_items) * 100},
        user_signals={"history": hist},
    )
    return inp, targets.astype(np.int64), heavy


@pytest.fixture(scope="module")
def gated_data():
    train = make_gated_data(700, seed=0)
    test = make_gated_data(400, seed=1)
    return train, test


@pytest.fixture(scope="module")
def small_data():
    """Two sources (one with gaps), one signal, item and user signals; 150 users."""
    inp, targets, _ = make_gated_data(150, seed=5, n_cands=16, n_items=120)
    rng = np.random.default_rng(7)
    c = inp.candidates
    m = len(c.items)
    als = rng.standard_normal(m) + (c.items % 7 == 0)
    als[rng.random(m) < 0.4] = np.nan
    cand = Candidates(
        c.users,
        c.offsets,
        c.items,
        np.column_stack([c.scores[:, 0], als]).astype(np.float32),
        np.column_stack([c.ranks[:, 0], _ranks_within(als, c.offsets)]).astype(np.float32),
        ("cf", "als"),
    )
    inp = FusionInput(
        cand,
        signals=dict(inp.signals),
        item_signals={"popularity": inp.item_signals["popularity"], "age": rng.random(120) * 3000},
        user_signals={"history": inp.user_signals["history"], "since": rng.random(150) * 30},
    )
    return inp, targets


@pytest.fixture(scope="module")
def fitted(small_data):
    inp, targets = small_data
    return {
        "gated": FusionModel(SMALL).fit(inp, targets),
        "linear": LinearFusion(LinearFusionConfig(features=FEATURES)).fit(inp, targets),
        "fixed": LinearFusion(LinearFusionConfig(method="fixed")).fit(inp, targets),
        "rrf": ReciprocalRankFusion(RRFConfig(signals=("text",))).fit(inp, targets),
    }


def _ndcg(inp: FusionInput, scores: np.ndarray, targets: np.ndarray) -> float:
    return candidate_metrics(inp.candidates, scores, targets)["NDCG@10"]


# ---------------------------------------------------------------------------- known answer
def test_gated_fusion_beats_single_signals_and_linear_mixes(gated_data):
    (train, tt, _), (test, te, heavy) = gated_data
    model = FusionModel(FusionConfig(features=FEATURES)).fit(train, tt)
    gated = _ndcg(test, model.score(test), te)
    cf_alone = _ndcg(test, np.nan_to_num(test.candidates.scores[:, 0], nan=-1e9), te)
    text_alone = _ndcg(test, test.signals["text"], te)
    pop_alone = _ndcg(test, test.item_signals["popularity"][test.candidates.items], te)
    fixed = LinearFusion(LinearFusionConfig(method="fixed", features=FEATURES)).fit(train, tt)
    logistic = LinearFusion(LinearFusionConfig(features=FEATURES)).fit(train, tt)
    rrf = ReciprocalRankFusion(RRFConfig(signals=("text",)))
    for name, other in [
        ("cf", cf_alone),
        ("text", text_alone),
        ("popularity", pop_alone),
        ("fixed linear", _ndcg(test, fixed.score(test), te)),
        ("logistic linear", _ndcg(test, logistic.score(test), te)),
        ("rrf", _ndcg(test, rrf.score(test), te)),
    ]:
        assert gated > other + 0.08, f"gated NDCG@10 {gated:.3f} vs {name} {other:.3f}"
    # the gate learned who trusts what
    groups, gate = model.gate(test)
    assert groups == ("cf", "text", "popularity")
    assert gate[heavy, 0].mean() > 0.6 > gate[~heavy, 0].mean()
    assert gate[~heavy, 1].mean() > 0.6 > gate[heavy, 1].mean()
    rep = model.report_
    assert rep is not None and rep.n_train + rep.n_valid == 700 and rep.n_target_missing == 0
    assert rep.best_epoch <= rep.epochs and len(rep.valid_loss) == rep.epochs


def test_fit_report_counts_skipped_users(small_data):
    inp, targets = small_data
    t = targets.copy()
    t[:5] = -1  # no target
    t[5:12] = 10_000  # not among the candidates
    model = FusionModel(FusionConfig(max_epochs=2, mlp_hidden=0, valid_share=0.2)).fit(inp, t)
    rep = model.report_
    assert rep is not None
    assert (rep.n_users, rep.n_no_target, rep.n_target_missing) == (150, 5, 7)
    assert rep.n_train + rep.n_valid == 138 and rep.n_valid == round(0.2 * 138)


def test_too_few_usable_users_is_an_error(small_data):
    inp, targets = small_data
    t = np.full_like(targets, -1)
    t[0] = targets[0]
    with pytest.raises(DataError, match="at least 2 users"):
        FusionModel(SMALL).fit(inp, t)
    with pytest.raises(DataError, match="targets must be int"):
        FusionModel(SMALL).fit(inp, targets[:-1])


# ---------------------------------------------------------------------------- RRF
def _two_user_candidates() -> FusionInput:
    # user 7: items 3, 1, 4; user 2: items 9, 5
    nan = np.nan
    ranks = np.array([[0, 2], [1, nan], [nan, 0], [1, 0], [0, 1]], dtype=np.float32)
    scores = np.where(np.isnan(ranks), nan, 1.0).astype(np.float32)
    cand = Candidates(
        users=np.array([7, 2]),
        offsets=np.array([0, 3, 5]),
        items=np.array([3, 1, 4, 9, 5]),
        scores=scores,
        ranks=ranks,
        sources=("a", "b"),
    )
    return FusionInput(cand, signals={"llm": np.array([0.1, 0.9, 0.5, nan, 2.0], dtype=np.float32)})


def test_rrf_hand_computed():
    inp = _two_user_candidates()
    got = ReciprocalRankFusion().score(inp)
    want = [1 / 61 + 1 / 63, 1 / 62, 1 / 61, 1 / 62 + 1 / 61, 1 / 61 + 1 / 62]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # weights, a subset of sources, a signal ranked within its user (llm: user 7 -> 1, 2, 0 places)
    rrf = ReciprocalRankFusion(RRFConfig(k=10, sources=("b",), signals=("llm",), weights=(("llm", 2.0),)))
    got = rrf.score(inp)
    want = [1 / 13 + 2 / 13, 2 / 11, 1 / 11 + 2 / 12, 1 / 11, 1 / 12 + 2 / 11]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    ex = rrf.explain(inp)
    assert ex.groups == ("b", "llm")
    np.testing.assert_allclose(ex.of("llm"), [2 / 13, 2 / 11, 2 / 12, 0, 2 / 11], rtol=1e-6)
    np.testing.assert_allclose(ex.total(), got, rtol=1e-6)
    ranking, rows = rank_candidates(inp.candidates, got, k=3)
    np.testing.assert_array_equal(ranking.items, [[4, 3, 1], [5, 9, -1]])
    np.testing.assert_array_equal(rows, [[2, 0, 1], [4, 3, -1]])
    with pytest.raises(DataError, match="not in the input"):
        ReciprocalRankFusion(RRFConfig(sources=("als",))).score(inp)


@settings(max_examples=60, deadline=None)
@given(
    ranks=st.lists(
        st.lists(st.one_of(st.none(), st.integers(0, 500)), min_size=3, max_size=3), min_size=1, max_size=12
    ),
    row=st.integers(0, 11),
    col=st.integers(0, 2),
    better=st.integers(0, 500),
)
def test_rrf_is_monotone_in_each_rank(ranks, row, col, better):
    r = np.array([[np.nan if v is None else v for v in rr] for rr in ranks], dtype=np.float32)
    row = row % len(r)
    m = len(r)
    cand = Candidates(
        np.array([0]), np.array([0, m]), np.arange(m), np.zeros((m, 3), np.float32), r, ("a", "b", "c")
    )
    rrf = ReciprocalRankFusion()
    before = rrf.score(FusionInput(cand))
    r2 = r.copy()
    old = r2[row, col]
    r2[row, col] = better if np.isnan(old) else min(old, better)
    cand2 = Candidates(cand.users, cand.offsets, cand.items, cand.scores, r2, cand.sources)
    after = rrf.score(FusionInput(cand2))
    assert after[row] >= before[row]
    others = np.arange(m) != row
    np.testing.assert_array_equal(after[others], before[others])


# ---------------------------------------------------------------------------- features
def test_feature_builder_known_answer():
    ranks = np.array([[0], [1], [3], [np.nan], [7]], dtype=np.float32)
    scores = np.array([[5], [4], [3], [np.nan], [1]], dtype=np.float32)
    cand = Candidates(np.array([1, 0]), np.array([0, 3, 5]), np.array([0, 1, 2, 0, 3]), scores, ranks, ("s",))
    inp = FusionInput(
        cand,
        signals={"x": np.array([1.0, 2.0, 3.0, 4.0, np.nan])},
        item_signals={"pop": np.array([0.0, 9.0, 99.0, 999.0])},
        user_signals={"n": np.array([10.0, np.nan])},
    )
    fb = FeatureBuilder(FeatureConfig(log_signals=("pop",), clip=3.0)).fit(inp)
    assert fb.names_ == ("s:score", "s:rank", "s:missing", "x:value", "x:missing", "pop:value", "pop:missing")
    assert fb.user_names_ == ("n:value", "n:missing")
    fm = fb.transform(inp)
    # scores 5,4,3,1: median 3.5, IQR 4.25-2.5=1.75; missing -> the lowest score seen
    np.testing.assert_allclose(fm.x[:, 0], np.array([1.5, 0.5, -0.5, -2.5, -2.5]) / 1.75, rtol=1e-6)
    # ranks -> -log1p(r): missing -> one place below the longest list (rank 8), clipped at 3
    lr = -np.log1p(np.array([0, 1, 3, 7.0]))
    med, iqr = np.median(lr), np.subtract(*np.quantile(lr, [0.75, 0.25]))
    want = np.clip((np.array([*lr[:3], -np.log1p(8.0), lr[3]]) - med) / iqr, -3, 3)
    np.testing.assert_allclose(fm.x[:, 1], want, rtol=1e-5)
    np.testing.assert_array_equal(fm.x[:, 2], [0, 0, 0, 1, 0])
    np.testing.assert_allclose(fm.x[:, 3], [-1.5 / 1.5, -0.5 / 1.5, 0.5 / 1.5, 1.5 / 1.5, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(fm.x[:, 4], [0, 0, 0, 0, 1])
    # user signals: user 1 (first of the batch) is unknown -> centre; user_row points into u
    np.testing.assert_array_equal(fm.u, [[0.0, 1.0], [0.0, 0.0]])
    np.testing.assert_array_equal(fm.user_row, [0, 0, 0, 1, 1])
    x0, u0 = fb.baseline()
    np.testing.assert_allclose(x0, [fm.x[3, 0], fm.x[3, 1], 1, 0, 1, 0, 1], rtol=1e-6)
    np.testing.assert_array_equal(u0, [0, 1])
    # rows subset = the same rows of the full transform
    sub = fb.transform(inp, np.array([4, 1]))
    np.testing.assert_array_equal(sub.x, fm.x[[4, 1]])
    # reciprocal ranks, unscaled: 1 / (1 + r), missing -> one place below the longest list
    fr = FeatureBuilder(FeatureConfig(rank_transform="reciprocal", scaling="none", source_scores=False)).fit(
        inp
    )
    np.testing.assert_allclose(fr.transform(inp).x[:, 0], [1, 1 / 2, 1 / 4, 1 / 9, 1 / 8], rtol=1e-6)
    # a state round trip rebuilds the same features
    conf, arrays = fb.get_state()
    fb2 = FeatureBuilder.from_state(json.loads(json.dumps(conf)), arrays)
    np.testing.assert_array_equal(fb2.transform(inp).x, fm.x)
    # ranks are 0-based places: a negative one is refused, naming its source
    bad = Candidates(cand.users, cand.offsets, cand.items, scores, np.where(ranks == 3, -1, ranks), ("s",))
    with pytest.raises(DataError, match="ranks of source 's' must be >= 0"):
        fb.transform(FusionInput(bad, inp.signals, inp.item_signals, inp.user_signals))


def test_input_validation():
    inp = _two_user_candidates()
    c = inp.candidates
    with pytest.raises(DataError, match="one value per candidate"):
        FusionInput(c, signals={"llm": np.zeros(4)})
    with pytest.raises(DataError, match="covers 5 items"):
        FusionInput(c, item_signals={"pop": np.zeros(5)})
    with pytest.raises(DataError, match="covers 3 users"):
        FusionInput(c, user_signals={"n": np.zeros(3)})
    with pytest.raises(DataError, match="unique"):
        FusionInput(c, signals={"a": np.zeros(5)})
    with pytest.raises(DataError, match="infinite"):
        FusionInput(c, signals={"llm": np.array([0, 1, np.inf, 0, 0])})
    with pytest.raises(DataError, match="unknown signal groups"):
        inp.drop(["nope"])
    with pytest.raises(ConfigError):
        FusionConfig(max_epochs=0)
    with pytest.raises(ConfigError):
        FusionConfig(valid_share=1.0)
    with pytest.raises(ConfigError):
        FeatureConfig(rank_transform="sqrt")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        LinearFusionConfig(method="svm")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        RRFConfig(k=-1)
    with pytest.raises(NotFittedError):
        FusionModel().score(inp)
    with pytest.raises(NotFittedError):
        LinearFusion().score(inp)
    with pytest.raises(DataError, match="positive integer"):
        rank_candidates(c, np.zeros(5), 0)


def test_serving_input_must_carry_the_fitted_signals(fitted, small_data):
    inp, _ = small_data
    for name in ("gated", "linear"):
        with pytest.raises(DataError, match="fitted with signals"):
            fitted[name].score(inp.drop(["text"]))
        with pytest.raises(DataError, match="fitted with sources"):
            fitted[name].score(inp.drop(["als"]))
    # same names in another column order is fine
    c = inp.candidates
    swapped = FusionInput(
        Candidates(c.users, c.offsets, c.items, c.scores[:, ::-1], c.ranks[:, ::-1], c.sources[::-1]),
        inp.signals,
        inp.item_signals,
        inp.user_signals,
    )
    np.testing.assert_array_equal(fitted["gated"].score(swapped), fitted["gated"].score(inp))


# ---------------------------------------------------------------------------- missing values
def test_channel_that_is_all_missing(small_data):
    inp, targets = small_data
    c = inp.candidates
    nan_col = np.full((len(c.items), 1), np.nan, dtype=np.float32)
    cand = Candidates(
        c.users,
        c.offsets,
        c.items,
        np.hstack([c.scores, nan_col]),
        np.hstack([c.ranks, nan_col]),
        (*c.sources, "dead"),
    )
    with_dead = FusionInput(cand, inp.signals, inp.item_signals, inp.user_signals)
    for fuser in (
        FusionModel(SMALL),
        LinearFusion(LinearFusionConfig(features=FEATURES)),
        LinearFusion(LinearFusionConfig(method="fixed")),
        ReciprocalRankFusion(),
    ):
        fuser.fit(with_dead, targets)
        s = fuser.score(with_dead)
        assert np.isfinite(s).all()
        ex = fuser.explain(with_dead)
        np.testing.assert_array_equal(ex.of("dead"), 0.0)
        np.testing.assert_allclose(ex.total(), s, rtol=1e-4, atol=1e-4)
    # a dead channel changes nothing for RRF, and the gated model learns the same ranking quality
    np.testing.assert_allclose(ReciprocalRankFusion().score(with_dead), ReciprocalRankFusion().score(inp))
    a = _ndcg(inp, FusionModel(SMALL).fit(inp, targets).score(inp), targets)
    b = _ndcg(with_dead, FusionModel(SMALL).fit(with_dead, targets).score(with_dead), targets)
    assert abs(a - b) < 0.05


def test_missing_signal_contributes_nothing(fitted, small_data):
    inp, _ = small_data
    als_missing = np.isnan(inp.candidates.scores[:, 1])
    assert als_missing.any() and (~als_missing).any()
    for name in ("gated", "linear", "rrf"):
        ex = fitted[name].explain(inp)
        np.testing.assert_array_equal(ex.of("als")[als_missing], 0.0)
        assert np.abs(ex.of("als")[~als_missing]).max() > 0


# ---------------------------------------------------------------------------- contributions
@pytest.mark.parametrize("name", ["gated", "linear", "fixed", "rrf"])
def test_contributions_add_up_to_the_score(fitted, small_data, name):
    inp, _ = small_data
    fuser = fitted[name]
    s = fuser.score(inp)
    ex = fuser.explain(inp)
    assert ex.values.shape == (inp.n_rows, len(ex.groups))
    np.testing.assert_allclose(ex.total(), s, rtol=1e-4, atol=1e-4)
    rows = np.array([17, 3, 3, 0])
    sub = fuser.explain(inp, rows)
    np.testing.assert_allclose(sub.values, ex.values[rows], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sub.base, ex.base[rows], rtol=1e-5, atol=1e-6)


def test_gated_contributions_cover_every_group_and_match_a_numeric_path_integral(fitted, small_data):
    inp, _ = small_data
    model = fitted["gated"]
    ex = model.explain(inp, np.arange(40))
    assert ex.groups == ("cf", "als", "text", "popularity", "age", "history", "since")
    # the MLP share of a user group, by a fine Riemann sum of the gradient along the path
    import torch

    fb = model.features_
    p = {k: torch.tensor(v, dtype=torch.float64) for k, v in model.params_.items()}
    fm = fb.transform(inp, np.arange(40))
    x0, u0 = (torch.tensor(a, dtype=torch.float64) for a in fb.baseline())
    x = torch.tensor(fm.x, dtype=torch.float64)
    u = torch.tensor(fm.u[fm.user_row], dtype=torch.float64)
    z0 = torch.cat([x0, u0])
    z = torch.cat([x, u], dim=1)
    steps = 4000
    grads = torch.zeros_like(z)
    for a in (torch.arange(steps, dtype=torch.float64) + 0.5) / steps:
        zz = (z0 + a * (z - z0)).requires_grad_(True)
        out = torch.relu(zz @ p["mlp_w1"].T + p["mlp_b1"]) @ p["mlp_w2"]
        (g,) = torch.autograd.grad(out.sum(), zz)
        grads += g / steps
    ig = ((z - z0) * grads).numpy()
    n_x = x.shape[1]
    users = [i for i, g in enumerate(fb.user_groups_) if g == "history"]
    np.testing.assert_allclose(ex.of("history"), ig[:, [n_x + i for i in users]].sum(1), atol=2e-3)


def test_numpy_serving_matches_the_torch_training_forward(fitted, small_data):
    import torch

    from driftrank.fusion._train import GatedScorer

    inp, _ = small_data
    model = fitted["gated"]
    fm = model.features_.transform(inp)
    net = GatedScorer(model.params_, model._group_index(), len(model.gated_groups))
    c = inp.candidates
    for j in (0, 5, 149):
        sl = c.of(j)
        with torch.no_grad():
            t = net(torch.from_numpy(fm.x[sl][None]), torch.from_numpy(fm.u[[j]]))[0].numpy()
        np.testing.assert_allclose(model.score(inp)[sl], t, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("name", ["gated", "linear", "rrf"])
def test_batch_equals_single(fitted, small_data, name):
    inp, _ = small_data
    fuser = fitted[name]
    batch = fuser.score(inp)
    for j in (0, 1, 77, 149):
        single = fuser.score(inp.subset(np.array([j])))
        np.testing.assert_array_equal(single, batch[inp.candidates.of(j)])
    rev = np.arange(len(inp.candidates))[::-1]
    rows = np.concatenate([np.arange(*inp.candidates.of(j).indices(inp.n_rows)) for j in rev])
    np.testing.assert_array_equal(fuser.score(inp.subset(rev)), batch[rows])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), name=st.sampled_from(["gated", "linear", "rrf"]))
def test_scores_do_not_depend_on_candidate_order(fitted, small_data, seed, name):
    inp, _ = small_data
    rng = np.random.default_rng(seed)
    c = inp.candidates
    perm = np.concatenate([rng.permutation(np.arange(c.offsets[j], c.offsets[j + 1])) for j in range(len(c))])
    shuffled = FusionInput(
        Candidates(c.users, c.offsets, c.items[perm], c.scores[perm], c.ranks[perm], c.sources),
        {k: v[perm] for k, v in inp.signals.items()},
        inp.item_signals,
        inp.user_signals,
    )
    fuser = fitted[name]
    np.testing.assert_array_equal(fuser.score(shuffled), fuser.score(inp)[perm])
    a, _ = rank_candidates(c, fuser.score(inp), 10)
    b, _ = rank_candidates(shuffled.candidates, fuser.score(shuffled), 10)
    np.testing.assert_array_equal(a.items, b.items)


def test_same_seed_same_model_other_seed_other_model(small_data):
    inp, targets = small_data
    a = FusionModel(SMALL).fit(inp, targets)
    b = FusionModel(SMALL).fit(inp, targets)
    c = FusionModel(dataclasses.replace(SMALL, seed=1)).fit(inp, targets)
    for k in a.params_:
        np.testing.assert_array_equal(a.params_[k], b.params_[k])
    np.testing.assert_array_equal(a.score(inp), b.score(inp))
    assert not np.array_equal(a.params_["mlp_w1"], c.params_["mlp_w1"])


@pytest.mark.parametrize("name", ["gated", "linear", "fixed", "rrf"])
def test_empty_candidate_sets_and_unknown_users(fitted, small_data, name):
    inp, _ = small_data
    fuser = fitted[name]
    assert isinstance(fuser, Fuser)
    c = inp.candidates
    # user 0 of the batch has no candidates; user 1 has every user signal unknown (NaN)
    lo, hi = c.offsets[1], c.offsets[2]
    cand = Candidates(
        np.array([0, 1]),
        np.array([0, 0, hi - lo]),
        c.items[lo:hi],
        c.scores[lo:hi],
        c.ranks[lo:hi],
        c.sources,
    )
    unknown = {k: np.full(2, np.nan) for k in inp.user_signals}
    batch = FusionInput(cand, {k: v[lo:hi] for k, v in inp.signals.items()}, inp.item_signals, unknown)
    s = fuser.score(batch)
    assert s.shape == (hi - lo,) and np.isfinite(s).all()
    ranking, rows = rank_candidates(cand, s, 5)
    assert (ranking.items[0] == -1).all() and (rows[0] == -1).all() and (ranking.items[1] >= 0).all()
    np.testing.assert_allclose(fuser.explain(batch).total(), s, rtol=1e-4, atol=1e-4)
    empty = FusionInput(
        Candidates(
            np.array([0]), np.array([0, 0]), np.zeros(0, np.int64), c.scores[:0], c.ranks[:0], c.sources
        ),
        {k: v[:0] for k, v in inp.signals.items()},
        inp.item_signals,
        inp.user_signals,
    )
    assert fuser.score(empty).shape == (0,)
    assert fuser.explain(empty).values.shape[0] == 0


def _frozen_copy(inp: FusionInput) -> dict[str, np.ndarray]:
    c = inp.candidates
    out = {"users": c.users, "offsets": c.offsets, "items": c.items, "scores": c.scores, "ranks": c.ranks}
    out.update({f"s.{k}": v for k, v in inp.signals.items()})
    out.update({f"i.{k}": v for k, v in inp.item_signals.items()})
    out.update({f"u.{k}": v for k, v in inp.user_signals.items()})
    return {k: np.array(v, copy=True) for k, v in out.items()}


def test_inputs_are_not_mutated(small_data):
    inp, targets = small_data
    before = _frozen_copy(inp)
    t_before = targets.copy()
    for fuser in (FusionModel(SMALL), LinearFusion(), ReciprocalRankFusion(RRFConfig(signals=("text",)))):
        fuser.fit(inp, targets)
        fuser.score(inp)
        fuser.explain(inp)
    rank_candidates(inp.candidates, np.zeros(inp.n_rows), 5)
    after = _frozen_copy(inp)
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v, err_msg=k)
    np.testing.assert_array_equal(targets, t_before)


# ---------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("name", ["gated", "linear", "fixed", "rrf"])
def test_state_round_trip_scores_identically(fitted, small_data, name, tmp_path):
    inp, _ = small_data
    fuser = fitted[name]
    config, arrays = fuser.get_state()
    text = json.dumps(config)
    np.savez(tmp_path / "f.npz", **arrays)
    with np.load(tmp_path / "f.npz", allow_pickle=False) as z:
        loaded = {k: z[k] for k in z.files}
    again = fuser_from_state(json.loads(text), loaded)
    assert type(again) is type(fuser)
    np.testing.assert_array_equal(again.score(inp), fuser.score(inp))
    ex_a, ex_b = again.explain(inp), fuser.explain(inp)
    np.testing.assert_array_equal(ex_a.values, ex_b.values)
    np.testing.assert_array_equal(ex_a.base, ex_b.base)


def test_bad_state_is_refused(fitted):
    config, arrays = fitted["gated"].get_state()
    with pytest.raises(ConfigError, match="unknown fuser kind"):
        fuser_from_state({**config, "kind": "magic"}, arrays)
    broken = {k: v for k, v in arrays.items() if k != "model.lin_w"}
    with pytest.raises(ConfigError, match="lin_w"):
        fuser_from_state(config, broken)
    short = {**arrays, "model.lin_w": arrays["model.lin_w"][:-1]}
    with pytest.raises(ConfigError, match="linear weights"):
        fuser_from_state(config, short)


# ---------------------------------------------------------------------------- ranking helpers
@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(0, 9), min_size=1, max_size=6),
    k=st.integers(1, 12),
    seed=st.integers(0, 10_000),
    kind=st.sampled_from(["ties", "distinct", "infinite"]),
)
def test_rank_candidates_matches_a_loop(counts, k, seed, kind):
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    m = int(offsets[-1])
    items = np.concatenate([rng.choice(50, size=c, replace=False) for c in counts]).astype(np.int64)
    if kind == "ties":
        scores = rng.integers(0, 4, m).astype(np.float32)
    else:  # distinct scores take the partial sort, the others the full one
        scores = rng.permutation(m).astype(np.float32)
        if kind == "infinite":
            scores[rng.random(m) < 0.2] = -np.inf
    scores[rng.random(m) < 0.1] = np.nan
    z = np.zeros((m, 0), np.float32)
    cand = Candidates(np.arange(len(counts)), offsets, items, z, z, ())
    ranking, rows = rank_candidates(cand, scores, k)
    targets = np.array([items[o] if c else -1 for o, c in zip(offsets[:-1], counts)])
    pos = target_positions(cand, scores, targets)
    for j, c in enumerate(counts):
        it, sc = items[offsets[j] : offsets[j + 1]], scores[offsets[j] : offsets[j + 1]]
        order = sorted((i for i in range(c) if not np.isnan(sc[i])), key=lambda i: (-sc[i], it[i]))
        want = [it[i] for i in order[:k]]
        assert list(ranking.items[j, : len(want)]) == want
        assert (ranking.items[j, len(want) :] == -1).all()
        assert list(rows[j, : len(want)]) == [offsets[j] + i for i in order[:k]]
        if c:
            full = sorted(range(c), key=lambda i: (np.isnan(sc[i]), -np.nan_to_num(sc[i]), it[i]))
            assert pos[j] == full.index(0)
        else:
            assert pos[j] == -1


# ---------------------------------------------------------------------------- ablation
def test_ablation_table(gated_data):
    (train, tt, _), (test, te, _) = gated_data
    tr, te_in = train.subset(np.arange(300)), test.subset(np.arange(200))
    cfg = FusionConfig(features=FEATURES, mlp_hidden=0, max_epochs=25)
    table = ablation(lambda: FusionModel(cfg), tr, tt[:300], te_in, te[:200])
    assert table["variant"].to_list() == ["all"] + ["without"] * 4 + ["only"] * 3
    assert table["group"].to_list() == ["", "cf", "text", "popularity", "history", "cf", "text", "popularity"]
    assert {"NDCG@10", "HR@10", "MRR@10", "dNDCG@10", "dHR@10", "recall"} <= set(table.columns)
    ndcg = dict(zip(zip(table["variant"], table["group"]), table["NDCG@10"]))
    full = ndcg[("all", "")]
    # each informative signal matters, noise and the gate input less so; alone, each is worse
    assert ndcg[("without", "cf")] < full - 0.1
    assert ndcg[("without", "text")] < full - 0.1
    assert ndcg[("without", "history")] < full - 0.03
    assert abs(ndcg[("without", "popularity")] - full) < 0.05
    assert ndcg[("only", "cf")] < full - 0.1 and ndcg[("only", "text")] < full - 0.1
    assert ndcg[("only", "popularity")] < 0.5 * full
    np.testing.assert_allclose(table["dNDCG@10"].to_numpy(), table["NDCG@10"].to_numpy() - full)
    with pytest.raises(DataError, match="unknown signal groups"):
        ablation(lambda: FusionModel(cfg), tr, tt[:300], te_in, te[:200], groups=["llm"])


def test_import_is_cheap():
    code = "import sys, driftrank.fusion; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------- real data
def _movielens_inputs(ds, users: np.ndarray, at: np.ndarray, n: int = 200) -> FusionInput:
    """Two simple channels built here (so the test does not depend on the retrieval stage):
    ``itemknn`` (cosine item co-occurrence from the last 30 items, recency-weighted) and ``pop``
    (most popular unseen), each the top ``n`` per user; plus a genre-profile similarity signal,
    item popularity and year, and the user's history length and idle days at ``at``."""
    X = ds.to_csr(binary=True).astype(np.float64)
    seqs = ds.sequences
    pop = np.asarray(X.sum(axis=0)).ravel()
    norms = np.sqrt(pop) + 1e-9
    S = (X.T @ X).tocsr().multiply(1 / norms[:, None]).multiply(1 / norms[None, :]).tocsr()
    S.setdiag(0)
    genres = ds.items["genres"].to_list()
    vocab = sorted({g for gs in genres for g in gs})
    G = np.zeros((ds.n_items, len(vocab)))
    for i, gs in enumerate(genres):
        G[i, [vocab.index(g) for g in gs]] = 1.0
    G /= np.linalg.norm(G, axis=1, keepdims=True) + 1e-9
    seen = ds.seen
    items_l, scores_l, ranks_l, genre_l, counts = [], [], [], [], []
    for u in users:
        hist, _ = seqs.user(u)
        last = hist[-30:]
        knn = np.asarray(S[last].T @ (0.9 ** np.arange(len(last))[::-1])).ravel()
        knn[seen[u].indices] = 0.0
        a = np.argsort(-knn, kind="stable")[:n]
        a = a[knn[a] > 0]
        p = pop.copy()
        p[seen[u].indices] = -1.0
        b = np.argsort(-p, kind="stable")[:n]
        cand = np.union1d(a, b)
        sc = np.full((len(cand), 2), np.nan)
        rk = np.full((len(cand), 2), np.nan)
        for col, (lst, val) in enumerate([(a, knn), (b, pop)]):
            where = np.searchsorted(cand, lst)
            sc[where, col] = val[lst]
            rk[where, col] = np.arange(len(lst))
        prof = G[hist[-20:]].sum(axis=0)
        items_l.append(cand)
        scores_l.append(sc)
        ranks_l.append(rk)
        genre_l.append(G[cand] @ (prof / (np.linalg.norm(prof) + 1e-9)))
        counts.append(len(cand))
    last_ts = seqs.timestamps[np.maximum(seqs.indptr[1:] - 1, 0)]
    idle = np.full(ds.n_users, np.nan)
    idle[users] = (at - last_ts[users]) / 86400.0
    cands = Candidates(
        users.astype(np.int64),
        np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        np.concatenate(items_l).astype(np.int64),
        np.vstack(scores_l).astype(np.float32),
        np.vstack(ranks_l).astype(np.float32),
        ("itemknn", "pop"),
    )
    return FusionInput(
        cands,
        signals={"genre": np.concatenate(genre_l)},
        item_signals={"popularity": pop, "year": ds.items["year"].to_numpy().astype(np.float64)},
        user_signals={"history": seqs.lengths().astype(np.float64), "idle_days": idle},
    )


@pytest.mark.slow
def test_gated_fusion_on_ml100k_beats_its_channels_and_rrf(ml100k):
    """Fit on the validation step (channels from ``train``), measure on the test step (channels
    refitted on ``train_valid``): the protocol the engine uses."""
    from threadpoolctl import threadpool_limits

    from driftrank.eval import leave_one_out

    split = leave_one_out(ml100k)
    va, te = split.validation, split.test
    with threadpool_limits(1, "blas"):
        train_in = _movielens_inputs(split.train, va.users, va.timestamps)
        test_in = _movielens_inputs(split.train_valid, te.users, te.timestamps)
    feats = FeatureConfig(log_signals=("popularity", "history", "idle_days"))
    model = FusionModel(FusionConfig(features=feats)).fit(train_in, va.items)
    c = test_in.candidates
    results = {
        "gated": model.score(test_in),
        "itemknn": np.nan_to_num(c.scores[:, 0], nan=-1.0),
        "pop": np.nan_to_num(c.scores[:, 1], nan=-1.0),
        "rrf": ReciprocalRankFusion().score(test_in),
        "logistic": LinearFusion(LinearFusionConfig(features=feats)).fit(train_in, va.items).score(test_in),
    }
    metrics = {k: candidate_metrics(c, s, te.items) for k, s in results.items()}
    for k, v in metrics.items():
        print(
            f"ml-100k test {k:9s} NDCG@10 {v['NDCG@10']:.4f} HR@10 {v['HR@10']:.4f} recall {v['recall']:.3f}"
        )
    # popularity over these candidates is exactly full-catalog popularity (its top 10 are
    # candidates): the project's known answer
    assert metrics["pop"]["HR@10"] == pytest.approx(0.0859, abs=5e-4)
    assert metrics["pop"]["NDCG@10"] == pytest.approx(0.0449, abs=5e-4)
    gated = metrics["gated"]["NDCG@10"]
    assert gated > metrics["itemknn"]["NDCG@10"] + 0.003
    assert gated > metrics["rrf"]["NDCG@10"] + 0.02
    ex = model.explain(test_in, np.arange(300))
    np.testing.assert_allclose(ex.total(), model.score(test_in)[:300], rtol=1e-4, atol=1e-4)
