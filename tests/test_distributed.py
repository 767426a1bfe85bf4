"""Ranking every user on Ray (a local Ray with two CPUs): the same rows as one process."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conftest import small_engine_config
from driftrank.data import make_drifting
from driftrank.distributed import RankChunks, rank_all
from driftrank.engine import Engine, write_rankings
from driftrank.errors import DataError, ModelFileError

ray = pytest.importorskip("ray")  # in the dev extra: present wherever the tests run in CI


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = make_drifting(n_users=90, n_items=120, n_topics=4, events_per_user=(8, 14), seed=7)
    return Engine(small_engine_config()).fit(data).save(tmp_path_factory.mktemp("ray") / "model")


@pytest.fixture(scope="module")
def local_ray() -> object:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def ordered(table: pl.DataFrame, users: list[object]) -> pl.DataFrame:
    """Rows by the users' order, then rank (Ray writes its parts in no set order)."""
    place = {u: j for j, u in enumerate(users)}
    key = pl.col("user_id").replace_strict(place, return_dtype=pl.Int64)
    return table.with_columns(key.alias("_place")).sort("_place", "rank").drop("_place")


def test_rank_all_on_ray_writes_the_single_process_rows(
    model: Path, tmp_path: Path, local_ray: object
) -> None:
    import torch

    engine = Engine.load(model)
    users = engine.known_users()
    summary = rank_all(model, tmp_path / "ray", k=6, workers=2, chunk_size=16)
    assert summary.users == len(users) and summary.parts == -(-len(users) // 16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the actors rank on one thread each
    try:
        single = write_rankings(engine, tmp_path / "one", k=6, chunk_size=16)
    finally:
        torch.set_num_threads(threads)
    got = ordered(pl.read_parquet(sorted((tmp_path / "ray").glob("*.parquet"))), users)
    want = ordered(pl.read_parquet(sorted((tmp_path / "one").glob("*.parquet"))), users)
    assert summary.rows == single.rows == got.height == want.height
    assert got.drop("score").equals(want.drop("score"))
    np.testing.assert_allclose(got["score"].to_numpy(), want["score"].to_numpy(), rtol=1e-6, atol=1e-7)
    # A subset, with contributions, replacing the earlier output.
    some = users[::7]
    rank_all(model, tmp_path / "ray", some, k=3, workers=1, chunk_size=5, contributions=True)
    sub = pl.read_parquet(sorted((tmp_path / "ray").glob("*.parquet")))
    assert set(sub["user_id"].to_list()) == set(some) and sub.height == 3 * len(some)
    assert "base" in sub.columns and any(c.startswith("+") for c in sub.columns)


class DiesOnce(RankChunks):
    """Kills its own worker process the first time any copy of it ranks a chunk."""

    flag = ""

    def __call__(self, batch: object) -> object:
        if not os.path.exists(self.flag):
            Path(self.flag).write_text("died", encoding="utf-8")
            os._exit(1)
        return super().__call__(batch)


def test_a_worker_killed_mid_job_is_retried_and_nothing_is_lost_or_doubled(
    model: Path, tmp_path: Path, local_ray: object
) -> None:
    import sys

    from ray import cloudpickle

    # Ray's workers cannot import this test module: send the test's actor class by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    flag = tmp_path / "died"
    actor = type("DiesOnceHere", (DiesOnce,), {"flag": str(flag)})
    users = Engine.load(model).known_users()
    summary = rank_all(model, tmp_path / "out", k=4, workers=2, chunk_size=10, actor=actor)
    assert flag.read_text(encoding="utf-8") == "died"  # a worker did die
    table = pl.read_parquet(sorted((tmp_path / "out").glob("*.parquet")))
    assert summary.rows == table.height == 4 * len(users)
    counts = table.group_by("user_id").len()
    assert counts.height == len(users) and counts["len"].to_list() == [4] * len(users)
    assert table.select("user_id", "rank").is_duplicated().sum() == 0


def test_bad_inputs_are_refused_before_any_ray_work(model: Path, tmp_path: Path) -> None:
    started = ray.is_initialized()
    with pytest.raises(ModelFileError, match="not a driftrank model"):
        rank_all(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(DataError, match="does not know"):
        rank_all(model, tmp_path / "out", ["no-such-user"])
    with pytest.raises(DataError, match="workers must be a positive integer"):
        rank_all(model, tmp_path / "out", workers=0)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("keep", encoding="utf-8")
    with pytest.raises(DataError, match="not a rankings folder"):
        rank_all(model, mine)
    assert (mine / "keep.txt").read_text(encoding="utf-8") == "keep"
    assert ray.is_initialized() == started  # nothing was started


def test_bench_on_ray_gives_the_single_process_metrics(local_ray: object) -> None:
    from driftrank.bench import PipelineSpec, run_benchmark

    data = make_drifting(n_users=80, n_items=90, n_topics=4, events_per_user=(8, 12), seed=11)
    params = small_engine_config().to_dict()
    specs = [PipelineSpec("pop", "pop"), PipelineSpec("hybrid", "hybrid", params)]
    one = run_benchmark(data, specs, latency_users=0, progress=False)
    on_ray = run_benchmark(data, specs, latency_users=0, progress=False, ray="local", ray_workers=2)
    for name in ("pop", "hybrid"):
        for metric, values in one.per_user[name].items():
            np.testing.assert_allclose(on_ray.per_user[name][metric], values, rtol=0, atol=1e-12)
    assert on_ray.pipelines["hybrid"]["metrics"] == one.pipelines["hybrid"]["metrics"]
