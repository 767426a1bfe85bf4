"""The command line and the package surface."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from driftrank.bench import PipelineSpec, build_pipeline
from driftrank.cli import build_parser, main
from driftrank.errors import ConfigError


def test_import_is_cheap() -> None:
    code = "import sys, driftrank; heavy = [m for m in ('torch', 'polars', 'faiss', 'implicit', 'transformers', 'scipy') if m in sys.modules]; print(heavy)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:  # type: ignore[union-attr]
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: driftrank" in capsys.readouterr().out


def test_bench_writes_results(tmp_path: Path, data_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "res"
    pred = tmp_path / "pred.csv"
    rc = main(
        [
            "bench",
            "--dataset",
            "ml-100k",
            "--data-home",
            str(data_home),
            "--pipeline",
            "pop",
            "--out",
            str(out),
            "--save-predictions",
            str(pred),
            "--quiet",
            "--latency-users",
            "5",
        ]
    )
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    m = res["pipelines"]["pop"]["metrics"]
    assert m["HR@10"] == pytest.approx(0.0859, abs=0.002)
    assert set(m) >= {"NDCG@10", "HR@10", "MRR@10", "NDCG@20", "HR@20", "MRR@20", "coverage@10"}
    assert 0 < res["pipelines"]["pop"]["fit_seconds"] < 60  # measured, not a placeholder
    import os

    assert res["machine"]["cpu_count"] == os.cpu_count()
    assert (out / "metrics.png").stat().st_size > 1000
    assert set(res["pipelines"]["pop"]["latency_ms"]) == {"p50", "p95", "p99", "n"}
    assert "## Single-user latency (ms)" in (out / "results.md").read_text(encoding="utf-8")
    assert (out / "latency.png").stat().st_size > 1000
    assert res["warnings"] == []  # 943 test users
    assert "| pop |" in capsys.readouterr().out
    assert pred.read_text().startswith("user_id,items\n")


def test_bench_on_generic_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inter = tmp_path / "log.csv"
    rows = ["uid,sku,ts"] + [f"u{u},i{(u * 7 + j) % 13},{1000 + j}" for u in range(12) for j in range(6)]
    inter.write_text("\n".join(rows) + "\n")
    out = tmp_path / "res"
    rc = main(
        [
            "bench",
            "--interactions",
            str(inter),
            "--columns",
            "user=uid,item=sku,time=ts",
            "--pipeline",
            "pop",
            "--out",
            str(out),
            "--quiet",
            "--latency-users",
            "0",
        ]
    )
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["dataset"]["n_users"] == 12
    # 12 test users: the numbers are noise, and every output says so.
    assert len(res["warnings"]) == 1 and "only 12 test users" in res["warnings"][0]
    assert "only 12 test users" in capsys.readouterr().err
    assert "> **Warning:** only 12 test users" in (out / "results.md").read_text(encoding="utf-8")


def test_pipeline_toml(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text('name = "pop-7d"\nkind = "pop"\n[params]\nhalf_life_days = 7.0\n')
    spec = PipelineSpec.parse(str(f))
    assert (spec.name, spec.kind, spec.params) == ("pop-7d", "pop", {"half_life_days": 7.0})
    ranker = build_pipeline(spec)
    assert ranker.config.half_life_days == 7.0  # type: ignore[attr-defined]
    bad = tmp_path / "bad.toml"
    bad.write_text('kind = "pop"\n[params]\nhalf_life = 7\n')
    with pytest.raises(ConfigError, match="half_life"):
        build_pipeline(PipelineSpec.from_toml(bad))
    with pytest.raises(ConfigError, match="unknown pipeline 'nope'"):
        build_pipeline(PipelineSpec("nope", "nope"))


def test_missing_data_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DRIFTRANK_CACHE", str(tmp_path / "cache"))
    rc = main(["describe", "--dataset", "ml-1m", "--data-home", str(tmp_path)])
    assert rc == 2
    assert "ml-1m" in capsys.readouterr().err


def _tiny_engine_params() -> dict[str, object]:
    return {
        "encoder": {"kind": "hashing", "dim": 32},
        "reranker": {"dim": 16, "n_layers": 1, "max_epochs": 2, "n_hard": 4, "n_random": 8},
        "fusion_config": {"max_epochs": 5},
        "lightfm": None,
        "n_candidates": 30,
    }


def test_rerank_shares_the_hybrid_fit_and_ablation_is_recorded(tmp_path: Path) -> None:
    from driftrank.bench import PipelineSpec, run_benchmark
    from driftrank.data import make_drifting
    from driftrank.engine._config import EngineConfig
    from driftrank.engine._ranker import EngineRanker
    from driftrank.eval import leave_one_out

    data = make_drifting(n_users=40, n_items=60, n_topics=3, events_per_user=(8, 12), seed=3)
    params = _tiny_engine_params()
    # A pipeline of another kind after the engine's is fitted on its own (its config is no
    # EngineConfig: sharing must not even be tried).
    specs = [
        PipelineSpec("hybrid", "hybrid", params),
        PipelineSpec("rerank", "rerank", params),
        PipelineSpec("pop", "pop", {}),
    ]
    res = run_benchmark(
        data, specs, out=tmp_path, latency_users=0, progress=False, keep_rankers=True, ablation=True
    )
    hybrid, rerank = res.pipelines["hybrid"], res.pipelines["rerank"]
    assert rerank["fit_shared_with"] == "hybrid" and "fit_shared_with" not in hybrid
    assert "fit_shared_with" not in res.pipelines["pop"]
    assert rerank["fit_seconds"] == hybrid["fit_seconds"]
    # The shared engine ranks exactly as a fresh fit of the rerank config does.
    fresh = EngineRanker(EngineConfig.from_dict({"seed": 0, **params, "fusion": "reranker"}))
    fresh.fit(leave_one_out(data).train_valid)
    users = np.arange(data.n_users)
    seen = leave_one_out(data).train_valid.seen
    shared = res.rankers["rerank"].rank(users, 10, exclude=seen)
    np.testing.assert_array_equal(shared.items, fresh.rank(users, 10, exclude=seen).items)
    # A different re-ranker setting is not shared.
    other = EngineConfig.from_dict({"seed": 0, **params, "fusion": "reranker", "n_candidates": 20})
    assert res.rankers["hybrid"].derive(other) is None
    # The ablation: all signals first, then each group removed, then each alone; methods too.
    table = hybrid["ablation"]["table"]
    assert table[0]["variant"] == "all" and table[0]["dNDCG@10"] == 0.0
    groups = set(hybrid["ablation"]["groups"])
    assert {r["group"] for r in table if r["variant"] == "without"} == groups
    assert "rerank" in {r["group"] for r in table if r["variant"] == "only"}
    assert [m["method"] for m in hybrid["ablation"]["methods"]] == [
        "gated",
        "gated, no MLP",
        "linear (logistic)",
        "reciprocal rank",
    ]
    assert "ablation" not in rerank
    assert "Fusion ablation: hybrid" in (tmp_path / "results.md").read_text(encoding="utf-8")
    assert (tmp_path / "ablation-hybrid.png").is_file()


def test_demo_quick_runs_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    # The demo on the built-in synthetic data (the real-data run is `make demo`).
    assert main(["demo", "--dataset", "synthetic", "--quick"]) == 0
    out = capsys.readouterr().out
    for step in ("[1/4] Fitting", "[2/4] Predicting", "[3/4] Two users", "[4/4] A new user"):
        assert step in out
    for row in ("popularity ", "ALS (implicit) ", "driftrank "):
        assert f"      {row}" in out
    assert "driftrank - ALS (implicit): " in out and "95% CI" in out
    assert out.count("=== user") == 2 and out.count("held-out next event:") == 2
    assert "interests over time" in out and "top items and why:" in out


def test_demo_full_benchmarks_six_pipelines(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--dataset", "synthetic", "--quick", "--full"]) == 0
    out = capsys.readouterr().out
    for name in ("| pop ", "| sasrec ", "| hybrid ", "| rerank "):
        assert name in out
    assert "hybrid vs sasrec NDCG@10" in out


def test_plot_file_names_are_portable_whatever_the_pipeline_name() -> None:
    from driftrank.bench._plots import file_stem

    assert file_stem("hybrid") == "hybrid"
    assert file_stem("hybrid-llm (fine_tuned)") == "hybrid-llm_fine_tuned"
    assert file_stem("a/b\\c d") == "a_b_c_d"
    assert file_stem("../..") == "pipeline"


def test_pipelines_lists_each_with_a_line(capsys: pytest.CaptureFixture[str]) -> None:
    from driftrank.bench._pipelines import available

    assert main(["pipelines"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in available():
        row = next(line for line in lines if line.split()[:1] == [name])
        description = row[len(name) :].strip()
        assert len(description) > 10 and "``" not in description and ":class:" not in description
    assert any("co-visitation" in line for line in lines if line.startswith("covisit"))


def test_missing_data_names_the_command_line_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from driftrank.data import _download

    monkeypatch.setenv("DRIFTRANK_DATA_HOME", str(tmp_path / "none"))
    monkeypatch.setenv("DRIFTRANK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(_download, "REMOTES", {})  # offline: nothing to download
    assert main(["describe", "--dataset", "ml-100k"]) == 2
    err = capsys.readouterr().err
    assert "--data-home PATH" in err and "DRIFTRANK_DATA_HOME" in err


SMALL_ENGINE_TOML = """
n_candidates = 30
[encoder]
kind = "hashing"
dim = 32
[reranker]
dim = 16
n_layers = 1
max_epochs = 1
n_hard = 4
n_random = 8
[fusion_config]
max_epochs = 5
"""


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`driftrank fit` on the synthetic data set with a small engine."""
    root = tmp_path_factory.mktemp("fit")
    (root / "engine.toml").write_text(SMALL_ENGINE_TOML, encoding="utf-8")
    model = root / "model"
    rc = main(
        [
            "fit",
            "--dataset",
            "synthetic",
            "--config",
            str(root / "engine.toml"),
            "--out",
            str(model),
            "--quiet",
        ]
    )
    assert rc == 0 and (model / "manifest.json").is_file()
    return model


