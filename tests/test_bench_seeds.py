"""benchmarks/bench_seeds.py: the seed-spread summary of several `driftrank bench` folders."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_seeds", ROOT / "benchmarks" / "bench_seeds.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_run(folder: Path, seed: int, per_user: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True)
    pipelines = {}
    for name in ("hybrid", "sasrec"):
        pipelines[name] = {
            "metrics": {m: float(per_user[f"{name}/{m}"].mean()) for m in ("NDCG@10", "HR@10")}
        }
    result = {
        "dataset": {"name": "toy"},
        "protocol": "loo",
        "seed": seed,
        "machine": {"git_commit": "abc"},
        "pipelines": pipelines,
    }
    (folder / "results.json").write_text(json.dumps(result))
    np.savez(folder / "per_user.npz", **per_user)
    return folder


def test_spread_and_paired_comparison_of_seed_averages(tmp_path: Path) -> None:
    mod = _module()
    rng = np.random.default_rng(0)
    folders = []
    hits = {}
    for seed in (0, 1, 2):
        hit_h = (rng.random(400) < 0.3).astype(float)
        hit_s = (rng.random(400) < 0.2).astype(float)
        hits[seed] = (hit_h, hit_s)
        per = {
            "hybrid/NDCG@10": hit_h * 0.5,
            "hybrid/HR@10": hit_h,
            "sasrec/NDCG@10": hit_s * 0.5,
            "sasrec/HR@10": hit_s,
        }
        folders.append(_fake_run(tmp_path / f"s{seed}", seed, per))
    summary = mod.main([*map(str, folders), "--out", str(tmp_path / "out")])
    ndcg = summary["pipelines"]["hybrid"]["NDCG@10"]
    expect = [hits[s][0].mean() * 0.5 for s in (0, 1, 2)]
    np.testing.assert_allclose(ndcg["per_seed"], expect)
    assert ndcg["mean"] == pytest.approx(np.mean(expect)) and ndcg["sd"] == pytest.approx(
        np.std(expect, ddof=1)
    )
    (c,) = [c for c in summary["comparisons_of_seed_averages"] if c["metric"] == "HR@10"]
    avg_h = np.mean([hits[s][0] for s in (0, 1, 2)], axis=0)
    avg_s = np.mean([hits[s][1] for s in (0, 1, 2)], axis=0)
    assert c["b"] == "sasrec" and c["diff"] == pytest.approx(avg_s.mean() - avg_h.mean())
    assert c["ci_low"] < c["diff"] < c["ci_high"] and c["p_value"] < 0.05
    for f in ("seeds.json", "seeds.md", "seeds.png"):
        assert (tmp_path / "out" / f).stat().st_size > 0
    assert "| hybrid |" in (tmp_path / "out" / "seeds.md").read_text()


def test_folders_must_differ_in_seed_and_hold_results(tmp_path: Path) -> None:
    mod = _module()
    per = {f"{p}/{m}": np.zeros(5) for p in ("hybrid", "sasrec") for m in ("NDCG@10", "HR@10")}
    a = _fake_run(tmp_path / "a", 0, per)
    b = _fake_run(tmp_path / "b", 0, per)
    with pytest.raises(SystemExit, match="different seeds"):
        mod.main([str(a), str(b), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match=r"results\.json"):
        mod.main([str(a), str(tmp_path), "--out", str(tmp_path / "out")])
