"""The Engine API on small synthetic data: ranking, cold start, online updates, persistence, threads."""

from __future__ import annotations

import copy
import pickle
import threading
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conftest import small_engine_config as small_config
from driftrank.data import Dataset, make_drifting
from driftrank.engine import Engine, EngineConfig
from driftrank.errors import ConfigError, DataError, ModelFileError, NotFittedError, UnknownIdError
from driftrank.fusion import FusionConfig


@pytest.fixture(scope="module")
def data() -> Dataset:
    return make_drifting(n_users=70, n_items=100, n_topics=4, events_per_user=(10, 16), seed=4)


@pytest.fixture(scope="module")
def fitted(data: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fitted engine saved once; tests load their own copy so they can mutate it."""
    engine = Engine(small_config()).fit(data)
    return engine.save(tmp_path_factory.mktemp("engine") / "model")


@pytest.fixture
def engine(fitted: Path) -> Engine:
    return Engine.load(fitted)


def test_rank_known_user(engine: Engine, data: Dataset) -> None:
    uid = data.user_ids.ids[3]
    r = engine.rank(uid, k=7)
    assert len(r) == 7
    assert np.all(np.diff(r.scores) <= 1e-6)
    seen = set(engine.history(uid)["item_id"].to_list())
    assert not seen & set(r.item_ids.tolist())
    # contributions add up to the score
    total = r.base + sum(r.contributions.values())
    np.testing.assert_allclose(total, r.scores, rtol=1e-4, atol=1e-4)
    assert {"rerank", "popularity", "history_length"} <= set(r.contributions)
    frame = r.to_frame()
    assert frame.columns[:4] == ["rank", "item_id", "title", "score"]


def test_contributions_are_computed_once_per_call_when_first_read(
    engine: Engine, data: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = list(data.user_ids.ids[:5])
    eager = [(r.contributions, r.base) for r in engine.rank_batch(users, k=6)]
    fuser = engine._fuser
    calls = []
    explain = fuser.explain
    monkeypatch.setattr(fuser, "explain", lambda *a, **kw: calls.append(1) or explain(*a, **kw))
    batch = engine.rank_batch(users, k=6)
    assert calls == []  # ranking alone does not explain
    barrier = threading.Barrier(4)

    read_groups: list[set[str]] = []

    def read(j: int) -> None:
        barrier.wait()
        read_groups.append(set(batch[j].contributions))

    threads = [threading.Thread(target=read, args=(j,)) for j in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1]  # one computation for the whole call, whichever thread read first
    assert len(read_groups) == 4 and all(g == set(eager[0][0]) for g in read_groups)
    for r, (contribs, base) in zip(batch, eager, strict=True):
        np.testing.assert_array_equal(r.base, base)
        assert r.contributions.keys() == contribs.keys()
        for g in contribs:
            np.testing.assert_array_equal(r.contributions[g], contribs[g])
            assert len(r.contributions[g]) == len(r.items)
    # A result pickles and copies with its explanations (not the lock or the signals behind them).
    back = pickle.loads(pickle.dumps(engine.rank_batch(users, k=6)))  # not read before pickling
    np.testing.assert_array_equal(back[1].base, batch[1].base)
    for g in batch[1].contributions:
        np.testing.assert_array_equal(back[1].contributions[g], batch[1].contributions[g])
    assert set(copy.deepcopy(batch[0]).contributions) == set(batch[0].contributions)
    # An earlier result keeps explaining its own ranking after new events arrive.
    first = engine.rank(users[0], k=6)
    engine.observe([(users[0], data.item_ids.ids[0], float(data.timestamps.max()) + 60.0)])
    np.testing.assert_allclose(first.base + sum(first.contributions.values()), first.scores, atol=1e-4)


def test_batch_equals_single(engine: Engine, data: Dataset) -> None:
    users = list(data.user_ids.ids[:6])
    batch = engine.rank_batch(users, k=5)
    for u, b in zip(users, batch, strict=True):
        s = engine.rank(u, k=5)
        np.testing.assert_array_equal(s.item_ids, b.item_ids)
        np.testing.assert_allclose(s.scores, b.scores, rtol=1e-5, atol=1e-6)


def test_save_load_ranks_identically(engine: Engine, data: Dataset, tmp_path: Path) -> None:
    engine.save(tmp_path / "m")
    other = Engine.load(tmp_path / "m")
    for u in data.user_ids.ids[:5]:
        a, b = engine.rank(u, k=10), other.rank(u, k=10)
        np.testing.assert_array_equal(a.item_ids, b.item_ids)
        np.testing.assert_array_equal(a.scores, b.scores)


def test_tampered_model_is_refused(fitted: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(fitted, copy)
    f = copy / "fusion.npz"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    f.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="checksum"):
        Engine.load(copy)


def test_observe_changes_ranking_without_refit(engine: Engine, data: Dataset) -> None:
    uid = data.user_ids.ids[0]
    before = engine.rank(uid, k=10)
    last_t = float(engine.history(uid)["timestamp"].max())
    target = before.item_ids[0]
    n = engine.observe([(uid, target, last_t + 60)])
    assert n == 1
    after = engine.rank(uid, k=10)
    assert target not in after.item_ids.tolist()  # now seen, so excluded
    assert engine.history(uid)["item_id"].to_list()[-1] == target


def test_new_user_with_history_and_text(engine: Engine, data: Dataset) -> None:
    n_before = engine.n_users
    items = list(data.item_ids.ids[:3])
    r = engine.rank(10_001, history=items, k=5)
    assert len(r) == 5 and not set(items) & set(r.item_ids.tolist())
    assert engine.n_users == n_before + 1
    t = engine.rank(text="haunted ghost nightmare", k=5)
    assert len(t) == 5
    titles = " ".join(t.titles).lower()
    assert any(w in titles for w in ("haunted", "ghost", "nightmare"))


def test_add_items_are_retrievable(engine: Engine, data: Dataset) -> None:
    n = engine.add_items([{"item_id": 50_000, "title": "Haunted Ghost Crypt Nightmare", "genres": "horror"}])
    assert n == 1 and engine.n_items == data.n_items + 1
    t = engine.rank(text="haunted ghost crypt nightmare", k=3)
    assert 50_000 in t.item_ids.tolist()
    # known users can be ranked after the catalog grew
    r = engine.rank(data.user_ids.ids[1], k=10, candidates=[50_000, *data.item_ids.ids[:20].tolist()])
    assert len(r) > 0
    with pytest.raises(DataError, match="already in the catalog"):
        engine.add_items([{"item_id": 50_000, "title": "dup"}])


def test_filter_and_candidates(engine: Engine, data: Dataset) -> None:
    allowed = set(data.item_ids.ids[::3].tolist())
    r = engine.rank(data.user_ids.ids[2], k=10, filter=allowed)
    assert set(r.item_ids.tolist()) <= allowed
    r2 = engine.rank(data.user_ids.ids[2], k=10, filter=lambda i: int(i) % 2 == 0)
    assert all(int(i) % 2 == 0 for i in r2.item_ids)
    # A filter that passes fewer than k retrieved items returns fewer, never rejected ones.
    user = data.user_ids.ids[2]
    retrieved = set(engine.rank(user, k=200).item_ids.tolist())
    seen = set(engine.history(user)["item_id"].to_list())
    outside = [i for i in data.item_ids.ids.tolist() if i not in retrieved and i not in seen][:3]
    assert engine.rank(user, k=10, filter=set(outside)).item_ids.size == 0
    # Explicit candidates are ranked, retrieved or not; seen ones are left out unless asked.
    some_seen = sorted(seen)[:2]
    r3 = engine.rank(user, k=10, candidates=[*outside, *some_seen])
    assert sorted(r3.item_ids.tolist()) == sorted(outside)
    assert np.isfinite(r3.scores).all() and np.all(np.diff(r3.scores) <= 0)
    r4 = engine.rank(user, k=10, candidates=[*outside, *some_seen], exclude_seen=False)
    assert sorted(r4.item_ids.tolist()) == sorted([*outside, *some_seen])
    r5 = engine.rank(user, k=2, candidates=outside, filter=set(outside[1:]))
    assert set(r5.item_ids.tolist()) == set(outside[1:])


def test_input_validation(engine: Engine, data: Dataset) -> None:
    with pytest.raises(DataError, match="k must be a positive integer, got 0"):
        engine.rank(data.user_ids.ids[0], k=0)
    with pytest.raises(UnknownIdError, match="unknown user id 424242"):
        engine.rank(424242)
    with pytest.raises(UnknownIdError, match="not in the catalog"):
        engine.rank(777_777, history=[123_456_789])
    with pytest.raises(DataError, match="before the latest event"):
        engine.rank(data.user_ids.ids[0], at=1.0)
    with pytest.raises(DataError, match="unix seconds"):
        engine.rank(data.user_ids.ids[0], at="yesterday")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="tuple"):
        engine.observe([(1, 2)])
    with pytest.raises(UnknownIdError, match="not in the catalog"):
        engine.observe([(data.user_ids.ids[0], 987654, 2e9)])
    with pytest.raises(DataError, match="missing column"):
        engine.observe(pl.DataFrame({"user_id": [1], "item_id": [2]}))
    with pytest.raises(NotFittedError):
        Engine(small_config()).rank(1)
    with pytest.raises(ConfigError, match="n_candidates"):
        small_config(n_candidates=0)


def test_concurrent_rank_matches_serial(engine: Engine, data: Dataset) -> None:
    users = list(data.user_ids.ids[:12])
    serial = {u: engine.rank(u, k=8).item_ids.tolist() for u in users}
    results: dict[object, list[int]] = {}
    errors: list[BaseException] = []

    def worker(us: list[object]) -> None:
        try:
            for u in us:
                results[u] = engine.rank(u, k=8).item_ids.tolist()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(users[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == serial


def test_rank_batch_workers_rank_like_one_call(
    engine: Engine, data: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = list(data.user_ids.ids)  # 70 users: two parts of 35 (at least 32 per worker)
    later = [float(engine.history(u)["timestamp"].max()) + 3600.0 for u in users]
    keep = set(data.item_ids.ids[::2].tolist())
    for kwargs in ({}, {"at": later, "filter": lambda i: i in keep}):
        one = engine.rank_batch(users, k=8, **kwargs)
        engine.clear_caches()
        for workers in (2, 5):
            many = engine.rank_batch(users, k=8, workers=workers, **kwargs)
            assert [r.user for r in many] == [r.user for r in one]
            for a, b in zip(one, many, strict=True):
                np.testing.assert_array_equal(a.item_ids, b.item_ids)
                np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)
                assert a.at == b.at
                assert a.contributions.keys() == b.contributions.keys()
                for g in a.contributions:
                    np.testing.assert_allclose(a.contributions[g], b.contributions[g], rtol=1e-4, atol=1e-5)
        if "filter" in kwargs:
            assert all(set(r.item_ids.tolist()) <= keep for r in many)
    # Parallel workers run with one torch/BLAS thread each (threads outnumbering the cores wait
    # on each other), and the caller's settings come back afterwards.
    import torch
    from threadpoolctl import threadpool_info

    seen_threads: list[tuple[int, int]] = []
    inner = engine._rank_known

    def spy(*args: object, **kw: object) -> object:
        blas = max((lib["num_threads"] for lib in threadpool_info()), default=1)
        seen_threads.append((torch.get_num_threads(), blas))
        return inner(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "_rank_known", spy)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        engine.rank_batch(users, k=8, workers=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    monkeypatch.undo()
    assert len(seen_threads) == 2 and all(t == (1, 1) for t in seen_threads), seen_threads
    # Too few users for two parts: one call, the same answers.
    few = engine.rank_batch(users[:40], k=8, workers=2)
    for a, b in zip(one[:40], few, strict=True):
        assert a.user == b.user
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(DataError, match="workers must be a positive integer"):
            engine.rank_batch(users, k=8, workers=bad)  # type: ignore[arg-type]


def test_rank_batch_workers_read_while_a_writer_waits() -> None:
    # The parts run in helper threads while rank_batch holds the read lock. A helper that took
    # a fresh read would queue behind a waiting writer, which waits for rank_batch: a deadlock.
    from driftrank.engine._engine import _RWLock

    lock = _RWLock()
    helped, wrote = threading.Event(), threading.Event()

    def write() -> None:
        with lock.write():
            wrote.set()

    with lock.read():
        writer = threading.Thread(target=write)
        writer.start()
        for _ in range(2000):
            if lock._waiting_writers:
                break
            threading.Event().wait(0.005)
        assert lock._waiting_writers == 1

        def helper() -> None:
            with lock.lent(), lock.read():
                helped.set()

        th = threading.Thread(target=helper)
        th.start()
        th.join(timeout=10.0)
        assert helped.is_set(), "a lent read waited behind the writer"
        assert not wrote.is_set()
    writer.join(timeout=10.0)
    assert wrote.is_set()  # the writer got in once the batch was done


def test_tune_malloc_sets_glibc_and_checks_its_input(monkeypatch: pytest.MonkeyPatch) -> None:
    import platform
    import subprocess
    import sys

    from driftrank.engine import tune_malloc

    # In a child process: the setting is process-wide and lasts until the process exits.
    code = (
        "import numpy as np\n"
        "from driftrank.engine import tune_malloc\n"
        "print(tune_malloc(), tune_malloc(mmap_threshold_mb=8, trim_threshold_mb=256, top_pad_mb=0))\n"
        "a = [np.ones(1 << 21) for _ in range(4)]  # 16 MB blocks, now from the heap\n"
        "print(sum(float(x.sum()) for x in a))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert out == [str(glibc), str(glibc), str(float(4 << 21))]
    for bad in (
        {"mmap_threshold_mb": 64},
        {"trim_threshold_mb": -1},
        {"top_pad_mb": 2048},
        {"trim_threshold_mb": 1.5},
    ):
        with pytest.raises(ConfigError, match="_mb must"):
            tune_malloc(**bad)  # type: ignore[arg-type]
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
    assert tune_malloc() is False


@pytest.mark.parametrize("batch", [False, True], ids=["rank", "rank_batch-workers"])
def test_observe_concurrent_with_rank(engine: Engine, data: Dataset, batch: bool) -> None:
    users = list(data.user_ids.ids)
    uid = users[5]
    t0 = float(engine.history(uid)["timestamp"].max())
    errors: list[BaseException] = []
    stop = threading.Event()

    def rank_once() -> None:
        if batch:  # two parts ranked in helper threads under the batch's read lock
            out = engine.rank_batch(users, k=5, workers=2)
            assert [r.user for r in out] == users and all(len(r) == 5 for r in out)
        else:
            assert len(engine.rank(users[6], k=5)) == 5

    def ranker() -> None:
        try:
            while not stop.is_set():
                rank_once()
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    th = threading.Thread(target=ranker)
    th.start()
    items = data.item_ids.ids[10:20].tolist()
    for j, i in enumerate(items):
        engine.observe([(uid, i, t0 + 10 * (j + 1))])
    stop.set()
    th.join(timeout=120.0)
    assert not th.is_alive() and not errors
    hist = engine.history(uid)["item_id"].to_list()
    assert hist[-len(items) :] == items


def test_same_seed_same_engine(data: Dataset) -> None:
    cfg = small_config(reranker=None, fusion_config=FusionConfig(max_epochs=5))
    a = Engine(cfg).fit(data).rank(data.user_ids.ids[0], k=10)
    b = Engine(cfg).fit(data).rank(data.user_ids.ids[0], k=10)
    np.testing.assert_array_equal(a.item_ids, b.item_ids)
    np.testing.assert_allclose(a.scores, b.scores)


def test_engine_seed_moves_every_component(data: Dataset) -> None:
    from dataclasses import replace

    cfg = small_config(fusion_config=FusionConfig(max_epochs=5))
    base = Engine(cfg)
    base._build_components(np.zeros((data.n_items, 8), np.float32))
    other = Engine(replace(cfg, seed=3))
    other._build_components(np.zeros((data.n_items, 8), np.float32))
    assert other._reranker.config.seed == base._reranker.config.seed + 3
    assert other._fuser.config.seed == base._fuser.config.seed + 3
    seeds = {ch.name: getattr(ch.config, "random_state", None) for ch in other._merger.channels}
    for ch in base._merger.channels:
        if seeds[ch.name] is not None:
            assert seeds[ch.name] == ch.config.random_state + 3
    # and it changes the fitted model
    u = data.user_ids.ids[0]
    a = Engine(cfg).fit(data).rank(u, k=10)
    b = Engine(replace(cfg, seed=3)).fit(data).rank(u, k=10)
    assert not np.allclose(a.scores, b.scores)


def test_config_round_trip(tmp_path: Path) -> None:
    cfg = small_config()
    assert EngineConfig.from_dict(cfg.to_dict()) == cfg
    f = tmp_path / "engine.toml"
    f.write_text(
        'n_candidates = 50\nfusion = "linear"\n[bpr]\nenabled = false\n[als]\nfactors = 16\n[encoder]\nkind = "hashing"\n'
    )
    c = EngineConfig.from_toml(f)
    assert c.n_candidates == 50 and c.fusion == "linear" and c.bpr is None and c.als.factors == 16
    f.write_text("n_candidatez = 5\n")
    with pytest.raises(ConfigError, match="n_candidatez"):
        EngineConfig.from_toml(f)


def test_explain_shows_drift(engine: Engine, data: Dataset) -> None:
    uid = data.user_ids.ids[0]
    ex = engine.explain(uid, k=5, windows=2)
    assert ex.evolution.height == 2
    old_topic, new_topic = (
        data.meta["topic_names"][t] for t in data.meta["topics"][data.user_ids.index(uid)]
    )
    assert any(g == new_topic for g, _ in ex.rising)
    assert any(g == old_topic for g, _ in ex.falling)
    assert len(ex.reasons) == 5
    text = str(ex)
    assert "growing:" in text and "shrinking:" in text and ex.reasons[0]["title"] in text
    assert "position:" not in text and "time:" not in text  # scales read as "the last 8 events"
    traj = engine.interest_trajectory(uid, [1.6e9, 1.7e9])
    assert traj.shape[0] == 2


def test_rw_lock_does_not_starve_writers_and_allows_nested_reads() -> None:
    # A liveness check: with the earlier reader-preferring lock, observe() once waited forever
    # behind a thread calling rank() in a loop (test_observe_concurrent_with_rank hung in CI).
    from driftrank.engine._engine import _RWLock

    lock = _RWLock()
    stop = threading.Event()

    def reader() -> None:
        # The pattern of Engine.rank: a short read, then a long one with nested reads inside.
        while not stop.is_set():
            with lock.read():
                pass
            with lock.read(), lock.read():  # nested reads never wait
                sum(range(20_000))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for th in threads:
        th.start()
    done = threading.Event()

    def writer() -> None:
        for _ in range(20):
            with lock.write():
                pass
        done.set()

    w = threading.Thread(target=writer)
    w.start()
    finished = done.wait(timeout=20.0)
    stop.set()
    w.join()
    for th in threads:
        th.join()
    assert finished, "the writer was starved by a stream of readers"


def test_rank_table_holds_rank_batch_row_for_row(engine: Engine, data: Dataset) -> None:
    users = [data.user_ids.ids[j].item() for j in (5, 0, 9)]
    results = engine.rank_batch(users, k=6)
    table = engine.rank_table(users, k=6, contributions=True)
    assert table.columns[:5] == ["user_id", "rank", "item_id", "title", "score"]
    assert table.height == sum(len(r) for r in results)
    for r in results:
        rows = table.filter(pl.col("user_id") == r.user).sort("rank")
        assert rows["rank"].to_list() == list(range(1, len(r) + 1))
        assert rows["item_id"].to_list() == r.item_ids.tolist()
        assert rows["title"].to_list() == r.titles
        np.testing.assert_allclose(rows["score"].to_numpy(), r.scores, rtol=1e-5, atol=1e-6)
        # The +signal columns and base add up to the score, as on the result.
        parts = rows.select([c for c in rows.columns if c.startswith("+")] + ["base"]).to_numpy()
        np.testing.assert_allclose(parts.sum(axis=1), r.scores, rtol=1e-4, atol=1e-4)
    # Chunks: the same rows, in the users' order, however the users are cut.
    chunks = list(engine.rank_tables(users, k=6, chunk_size=2))
    assert [c["user_id"].unique(maintain_order=True).to_list() for c in chunks] == [users[:2], users[2:]]
    whole, cut = engine.rank_table(users, k=6), pl.concat(chunks)
    assert cut.drop("score").equals(whole.drop("score"))
    np.testing.assert_allclose(cut["score"].to_numpy(), whole["score"].to_numpy(), rtol=1e-5, atol=1e-6)
    pd = pytest.importorskip("pandas")  # a dev dependency: present in CI
    frame = engine.rank_table(users, k=6, format="pandas")
    assert isinstance(frame, pd.DataFrame) and list(frame["item_id"]) == table["item_id"].to_list()
    empty = engine.rank_table([], k=6)
    assert empty.height == 0 and empty.columns[:5] == table.columns[:5]
    with pytest.raises(DataError, match="chunk_size must be a positive integer"):
        list(engine.rank_tables(users, chunk_size=0))
    with pytest.raises(ConfigError, match="format must be"):
        engine.rank_table(users, format="csv")  # type: ignore[arg-type]


def test_rank_result_repr_names_ids_not_catalog_positions(engine: Engine, data: Dataset) -> None:
    r = engine.rank(data.user_ids.ids[2].item(), k=3)
    text = repr(r)
    assert "item_ids=" in text and "items=" not in text.replace("item_ids=", "")


def test_explain_labels_read_plainly() -> None:
    from driftrank.engine._explain import _period, scale_label, signal_label

    day = 86_400.0
    t0 = 877_219_200.0  # 1997-10-19 00:00 UTC
    # A history within one day shows times, not four copies of the same date.
    assert _period(t0 + 3600, t0 + 5400, 3 * 3600) == "1997-10-19 01:00 .. 01:30"
    assert _period(t0 + 3600, t0 + day + 60, day + 60) == "1997-10-19 01:00 .. 1997-10-20 00:01"
    assert _period(t0, t0, 0.0) == "1997-10-19 00:00"
    assert _period(t0, t0 + 40 * day, 40 * day) == "1997-10-19 .. 1997-11-28"
    assert scale_label("time:30d") == "weighted to the last month"
    assert scale_label("time:2.5d") == "weighted to the last 2.5 days"
    assert scale_label("position:8") == "weighted to the last 8 events"
    assert scale_label("custom") == "custom"
    assert signal_label("covisit").startswith("co-visitation") and signal_label("new") == "new"
