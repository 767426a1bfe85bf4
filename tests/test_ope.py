"""Off-policy estimators: hand-computed answers, unbiasedness and coverage on simulated logs
with a known true value, reward models, policies, the OBD loader and the OBD validation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from driftrank.errors import ConfigError, DataError, DataNotFoundError
from driftrank.replay import (
    BanditLog,
    LogisticConfig,
    LogisticRewardModel,
    MeanRewardModel,
    action_distribution,
    doubly_robust,
    evaluate_policy,
    ips,
    load_obd,
    on_policy,
    ranking_policy,
    rejection_replay,
    snips,
    softmax_policy,
    uniform_policy,
)
from driftrank.replay._cli import main as cli_main

Z95 = 1.959963984540054


def make_log(
    actions,
    rewards,
    propensities,
    *,
    n_actions: int,
    positions=None,
    n_positions: int = 1,
    contexts=None,
    n_contexts: int = 1,
    timestamps=None,
    item_features=None,
) -> BanditLog:
    n = len(actions)
    ctx = np.zeros(n, dtype=np.int64) if contexts is None else np.asarray(contexts, dtype=np.int64)
    return BanditLog(
        actions=np.asarray(actions, dtype=np.int64),
        positions=np.zeros(n, dtype=np.int64) if positions is None else np.asarray(positions, dtype=np.int64),
        rewards=np.asarray(rewards, dtype=np.float64),
        propensities=np.asarray(propensities, dtype=np.float64),
        timestamps=np.arange(n, dtype=np.float64)
        if timestamps is None
        else np.asarray(timestamps, dtype=np.float64),
        user_features=ctx[:, None],
        user_categories=(tuple(f"c{j}" for j in range(n_contexts)),),
        affinities=np.zeros((n, 0), dtype=np.float32),
        item_features=np.eye(n_actions) if item_features is None else item_features,
        item_feature_names=tuple(f"item={j}" for j in range(n_actions)),
        action_ids=np.arange(n_actions),
        n_positions=n_positions,
        name="test",
    )


# ---------------------------------------------------------------------- hand-computed answers
def _hand_log() -> BanditLog:
    return make_log([0, 1, 0, 1], [1, 0, 0, 1], [0.5, 0.25, 0.5, 0.75], n_actions=2)


def test_ips_snips_dr_on_a_hand_computed_example():
    log = _hand_log()
    pi = np.tile([0.8, 0.2], (4, 1))
    # weights 0.8/0.5, 0.2/0.25, 0.8/0.5, 0.2/0.75 = 1.6, 0.8, 1.6, 0.26667
    e = ips(log, pi)
    assert e.value == pytest.approx((1.6 + 0.2 / 0.75) / 4)
    assert e.std_err == pytest.approx(0.382971, abs=1e-5)  # sd of (1.6, 0, 0, 0.2667) / 2
    assert (e.ci_low, e.ci_high) == pytest.approx((e.value - Z95 * e.std_err, e.value + Z95 * e.std_err))
    assert e.details["max_weight"] == pytest.approx(1.6)
    s = snips(log, pi)
    assert s.value == pytest.approx(0.4375)
    assert s.std_err == pytest.approx(0.281738, abs=1e-5)  # sqrt(sum w^2 (r - V)^2) / sum w
    q = np.tile([0.5, 0.3], (4, 1))
    d = doubly_robust(log, pi, reward_model=q)
    # direct 0.46 per round; corrections 0.8, -0.24, -0.8, 0.18667 -> mean -0.013333
    assert d.value == pytest.approx(0.46 - 0.0533333 / 4, abs=1e-6)
    assert d.details["direct_method"] == pytest.approx(0.46)
    assert on_policy(log).value == 0.5


def test_rejection_replay_deterministic_policy_keeps_matching_rounds():
    log = make_log([0, 1, 0, 1, 0, 1], [1, 0, 0, 1, 1, 1], [0.5] * 6, n_actions=2)
    always0 = np.tile([1.0, 0.0], (6, 1))
    for seed in range(3):
        e = rejection_replay(log, always0, seed=seed)
        assert e.value == pytest.approx(2 / 3)
        assert e.details["n_accepted"] == 3
    # Wilson's score interval for 2 successes in 3
    assert e.ci == "wilson"
    assert (e.ci_low, e.ci_high) == pytest.approx((0.20766, 0.93850), abs=1e-4)


def test_wilson_interval_is_not_a_point_without_clicks():
    log = make_log([0] * 50, [0] * 50, [0.5] * 50, n_actions=2)
    e = on_policy(log)
    assert e.value == 0.0 and e.ci_low == 0.0
    assert e.ci_high == pytest.approx(Z95**2 / (50 + Z95**2), rel=1e-6)


def test_rejection_replay_needs_a_uniform_log():
    with pytest.raises(DataError, match="uniform"):
        rejection_replay(_hand_log(), np.tile([0.5, 0.5], (4, 1)))
    # evaluate_policy skips it instead
    names = [e.estimator for e in evaluate_policy(_hand_log(), np.tile([0.5, 0.5], (4, 1)))]
    assert names == ["ips", "snips", "dr"]


# A three-round hand log shows few (action, slot) pairs: its policies lie partly outside it.
@pytest.mark.filterwarnings("ignore::driftrank.errors.OverlapWarning")
def test_positions_use_the_distribution_of_the_logged_slot():
    log = make_log([0, 1, 1], [1, 1, 0], [0.5, 0.5, 0.5], n_actions=2, positions=[0, 1, 0], n_positions=2)
    dist = np.zeros((3, 2, 2))
    dist[:, :, 0] = [0.9, 0.1]  # slot 0
    dist[:, :, 1] = [0.3, 0.7]  # slot 1
    # w = 0.9/0.5, 0.7/0.5, 0.1/0.5
    assert ips(log, dist).value == pytest.approx((1.8 + 1.4 + 0.0) / 3)
    # a slot-independent [n, K] distribution is used at every slot
    assert ips(log, np.tile([0.9, 0.1], (3, 1))).value == pytest.approx((1.8 + 0.2) / 3)


@pytest.mark.parametrize(
    "dist",
    [np.ones((4, 3)) / 3, np.tile([0.7, 0.7], (4, 1)), np.tile([1.2, -0.2], (4, 1)), np.ones((4, 2, 2)) / 2],
)
def test_bad_action_distributions_are_rejected(dist):
    with pytest.raises(DataError):
        ips(_hand_log(), dist)


def test_bad_settings_are_rejected():
    pi = np.tile([0.5, 0.5], (4, 1))
    with pytest.raises(ConfigError):
        ips(_hand_log(), pi, level=1.5)
    with pytest.raises(ConfigError):
        snips(_hand_log(), pi, ci="exact")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        doubly_robust(_hand_log(), pi, n_folds=0)
    with pytest.raises(ConfigError):
        evaluate_policy(_hand_log(), pi, ["ips", "magic"])  # type: ignore[list-item]
    with pytest.raises(DataError, match="propensities"):
        make_log([0], [1], [0.0], n_actions=2)
    with pytest.raises(DataError, match="actions"):
        make_log([2], [1], [0.5], n_actions=2)


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    n = 400
    log = make_log(rng.integers(0, 2, n), rng.random(n) < 0.3, np.full(n, 0.5), n_actions=2)
    pi = np.tile([0.7, 0.3], (n, 1))
    for fn in (ips, snips, doubly_robust):
        a = fn(log, pi, ci="bootstrap", n_boot=500, seed=1)
        b = fn(log, pi, ci="bootstrap", n_boot=500, seed=1)
        assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
        assert a.ci_low < a.value < a.ci_high
        normal = fn(log, pi, seed=1)
        assert a.ci_high - a.ci_low == pytest.approx(normal.ci_high - normal.ci_low, rel=0.25)


# ---------------------------------------------------------------------- simulated logs, known truth
N_CTX, N_ACT, N_POS = 4, 5, 2
P_CTX = np.array([0.4, 0.3, 0.2, 0.1])
P_POS = np.array([0.6, 0.4])
_T = np.array(
    [
        [-1.0, -0.3, 0.4, -1.5, -0.8],
        [0.5, -1.2, -0.6, 0.2, -2.0],
        [-0.7, 0.6, -1.4, -0.2, 0.1],
        [-2.0, -0.5, 0.3, 0.8, -1.0],
    ]
)
CTR = 1.0 / (1.0 + np.exp(-(_T[:, :, None] + np.array([0.0, -0.7])[None, None, :])))  # [ctx, act, pos]
_LOGITS = np.array(
    [
        [0.5, 0.0, -0.5, 0.3, 0.1],
        [0.0, 0.4, 0.2, -0.3, 0.5],
        [0.2, -0.2, 0.6, 0.0, -0.4],
        [0.3, 0.3, -0.3, -0.6, 0.2],
    ]
)
MU = np.exp(_LOGITS) / np.exp(_LOGITS).sum(axis=1, keepdims=True)  # logging policy [ctx, act]
PI = np.exp(3 * CTR) / np.exp(3 * CTR).sum(axis=1, keepdims=True)  # target policy [ctx, act, pos]
V_TRUE = float(np.einsum("c,p,cap,cap->", P_CTX, P_POS, PI, CTR))
V_LOGGING = float(np.einsum("c,p,ca,cap->", P_CTX, P_POS, MU, CTR))


def simulate(seed: int, n: int, *, uniform: bool = False) -> tuple[BanditLog, np.ndarray]:
    """A log with known propensities and rewards from CTR; and the target policy per round."""
    rng = np.random.default_rng(seed)
    c = rng.choice(N_CTX, size=n, p=P_CTX)
    p = rng.choice(N_POS, size=n, p=P_POS)
    mu = np.full((N_CTX, N_ACT), 1.0 / N_ACT) if uniform else MU
    cum = mu[c].cumsum(axis=1)
    a = np.minimum((rng.random(n)[:, None] > cum).sum(axis=1), N_ACT - 1)
    r = (rng.random(n) < CTR[c, a, p]).astype(np.float64)
    log = make_log(
        a, r, mu[c, a], n_actions=N_ACT, positions=p, n_positions=N_POS, contexts=c, n_contexts=N_CTX
    )
    return log, PI[c]


def test_simulation_truth_differs_from_the_logging_value():
    assert abs(V_TRUE - V_LOGGING) > 0.04


def _coverage(estimates: list, truth: float) -> tuple[float, float, float]:
    vals = np.array([e.value for e in estimates])
    cover = float(np.mean([e.covers(truth) for e in estimates]))
    z = (vals.mean() - truth) / (vals.std(ddof=1) / math.sqrt(len(vals)))
    return cover, float(z), float(vals.std(ddof=1))


def test_ips_snips_dr_are_unbiased_with_nominal_coverage_over_seeds():
    runs = {"ips": [], "snips": [], "dr": [], "naive": []}
    for seed in range(200):
        log, pi = simulate(seed, 1500)
        runs["ips"].append(ips(log, pi))
        runs["snips"].append(snips(log, pi))
        # The context-free mean model is misspecified here; DR must stay unbiased anyway.
        runs["dr"].append(doubly_robust(log, pi, reward_model=MeanRewardModel(), seed=seed))
        runs["naive"].append(on_policy(log))
    for name in ("ips", "snips", "dr"):
        cover, z, _ = _coverage(runs[name], V_TRUE)
        assert 0.90 <= cover <= 0.99, f"{name} coverage {cover}"
        assert abs(z) < 3.5, f"{name} mean is {z:.1f} standard errors from the truth"
    # The log's own mean estimates the logging policy, not the target: the test can fail.
    cover, z, _ = _coverage(runs["naive"], V_TRUE)
    assert cover < 0.2 and abs(z) > 10


def test_dr_with_a_well_specified_model_is_unbiased_and_less_variable():
    dr, ips_runs = [], []
    for seed in range(40):
        log, pi = simulate(1000 + seed, 1500)
        model = LogisticRewardModel(LogisticConfig(l2=0.1))  # c x a cross term: well specified
        dr.append(doubly_robust(log, pi, reward_model=model, seed=seed))
        ips_runs.append(ips(log, pi))
    cover, z, sd_dr = _coverage(dr, V_TRUE)
    assert cover >= 0.85
    assert abs(z) < 3.5
    _, _, sd_ips = _coverage(ips_runs, V_TRUE)
    assert sd_dr < sd_ips
    se_ratio = np.mean([e.std_err for e in dr]) / np.mean([e.std_err for e in ips_runs])
    assert se_ratio < 0.9, se_ratio


def test_rejection_replay_on_uniform_logs_is_unbiased_with_nominal_coverage():
    runs = []
    for seed in range(200):
        log, pi = simulate(5000 + seed, 1500, uniform=True)
        runs.append(rejection_replay(log, pi, seed=seed))
        assert runs[-1].details["acceptance_rate"] > 0.3
    cover, z, _ = _coverage(runs, V_TRUE)
    assert 0.90 <= cover <= 0.99
    assert abs(z) < 3.5


# ---------------------------------------------------------------------- reward models
def test_mean_reward_model_shrinks_cells_to_the_slot_rate():
    log = make_log(
        [0, 0, 1, 1, 1, 0],
        [1, 0, 1, 1, 1, 0],
        [0.5] * 6,
        n_actions=3,
        positions=[0, 0, 0, 0, 0, 1],
        n_positions=2,
    )
    m = MeanRewardModel(prior_strength=2.0).fit(log)
    q = m.predict(log)
    assert q.shape == (6, 3, 2)
    slot0 = 4 / 5
    assert q[0, 0, 0] == pytest.approx((1 + 2 * slot0) / (2 + 2))
    assert q[0, 1, 0] == pytest.approx((3 + 2 * slot0) / (3 + 2))
    assert q[0, 2, 0] == pytest.approx(slot0)  # never shown: the slot's rate
    assert q[0, 0, 1] == pytest.approx(0.0)  # (0 + 2 * 0) / (1 + 2)
    config, arrays = m.get_state()
    json.dumps(config)
    np.testing.assert_array_equal(MeanRewardModel.from_state(config, arrays).predict(log), q)


def test_logistic_reward_model_recovers_a_known_click_model():
    log, _ = simulate(7, 30_000)
    model = LogisticRewardModel(LogisticConfig(l2=0.1)).fit(log)
    q = model.predict(log)
    truth = CTR[log.user_features[:, 0]]
    assert q.shape == truth.shape == (30_000, N_ACT, N_POS)
    assert np.abs(q - truth).max() < 0.06
    config, arrays = model.get_state()
    json.dumps(config)
    again = LogisticRewardModel.from_state(config, arrays)
    np.testing.assert_array_equal(again.predict(log), q)


@pytest.mark.parametrize("cfg", [LogisticConfig(l2=0.5), LogisticConfig(l2=2.0, cross=False)])
def test_logistic_gradient_matches_finite_differences(cfg):
    log, _ = simulate(3, 500)
    aff = np.random.default_rng(0).random((log.n_rounds, N_ACT)).astype(np.float32)
    log = BanditLog(**{**log.__dict__, "affinities": aff})
    loss_grad, _, n_params = LogisticRewardModel(cfg)._objective(log)
    theta = np.random.default_rng(1).normal(scale=0.3, size=n_params)
    _, grad = loss_grad(theta)
    h = 1e-5
    for j in np.random.default_rng(2).choice(n_params, size=min(25, n_params), replace=False):
        e = np.zeros(n_params)
        e[j] = h
        numeric = (loss_grad(theta + e)[0] - loss_grad(theta - e)[0]) / (2 * h)
        assert grad[j] == pytest.approx(numeric, rel=1e-4, abs=1e-5)


# ---------------------------------------------------------------------- policies
def test_action_distribution_counts_per_slot_and_time_bin():
    day = 86400.0
    behavior = make_log(
        [0, 0, 1, 2, 2, 2],
        [0] * 6,
        [0.5] * 6,
        n_actions=3,
        positions=[0, 0, 0, 1, 1, 0],
        n_positions=2,
        timestamps=[10, 20, 30, day + 5, day + 6, day + 7],
    )
    at = make_log(
        [0, 1, 2], [0] * 3, [1 / 3] * 3, n_actions=3, n_positions=2, timestamps=[15, day + 1, 5 * day]
    )
    whole = action_distribution(behavior, at)
    assert whole.shape == (3, 3, 2)
    np.testing.assert_allclose(whole[0, :, 0], [2 / 4, 1 / 4, 1 / 4])
    np.testing.assert_allclose(whole[0, :, 1], [0, 0, 1])
    daily = action_distribution(behavior, at, bin_seconds=day)
    np.testing.assert_allclose(daily[0, :, 0], [2 / 3, 1 / 3, 0])  # day 0
    np.testing.assert_allclose(daily[1, :, 0], [0, 0, 1])  # day 1
    np.testing.assert_allclose(daily[2], whole[2])  # no behaviour that day: whole-log fallback
    smooth = action_distribution(behavior, at, smoothing=1.0)
    np.testing.assert_allclose(smooth[0, :, 1], [1 / 5, 1 / 5, 3 / 5])


def test_ranking_and_softmax_policies():
    scores = np.array([[0.1, 0.9, 0.5, 0.5], [0.3, 0.2, 0.1, 0.0]])
    pol = ranking_policy(scores, 3, epsilon=0.2)
    assert pol.shape == (2, 4, 3)
    np.testing.assert_allclose(pol.sum(axis=1), 1.0)
    assert pol[0, 1, 0] == pytest.approx(0.8 + 0.05)  # best item at slot 0
    assert pol[0, 2, 1] == pytest.approx(0.85)  # tie 0.5/0.5 goes to the lower index
    assert pol[0, 3, 2] == pytest.approx(0.85)
    sm = softmax_policy(np.log([[1.0, 3.0]]), temperature=1.0)
    np.testing.assert_allclose(sm, [[0.25, 0.75]])
    np.testing.assert_allclose(uniform_policy(_hand_log()), 0.5)
    with pytest.raises(ConfigError):
        softmax_policy(scores, temperature=0.0)


# ---------------------------------------------------------------------- Open Bandit Dataset
@pytest.fixture(scope="module")
def obd(data_home: Path) -> tuple[BanditLog, BanditLog]:
    rnd = load_obd("random", data_home=data_home)
    bts = load_obd("bts", data_home=data_home, user_categories=rnd.user_categories)
    return rnd, bts


def test_obd_logs_load_with_their_known_shape(obd):
    rnd, bts = obd
    for log in (rnd, bts):
        assert (log.n_rounds, log.n_actions, log.n_positions) == (10_000, 80, 3)
        assert log.affinities.shape == (10_000, 80)
        assert log.item_features.shape[0] == 80
        assert set(np.unique(log.positions)) == {0, 1, 2}
        assert log.timestamps.min() >= 1574553600 and log.timestamps.max() < 1575158400  # 2019-11-24..30
    assert rnd.is_uniform() and not bts.is_uniform()
    assert int(rnd.rewards.sum()) == 38 and int(bts.rewards.sum()) == 42
    assert bts.user_categories == rnd.user_categories
    assert (rnd.user_features >= 0).all()
    assert (bts.user_features == -1).any()  # BTS saw a few feature values the random log did not


def _write_obd(root: Path, rows: list[dict], items=(0, 1)) -> Path:
    folder = root / "obd" / "random" / "all"
    folder.mkdir(parents=True)
    pl.DataFrame(rows).write_csv(folder / "all.csv")
    pl.DataFrame({"item_id": list(items), "item_feature_0": [0.5, -0.5][: len(items)]}).write_csv(
        folder / "item_context.csv"
    )
    return root


def _row(**kw) -> dict:
    base = {
        "timestamp": "2019-11-24 00:00:34.762830+00:00",
        "item_id": 0,
        "position": 1,
        "click": 0,
        "propensity_score": 0.5,
        "user_feature_0": "ab",
    }
    base.update(kw)
    return base


def test_obd_loader_reports_bad_files(tmp_path: Path, monkeypatch):
    with pytest.raises(DataNotFoundError):
        load_obd("random", data_home=tmp_path)
    monkeypatch.delenv("DRIFTRANK_DATA_HOME", raising=False)
    with pytest.raises(DataNotFoundError, match="DRIFTRANK_DATA_HOME"):
        load_obd("random")
    ok = _write_obd(tmp_path / "ok", [_row(), _row(item_id=1, position=2, click=1)])
    log = load_obd("random", data_home=ok)
    assert log.n_rounds == 2 and log.positions.tolist() == [0, 1] and log.rewards.tolist() == [0.0, 1.0]
    assert log.timestamps[0] == pytest.approx(1574553634.76283)
    cases = {
        "unknown_item": ([_row(item_id=7)], "item_id 7 at data row 1"),
        "bad_prop": ([_row(), _row(propensity_score=1.5)], "propensity_score must be in"),
        "bad_click": ([_row(click=2)], "click must be 0 or 1"),
        "bad_time": ([_row(timestamp="yesterday")], "timestamp"),
        "zero_position": ([_row(position=0)], "1-based"),
        "text_position": ([_row(position="top")], "'position' must hold an integer, got 'top' at data row 1"),
        "fraction_position": ([_row(position=1.5)], "'position' must hold an integer, got 1.5 at data row 1"),
        "text_click": ([_row(click="yes")], "'click' must hold a number, got 'yes' at data row 1"),
    }
    for name, (rows, msg) in cases.items():
        with pytest.raises(DataError, match=msg):
            load_obd("random", data_home=_write_obd(tmp_path / name, rows))
    missing = _write_obd(tmp_path / "missing", [{k: v for k, v in _row().items() if k != "click"}])
    with pytest.raises(DataError, match="missing column"):
        load_obd("random", data_home=missing)


def test_obd_validation_estimates_cover_the_bts_on_policy_rate(tmp_path: Path, data_home: Path):
    """From the uniform-random log, IPS, SNIPS and DR estimate the click rate of the BTS policy
    (its action shares from its own log); each interval covers the BTS log's mean click."""
    rc = cli_main(
        ["ope", "--data-home", str(data_home), "--targets", "bts,bts-daily", "--out", str(tmp_path)]
    )
    assert rc == 0
    data = json.loads((tmp_path / "ope.json").read_text())
    assert data["references"]["bts"]["value"] == pytest.approx(0.0042)
    assert data["references"]["random"]["value"] == pytest.approx(0.0038)
    rows = {(r["target"], r["estimator"]): r for r in data["rows"]}
    assert set(rows) == {(t, e) for t in ("bts", "bts-daily") for e in ("ips", "snips", "dr", "replay")}
    for t in ("bts", "bts-daily"):
        for e in ("ips", "snips", "dr"):
            r = rows[(t, e)]
            assert r["covers_truth"] is True, r
            assert 0.002 < r["value"] < 0.008
            assert abs(r["vs"]["bts"]["z"]) < 1.96
    assert (tmp_path / "ope.png").read_bytes()[:4] == b"\x89PNG"


def test_estimates_outside_the_logs_support_warn_and_say_so():
    import warnings

    from driftrank.errors import OverlapWarning

    rng = np.random.default_rng(0)
    n = 400
    actions = rng.integers(0, 2, n)  # the logger only ever shows actions 0 and 1 of 3
    log = make_log(actions, rng.integers(0, 2, n), np.full(n, 0.5), n_actions=3)
    off = np.tile([0.25, 0.25, 0.5], (n, 1))
    for estimator in (ips, snips, doubly_robust):
        with pytest.warns(OverlapWarning, match=r"50\.0% of its probability .* never shows"):
            e = estimator(log, off)
        assert e.details["unsupported_mass"] == pytest.approx(0.5)
        assert e.details["unsupported_rounds"] == pytest.approx(1.0)
    inside = np.tile([0.3, 0.7, 0.0], (n, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", OverlapWarning)
        for estimator in (ips, snips, doubly_robust):
            assert estimator(log, inside).details["unsupported_mass"] == pytest.approx(0.0)
