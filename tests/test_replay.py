"""Chronological A/B replay: no leakage, exact exclusions, known answers, determinism, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from driftrank.data import Dataset
from driftrank.errors import ConfigError
from driftrank.replay import Configuration, OnlineRanker, ReplayConfig, StaticOnline, replay
from driftrank.replay import _replay as replay_module
from driftrank.types import Ranking, topk


class OnlinePopularity:
    """A small, self-contained OnlineRanker for these tests: (decayed) event counts, updated by
    ``observe``; ``fit(D)`` + ``observe(E)`` scores like ``fit(D + E)``. Ties go to the lower
    item index; items without events can still be recommended (score 0)."""

    def __init__(self, half_life_days: float | None = None) -> None:
        self.h = half_life_days
        self.scores_ = np.zeros(0)
        self.ref = -np.inf

    def _w(self, age: np.ndarray) -> np.ndarray:
        return np.ones_like(age) if self.h is None else np.exp2(-age / (self.h * 86400.0))

    def fit(self, dataset: Dataset) -> OnlinePopularity:
        ts = dataset.timestamps
        self.ref = float(ts.max())
        self.scores_ = np.bincount(
            dataset.item_index, weights=self._w(self.ref - ts), minlength=dataset.n_items
        )
        return self

    def observe(self, users, items, timestamps) -> None:
        ts = np.asarray(timestamps, dtype=np.float64)
        newest = max(self.ref, float(ts.max()))
        self.scores_ = self.scores_ * self._w(np.asarray(newest - self.ref))
        self.ref = newest
        np.add.at(self.scores_, np.asarray(items), self._w(newest - ts))

    def rank(self, users, k, *, exclude=None, at=None) -> Ranking:
        users = np.asarray(users, dtype=np.int64)
        scores = np.broadcast_to(self.scores_, (len(users), len(self.scores_)))
        return topk(scores, k, exclude[users] if exclude is not None else None)


class Plain:
    """A Ranker without ``observe``."""

    def fit(self, dataset: Dataset) -> Plain:
        self.scores_ = dataset.item_popularity.astype(np.float64)
        return self

    def rank(self, users, k, *, exclude=None, at=None) -> Ranking:
        scores = np.broadcast_to(self.scores_, (len(users), len(self.scores_)))
        return topk(scores, k, exclude[np.asarray(users)] if exclude is not None else None)


POP = Configuration("pop", lambda seed: OnlinePopularity())
RECENT = Configuration("pop-recent", lambda seed: OnlinePopularity(half_life_days=2.0))


# ---------------------------------------------------------------------- test models
class Cheater:
    """Recommends each user's most recently observed item, ignoring ``exclude``: it scores a hit
    on an event exactly when it was shown that very event before ranking for it (the data sets
    below hold no repeated (user, item) pairs)."""

    def __init__(self) -> None:
        self.last: dict[int, int] = {}

    def fit(self, dataset: Dataset) -> Cheater:
        self.last = {}
        for u, i in zip(dataset.user_index.tolist(), dataset.item_index.tolist()):
            self.last[u] = i  # interactions are sorted by user, then time: the last one wins
        return self

    def rank(self, users, k, *, exclude=None, at=None) -> Ranking:
        items = np.full((len(users), k), -1, dtype=np.int64)
        for j, u in enumerate(np.asarray(users).tolist()):
            items[j, 0] = self.last.get(u, -1)
        scores = np.where(items >= 0, 1.0, np.nan).astype(np.float32)
        return Ranking(items, scores)

    def observe(self, users, items, timestamps) -> None:
        for u, i in zip(np.asarray(users).tolist(), np.asarray(items).tolist()):
            self.last[u] = i


class Recorder(OnlinePopularity):
    """Popularity that records what it was fitted on, observed, and asked to rank with."""

    def __init__(self) -> None:
        super().__init__()
        self.fits: list[float] = []  # newest timestamp of each fit set
        self.observed: list[tuple[int, int, float]] = []
        self.calls: list[tuple[int, float, frozenset[int], float]] = []  # user, at, excluded, newest seen

    def fit(self, dataset: Dataset) -> Recorder:
        self.fits.append(float(dataset.timestamps.max()))
        self.observed = list(
            zip(dataset.user_index.tolist(), dataset.item_index.tolist(), dataset.timestamps.tolist())
        )
        return super().fit(dataset)

    def observe(self, users, items, timestamps) -> None:
        self.observed.extend(
            zip(np.asarray(users).tolist(), np.asarray(items).tolist(), np.asarray(timestamps).tolist())
        )
        super().observe(users, items, timestamps)

    def rank(self, users, k, *, exclude=None, at=None) -> Ranking:
        newest = max(t for _, _, t in self.observed)
        for u, t in zip(np.asarray(users).tolist(), np.asarray(at).tolist()):
            row = exclude[u]
            self.calls.append((u, t, frozenset(row.indices.tolist()), newest))
        return super().rank(users, k, exclude=exclude, at=at)


def _no_repeats(ds: Dataset) -> None:
    assert ds.seen.nnz == ds.n_interactions, "fixture must hold no repeated (user, item) pairs"


# ---------------------------------------------------------------------- the online model
@pytest.mark.parametrize("half_life", [None, 1.5])
def test_the_test_adapter_is_online_popularity(small_drifting, half_life):
    ds = small_drifting
    order = np.lexsort((ds.interactions["row"].to_numpy(), ds.timestamps))
    cut = len(order) * 2 // 3
    first = np.zeros(ds.n_interactions, dtype=bool)
    first[order[:cut]] = True
    online = OnlinePopularity(half_life).fit(ds.filter_rows(first))
    assert isinstance(online, OnlineRanker)
    for chunk in np.array_split(order[cut:], 4):  # several observe calls, in time order
        online.observe(ds.user_index[chunk], ds.item_index[chunk], ds.timestamps[chunk])
    batch = OnlinePopularity(half_life).fit(ds)
    np.testing.assert_allclose(online.scores_, batch.scores_, rtol=1e-9)


# ---------------------------------------------------------------------- leakage
@pytest.mark.parametrize("update", ["window", "event"])
def test_cheater_never_sees_the_event_it_is_ranked_for(small_drifting, update):
    _no_repeats(small_drifting)
    cheat = Configuration("cheat", lambda seed: Cheater())
    rep = replay(POP, cheat, small_drifting, window_events=40, update=update, n_boot=50)
    hr = rep.event_metrics[1]["HR@10"]
    assert hr.size == rep.window_events.sum() > 100
    assert hr.sum() == 0.0


def test_the_leak_check_catches_an_observe_before_rank_mistake(small_drifting, monkeypatch):
    """The same cheater does profit when a replay shows it the events before ranking them."""

    def leaky_step(sides, step, seen, cfg, score, prior):
        replay_module._observe_step(sides, step)  # the mistake: observe first
        return replay_module._rank_step(sides, step, seen, cfg, prior) if score else None

    monkeypatch.setattr(replay_module, "_run_step", leaky_step)
    cheat = Configuration("cheat", lambda seed: Cheater())
    rep = replay(POP, cheat, small_drifting, window_events=40, update="event", n_boot=50)
    assert rep.event_metrics[1]["HR@10"].mean() == 1.0


@pytest.mark.parametrize("update", ["window", "event"])
def test_every_ranking_sees_only_the_past_and_excludes_exactly_the_users_history(small_drifting, update):
    ds = small_drifting
    recorders: list[Recorder] = []

    def factory(seed: int) -> Recorder:
        recorders.append(Recorder())
        return recorders[-1]

    rep = replay(
        POP, Configuration("rec", factory), ds, window_events=35, update=update, refit_every=2, n_boot=50
    )
    rec = recorders[0]
    order = np.lexsort((ds.interactions["row"].to_numpy(), ds.timestamps))
    users, items, ts = ds.user_index[order], ds.item_index[order], ds.timestamps[order]
    pos_of = {(int(u), float(t)): j for j, (u, t) in enumerate(zip(users, ts))}
    assert len(pos_of) == len(order), "fixture needs distinct (user, time) pairs"
    assert len(rec.calls) == rep.window_events.sum() + rep.window_skipped.sum()
    start = rep.start_time
    assert rec.fits[0] < start
    for u, t, excluded, newest_observed in rec.calls:
        j = pos_of[(u, t)]
        expected = set(items[:j][users[:j] == u].tolist())
        assert excluded == expected
        assert newest_observed <= t
    # with refit_every=2 the model was refitted on all events up to the end of windows 1, 3, ...
    n_refits = (len(rep.windows) - 1) // 2
    assert len(rec.fits) == 1 + n_refits
    assert rep.timing[1].n_fits == 1 + n_refits


def test_event_update_observes_every_earlier_event_before_ranking(small_drifting):
    ds = small_drifting
    recorders: list[Recorder] = []

    class CountingRecorder(Recorder):
        def rank(self, users, k, *, exclude=None, at=None):
            self.counts.append(len(self.observed))
            return super().rank(users, k, exclude=exclude, at=at)

    def factory(seed: int) -> Recorder:
        r = CountingRecorder()
        r.counts = []  # type: ignore[attr-defined]
        recorders.append(r)
        return r

    rep = replay(POP, Configuration("rec", factory), ds, window_events=50, update="event", n_boot=50)
    counts = np.asarray(recorders[0].counts)  # type: ignore[attr-defined]
    # the j-th replayed event is ranked after observing the training set and the j events before it
    np.testing.assert_array_equal(counts, rep.n_train_events + np.arange(len(counts)))


# ---------------------------------------------------------------------- known answer
def _tiny() -> Dataset:
    # Train (t < 100): raw item 0 three times, raw items 4, 1 and 2 once each.
    # Replayed, window 0: user 0 takes item 1 (rank 0 after excluding its item 0), user 3 takes
    # item 3 (never seen before: rank 3 -> outside k=2). Window 1 (after observing window 0,
    # item 1 has 3 events and leads): user 1 takes item 2.
    inter = pl.DataFrame(
        {
            "user_id": [0, 1, 2, 0, 1, 2, 0, 3, 1],
            "item_id": [0, 0, 0, 4, 1, 2, 1, 3, 2],
            "timestamp": [10.0, 11, 12, 13, 14, 15, 100, 101, 200],
        }
    )
    items = pl.DataFrame({"item_id": [0, 1, 2, 3, 4], "title": ["a", "b", "c", "d", "e"]})
    return Dataset.from_frames(inter, items, catalog="all")


def test_known_answer_on_a_tiny_log():
    ds = _tiny()
    assert [int(x) for x in ds.item_ids.ids] == [0, 4, 1, 2, 3]  # first-seen order: index != raw id
    rep = replay(POP, POP, ds, start_time=100.0, window_events=2, k=2, n_boot=50)
    assert rep.n_train_events == 6
    assert rep.windows.tolist() == [0, 1]
    hr = rep.event_metrics[0]["HR@2"]
    ndcg = rep.event_metrics[0]["NDCG@2"]
    mrr = rep.event_metrics[0]["MRR@2"]
    # Window 0 ranks by train counts: idx0 (raw 0)=3, idx2 (raw 1)=1, idx1 (raw 4)=1, idx3 (raw 2)=1.
    # User 0 (saw raw 0, 4): list [raw 1, raw 2] -> hit at rank 0. User 3 (new): [raw 0, raw 4]
    # (ties to the lower index) -> raw 3 missed. Window 1: counts raw0=3, raw1=2, raw4=1, raw2=1,
    # raw3=1; user 1 saw raw 0 and raw 1: list [raw 4, raw 2] -> raw 2 at rank 1.
    np.testing.assert_allclose(hr, [1.0, 0.0, 1.0])
    np.testing.assert_allclose(ndcg, [1.0, 0.0, 1.0 / np.log2(3.0)])
    np.testing.assert_allclose(mrr, [1.0, 0.0, 0.5])
    np.testing.assert_allclose(rep.curves["HR@2"]["a"].mean, [0.5, 1.0])
    # coverage: window 0 shows raw {1, 2, 0, 4} = 4 of 5 items; window 1 shows {4, 2}
    np.testing.assert_allclose(rep.coverage[0], [4 / 5, 2 / 5])
    # novelty of window 1 uses counts after window 0 (8 events): raw4 has 1, raw2 has 1
    info = -np.log2((1 + 1) / (8 + 5))
    assert rep.novelty[0][1] == pytest.approx(info)
    assert rep.overall["HR@2"].diff == 0.0


def test_repeats_are_observed_but_not_scored():
    inter = pl.DataFrame(
        {"user_id": [0, 0, 1, 0, 1], "item_id": [0, 1, 0, 0, 1], "timestamp": [1.0, 2, 3, 10, 11]}
    )
    ds = Dataset.from_frames(inter)
    rep = replay(POP, POP, ds, start_time=10.0, window_events=5, k=2, n_boot=20)
    assert rep.window_events.tolist() == [1]  # user 0 re-taking item 0 cannot be hit
    assert rep.window_skipped.tolist() == [1]
    kept = replay(POP, POP, ds, start_time=10.0, window_events=5, k=2, n_boot=20, exclude_seen=False)
    assert kept.window_events.tolist() == [2]
    assert kept.event_metrics[0]["HR@2"].tolist() == [1.0, 1.0]


# ---------------------------------------------------------------------- determinism, windows
def test_same_seed_same_report(small_drifting):
    kw = {"window_events": 60, "n_boot": 200, "seed": 3, "refit_every": 2}
    r1 = replay(POP, RECENT, small_drifting, **kw)
    r2 = replay(POP, RECENT, small_drifting, **kw)
    assert r1.to_json(timing=False, per_event=True) == r2.to_json(timing=False, per_event=True)
    r3 = replay(POP, RECENT, small_drifting, **{**kw, "seed": 4})
    assert r3.to_json(timing=False) != r1.to_json(timing=False)  # the bootstrap follows the seed


@pytest.mark.parametrize(("update", "window"), [("window", 400), ("event", 150)])
def test_rerunning_one_window_reproduces_the_full_run(drifting, update, window):
    kw = {"window_events": window, "n_boot": 100, "refit_every": 2, "update": update, "start_fraction": 0.7}
    if update == "event":  # one rank call per event: keep it short
        kw["max_windows"] = 5
    full = replay(POP, RECENT, drifting, **kw)
    assert len(full.windows) >= 4
    one = replay(POP, RECENT, drifting, windows=[3], **kw)
    assert one.windows.tolist() == [3]
    sel = full.event_windows == 3
    for m in full.metric_names:
        np.testing.assert_array_equal(one.event_metrics[1][m], full.event_metrics[1][m][sel])
        for side in ("a", "b", "diff"):
            assert one.curves[m][side].mean[0] == full.curves[m][side].mean[3]
            assert one.curves[m][side].low[0] == full.curves[m][side].low[3]
    assert one.coverage[1][0] == full.coverage[1][3]
    assert one.timing[1].n_ranked < full.timing[1].n_ranked


def test_list_reuse_matches_exact_exclusion_for_a_score_sorted_ranker(drifting):
    kw = {"window_events": 500, "n_boot": 50}
    exact = replay(POP, RECENT, drifting, **kw)
    reuse = replay(POP, RECENT, drifting, list_reuse=True, **kw)
    for j in range(2):
        for m in exact.metric_names:
            np.testing.assert_array_equal(reuse.event_metrics[j][m], exact.event_metrics[j][m])
    # users with several events per window are ranked once
    assert reuse.timing[0].n_ranked < exact.timing[0].n_ranked


@pytest.mark.parametrize("size", [37, 50, 64])
def test_windows_by_count_merge_a_short_tail(small_drifting, size):
    rep = replay(POP, POP, small_drifting, window_events=size, n_boot=20)
    sizes = rep.window_events + rep.window_skipped
    n = int(sizes.sum())
    assert (sizes[:-1] == size).all()
    assert size / 2 <= sizes[-1] < 1.5 * size
    assert len(sizes) == (n // size if n % size < size / 2 else n // size + 1)


def test_windows_by_duration(small_drifting):
    ds = small_drifting
    day = 86400.0
    rep = replay(POP, RECENT, ds, window_seconds=2 * day, n_boot=20)
    t = np.sort(ds.timestamps)
    rest = t[t >= rep.start_time]
    bins = np.unique(np.floor((rest - rep.start_time) / (2 * day)))
    assert len(rep.windows) == len(bins)
    assert rep.window_events.sum() + rep.window_skipped.sum() == len(rest)
    assert np.all(rep.window_end - rep.window_start < 2 * day)


def test_static_online_wrapper_learns_only_at_refit(small_drifting):
    static = Configuration("static", lambda seed: StaticOnline(Plain()))
    no_refit = replay(POP, static, small_drifting, window_events=40, n_boot=20)
    refit = replay(POP, static, small_drifting, window_events=40, n_boot=20, refit_every=1)
    # window 0 is ranked from the same training fit by both: same numbers
    assert no_refit.curves["HR@10"]["b"].mean[0] == refit.curves["HR@10"]["b"].mean[0]
    # refitting every window gives popularity over all events so far, i.e. what pop computes online
    np.testing.assert_array_equal(refit.event_metrics[1]["HR@10"], refit.event_metrics[0]["HR@10"])
    assert refit.timing[1].n_fits == len(refit.windows)


def test_user_level_ci_resamples_whole_users(drifting):
    kw = {"window_events": 600, "n_boot": 400}
    by_event = replay(POP, RECENT, drifting, **kw)
    by_user = replay(POP, RECENT, drifting, ci_unit="user", **kw)
    users = drifting.user_index[by_user.event_rows]
    for m in by_user.metric_names:
        u, e = by_user.overall[m], by_event.overall[m]
        assert u.n == len(np.unique(users)) < e.n == len(users)
        # same estimand (mean over events), another interval
        assert (u.mean_a, u.mean_b, u.diff) == (e.mean_a, e.mean_b, e.diff)
        assert u.ci_low <= u.diff <= u.ci_high


def test_user_bootstrap_with_one_event_per_user_is_the_event_bootstrap():
    from driftrank.eval import paired_bootstrap

    rng = np.random.default_rng(0)
    va, vb = rng.random(300), rng.random(300)
    u = replay_module._user_bootstrap(va, vb, np.arange(300), ReplayConfig(n_boot=2000), seed=5)
    e = paired_bootstrap(va, vb, n_boot=2000, seed=5)
    assert u.diff == pytest.approx(e.diff)
    assert u.ci_low == pytest.approx(e.ci_low, abs=0.01)
    assert u.ci_high == pytest.approx(e.ci_high, abs=0.01)


# ---------------------------------------------------------------------- outputs
def test_report_json_and_plot(tmp_path: Path, small_drifting):
    rep = replay(POP, RECENT, small_drifting, window_events=60, n_boot=100)
    text = rep.to_json(tmp_path / "r.json", per_event=True)
    data = json.loads((tmp_path / "r.json").read_text())
    assert data == json.loads(text)
    assert data["a"] == "pop" and data["b"] == "pop-recent"
    assert set(data["windows"]["curves"]) == {"HR@10", "NDCG@10", "MRR@10"}
    assert len(data["windows"]["curves"]["HR@10"]["diff"]["mean"]) == len(rep.windows)
    assert len(data["events"]["row"]) == int(rep.window_events.sum())
    assert data["timing"]["a"]["n_fits"] == 1
    assert ReplayConfig.from_dict(data["config"]) == rep.config
    png = rep.plot(tmp_path / "plots" / "replay.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000
    assert "HR@10" in rep.summary()


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs",
    [
        {"start_fraction": 0.5, "start_time": 1.0},
        {"start_fraction": None, "start_time": float("nan")},
        {"start_fraction": 1.0},
        {"window_events": 10, "window_seconds": 3600.0},
        {"window_events": 0},
        {"k": 0},
        {"refit_every": 0},
        {"update": "batch"},
        {"update": "event", "list_reuse": True},
        {"level": 1.0},
        {"ci_unit": "item"},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError):
        ReplayConfig(**kwargs)


def test_replay_rejects_bad_calls(small_drifting):
    with pytest.raises(ConfigError, match="unknown replay option"):
        replay(POP, POP, small_drifting, windw_events=3)
    with pytest.raises(ConfigError, match="windows must be in"):
        replay(POP, POP, small_drifting, window_events=100, windows=[99])
    with pytest.raises(ConfigError, match="no events before"):
        replay(POP, POP, small_drifting, start_time=0.0)
    with pytest.raises(ConfigError, match="lacks fit/rank/observe"):
        replay(POP, Configuration("bad", lambda seed: Plain()), small_drifting)
    with pytest.raises(ConfigError):
        Configuration("", lambda seed: OnlinePopularity())


def test_models_get_the_configured_seed(small_drifting):
    seeds: list[int] = []

    def factory(seed: int) -> OnlinePopularity:
        seeds.append(seed)
        return OnlinePopularity()

    replay(Configuration("x", factory), Configuration("y", factory), small_drifting, seed=11, n_boot=20)
    assert seeds == [11, 11]


def test_exclusion_matrix_is_a_full_user_by_item_matrix(small_drifting):
    shapes: list[tuple[int, int]] = []

    class Shape(OnlinePopularity):
        def rank(self, users, k, *, exclude=None, at=None):
            assert isinstance(exclude, sp.csr_matrix | sp.csr_array)
            shapes.append(exclude.shape)
            return super().rank(users, k, exclude=exclude, at=at)

    replay(POP, Configuration("s", lambda seed: Shape()), small_drifting, window_events=100, n_boot=20)
    assert shapes and set(shapes) == {(small_drifting.n_users, small_drifting.n_items)}


# ---------------------------------------------------------------------- CLI
def test_cli_replay_writes_report_and_plot(tmp_path: Path, capsys):
    from driftrank.replay._cli import main

    conf = tmp_path / "pop3.toml"
    conf.write_text('name = "pop-3d"\nkind = "pop-recent"\n[params]\nhalf_life_days = 3.0\n')
    out = tmp_path / "out"
    rc = main(
        ["replay", "pop", str(conf), "--dataset", "synthetic", "--window-events", "600", "--n-boot", "100",
         "--max-windows", "3", "--out", str(out), "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    data = json.loads((out / "report.json").read_text())
    assert (data["a"], data["b"]) == ("pop", "pop-3d")
    assert data["config"]["window_events"] == 600 and len(data["windows"]["index"]) == 3
    assert (out / "replay.png").read_bytes()[:4] == b"\x89PNG"
    assert "NDCG@10" in capsys.readouterr().out


def test_cli_configuration_registry_and_errors(tmp_path: Path, capsys):
    from driftrank.replay import _cli

    assert _cli.resolve_configuration("pop").name == "pop"
    from driftrank.retrieval import PopularityRanker

    model = _cli.resolve_configuration("pop-recent").build(0)
    assert isinstance(model, PopularityRanker) and model.config.half_life_days == 30.0
    with pytest.raises(ConfigError, match="unknown pipeline"):
        _cli.resolve_configuration("als-magic")
    bad = tmp_path / "bad.toml"
    bad.write_text('kind = "pop"\n[params]\nhalf_life = 3\n')
    with pytest.raises(ConfigError, match="unknown param"):
        _cli.resolve_configuration(str(bad))
    bad.write_text('pipeline = "pop"\n')
    with pytest.raises(ConfigError, match="needs kind"):
        _cli.resolve_configuration(str(bad))
    assert {"pop", "pop-recent"} <= set(_cli.known_pipelines())
    # kinds the replay does not define come from the benchmark's registry (driftrank bench)
    if "covisit" in _cli.known_pipelines():
        conf = _cli.resolve_configuration("covisit")
        assert conf.name == "covisit" and isinstance(conf.build(0), OnlineRanker)
    with pytest.raises(ConfigError, match="already registered"):
        _cli.register_pipeline("pop", lambda name, options: POP)
    _cli.register_pipeline(
        "test-pop", lambda name, options: Configuration(name, lambda seed: OnlinePopularity())
    )
    try:
        assert _cli.resolve_configuration("test-pop").name == "test-pop"
    finally:
        del _cli.PIPELINES["test-pop"]
    assert _cli.main(["replay", "pop", "nope", "--dataset", "synthetic", "--out", str(tmp_path)]) == 2
    assert "unknown pipeline" in capsys.readouterr().err
    for cmd in ("replay", "ope"):
        with pytest.raises(SystemExit) as e:
            _cli.main([cmd, "--help"])
        assert e.value.code == 0
    assert "--window-events" in capsys.readouterr().out


def test_importing_the_package_is_cheap():
    import subprocess
    import sys

    code = (
        "import sys, driftrank.replay as r; "
        "heavy = [m for m in ('matplotlib', 'torch', 'scipy.optimize', 'polars', 'tqdm') if m in sys.modules]; "
        "print(heavy); r.Configuration"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