def test_rank_command_writes_what_rank_table_gives(
    saved_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import polars as pl

    from driftrank.engine import Engine

    out = tmp_path / "ranks.parquet"
    args = ["rank", "--model", str(saved_model), "--k", "7", "--out", str(out), "--chunk-size", "64"]
    assert main([*args, "--quiet"]) == 0
    assert "users/s" in capsys.readouterr().out
    parts = sorted(out.glob("part-*.parquet"))
    engine = Engine.load(saved_model)
    assert len(parts) == -(-engine.n_users // 64)  # one part per chunk of users
    got = pl.read_parquet(parts)
    want = engine.rank_table(engine.known_users(), k=7)
    assert got.drop("score").equals(want.drop("score"))
    np.testing.assert_allclose(got["score"].to_numpy(), want["score"].to_numpy(), rtol=1e-5, atol=1e-6)
    # Running again replaces its own earlier output; a folder that is not one is left alone.
    assert main([*args, "--quiet", "--explain"]) == 0
    assert any(c.startswith("+") for c in pl.read_parquet(sorted(out.glob("part-*.parquet"))).columns)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me", encoding="utf-8")
    assert main(["rank", "--model", str(saved_model), "--out", str(mine), "--quiet"]) == 2
    assert "not a rankings folder" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_rank_command_users_file_and_csv(
    saved_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import polars as pl

    from driftrank.engine import Engine

    known = Engine.load(saved_model).known_users()
    users = tmp_path / "users.csv"
    users.write_text(f"user_id\n{known[3]}\n\n{known[0]}\n", encoding="utf-8")
    out = tmp_path / "ranks.csv"
    cmd = ["rank", "--model", str(saved_model), "--users", str(users), "--k", "5", "--out", str(out)]
    assert main([*cmd, "--quiet"]) == 0
    table = pl.read_csv(out)
    assert table["user_id"].unique(maintain_order=True).to_list() == [known[3], known[0]]
    assert table.height == 10 and table["rank"].to_list() == [1, 2, 3, 4, 5] * 2
    users.write_text(f"{known[1]}\nnobody-{known[2]}\n", encoding="utf-8")
    assert main([*cmd, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "integers" in err
    users.write_text(f"{known[1]}\n\n{10**9}\n", encoding="utf-8")  # an id nobody has
    assert main([*cmd, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "line 3" in err and "does not know" in err
    assert pl.read_csv(out).height == 10  # the earlier output is untouched
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n", encoding="utf-8")
    assert main(["rank", "--model", str(saved_model), "--out", str(other), "--quiet"]) == 2
    assert other.read_text(encoding="utf-8") == "a,b\n1,2\n"
