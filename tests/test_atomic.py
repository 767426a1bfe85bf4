"""Atomic writes: the target is replaced whole or left alone, and no temporary file remains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from driftrank._atomic import atomic_path, write_bytes_atomic, write_text_atomic


def test_writes_replace_the_target_and_leave_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "report.json"
    write_text_atomic(target, "first")
    write_text_atomic(target, "second")
    assert target.read_text(encoding="utf-8") == "second"
    write_bytes_atomic(tmp_path / "blob.bin", b"\x00\x01", fsync=True)
    assert (tmp_path / "blob.bin").read_bytes() == b"\x00\x01"
    with atomic_path(tmp_path / "arrays.npz") as tmp:
        assert tmp.suffix == ".npz" and tmp.parent == tmp_path  # writers that infer formats
        np.savez(tmp, a=np.arange(3))
    with np.load(tmp_path / "arrays.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["a"], np.arange(3))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "arrays.npz",
        "blob.bin",
        "report.json",
    ]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model.json"
    write_text_atomic(target, "good")

    def fail_half_way() -> None:
        with atomic_path(target) as tmp:
            tmp.write_text("half", encoding="utf-8")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        fail_half_way()
    assert target.read_text(encoding="utf-8") == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]
