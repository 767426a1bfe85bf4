"""Model folders: atomic writes, checksums, versions, no pickle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from driftrank.engine._persist import load_bundle, save_bundle
from driftrank.errors import ModelFileError


def _components() -> dict:
    return {
        "als": (
            {"factors": 8},
            {"user_factors": np.arange(12, dtype=np.float32).reshape(3, 4), "ids": np.array(["a", "b"])},
        ),
        "pop": ({}, {"scores": np.ones(5)}),
    }


def test_roundtrip(tmp_path: Path) -> None:
    p = save_bundle(tmp_path / "m", {"seed": 1}, _components())
    manifest, comps = load_bundle(p)
    assert manifest["config"] == {"seed": 1}
    assert manifest["format_version"] == 1
    assert comps["als"][0] == {"factors": 8}
    np.testing.assert_array_equal(comps["als"][1]["user_factors"], _components()["als"][1]["user_factors"])
    assert comps["als"][1]["ids"].tolist() == ["a", "b"]


def test_overwrite_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    save_bundle(tmp_path / "m", {"v": 1}, _components())
    save_bundle(tmp_path / "m", {"v": 2}, _components())
    assert load_bundle(tmp_path / "m")[0]["config"] == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_failed_save_keeps_old_model(tmp_path: Path) -> None:
    save_bundle(tmp_path / "m", {"v": 1}, _components())
    bad = {"x": ({}, {"obj": np.array([{"a": 1}], dtype=object)})}
    with pytest.raises(ModelFileError, match="dtype object"):
        save_bundle(tmp_path / "m", {"v": 2}, bad)
    assert load_bundle(tmp_path / "m")[0]["config"] == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_tampered_arrays_are_refused(tmp_path: Path) -> None:
    p = save_bundle(tmp_path / "m", {}, _components())
    f = p / "pop.npz"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        load_bundle(p)


def test_future_version_and_wrong_kind_are_refused(tmp_path: Path) -> None:
    p = save_bundle(tmp_path / "m", {}, _components())
    m = json.loads((p / "manifest.json").read_text())
    m["format_version"] = 99
    (p / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelFileError, match="format version 99 is not supported"):
        load_bundle(p)
    q = save_bundle(tmp_path / "q", {}, _components(), kind="channel")
    with pytest.raises(ModelFileError, match="expected 'engine'"):
        load_bundle(q)
    with pytest.raises(ModelFileError, match=r"no manifest\.json"):
        load_bundle(tmp_path)


def test_missing_component_file(tmp_path: Path) -> None:
    p = save_bundle(tmp_path / "m", {}, _components())
    (p / "als.npz").unlink()
    with pytest.raises(ModelFileError, match=r"als\.npz is missing"):
        load_bundle(p)
