"""The command line and the package surface."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    assert res["pipelines"]["pop"]["fit_seconds"] >= 0
    assert res["machine"]["cpu_count"] >= 1
    assert (out / "metrics.png").stat().st_size > 1000
    assert "| pop |" in capsys.readouterr().out
    assert pred.read_text().startswith("user_id,items\n")


def test_bench_on_generic_files(tmp_path: Path) -> None:
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
