"""Hostile inputs: nothing lost, nothing silently wrong, every refusal a clear driftrank error.

Each test names the class of failure it closes; the property-based tests draw cheap examples
(tiny synthetic data, a small engine config) and are derandomized by the profile in conftest.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from driftrank.engine._persist import _canonical, load_bundle, save_bundle
from driftrank.errors import ConfigError, DriftrankError, ModelFileError


def _stamped(v: int) -> tuple[dict, dict]:
    """Two components whose every array holds ``v``: a mixture of two saves shows at once."""
    return {"v": v}, {
        "a": ({"v": v}, {"x": np.full((50, 40), v, dtype=np.float64), "y": np.full(7, v, dtype=np.int32)}),
        "b": ({"v": v}, {"z": np.full(3000, v, dtype=np.float32)}),
    }


def _reseal(folder: Path, edit) -> None:
    """Apply ``edit`` to the manifest and fix its checksum, as a careful hand editor would."""
    p = folder / "manifest.json"
    m = edit(json.loads(p.read_text()))
    body = {k: v for k, v in m.items() if k != "integrity"}
    m["integrity"] = {**m["integrity"], "manifest_sha256": hashlib.sha256(_canonical(body)).hexdigest()}
    p.write_text(json.dumps(m))


# ====================================================================== saving never destroys
def test_save_refuses_a_folder_that_is_not_a_model(tmp_path: Path) -> None:
    own = tmp_path / "mine"
    own.mkdir()
    (own / "thesis.tex").write_text("years of work")
    cfg, comps = _stamped(1)
    with pytest.raises(ModelFileError, match=r"not a driftrank model \(it holds thesis\.tex\)"):
        save_bundle(own, cfg, comps)
    assert (own / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temp folder left behind


def test_save_refuses_a_regular_file_and_odd_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    cfg, comps = _stamped(1)
    with pytest.raises(ModelFileError, match="is an existing file"):
        save_bundle(f, cfg, comps)
    assert f.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelFileError, match="not a driftrank model"):
        save_bundle(".", cfg, comps)
    with pytest.raises(ModelFileError, match="folder path; got ''"):
        save_bundle("", cfg, comps)
    with pytest.raises(ModelFileError, match="file system root"):
        save_bundle("/", cfg, comps)
    link = tmp_path / "link"
    link.symlink_to(f)
    with pytest.raises(ModelFileError, match="symbolic link"):
        save_bundle(link, cfg, comps)
    assert f.read_text() == "keep me"


def test_save_replaces_a_model_or_an_empty_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    save_bundle(empty, *_stamped(1))
    save_bundle(empty, *_stamped(2))
    assert load_bundle(empty)[0]["config"] == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def _saver(path: str, n: int) -> None:
    for i in range(n):
        save_bundle(path, *_stamped(i % 2 + 1))


def _loader(path: str, n: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    seen, errors = set(), []
    for _ in range(n):
        try:
            manifest, comps = load_bundle(path)
        except DriftrankError as exc:  # a clean failure would be allowed; a mixture never
            errors.append(str(exc))
            continue
        values = {manifest["config"]["v"]}
        for cfg, arrays in comps.values():
            values.add(cfg["v"])
            values.update(
                np.unique(np.concatenate([a.ravel().astype(np.float64) for a in arrays.values()])).tolist()
            )
        seen.add(tuple(sorted(values)))
    out.put((sorted(seen), errors))


def test_concurrent_save_and_load_never_mix(tmp_path: Path) -> None:
    path = str(tmp_path / "m")
    save_bundle(path, *_stamped(1))
    ctx = mp.get_context("fork")
    out: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    writer = ctx.Process(target=_saver, args=(path, 60))
    readers = [ctx.Process(target=_loader, args=(path, 80, out)) for _ in range(2)]
    for p in [writer, *readers]:
        p.start()
    results = [out.get(timeout=120) for _ in readers]
    for p in [writer, *readers]:
        p.join(timeout=120)
        assert p.exitcode == 0
    seen = {s for r in results for s in r[0]}
    assert seen <= {(1,), (2,)}, f"a load mixed two models: {seen}"
    assert not [e for r in results for e in r[1]], "loads failed while a save ran"
    assert load_bundle(path)[0]["config"]["v"] in (1, 2)


def test_threads_saving_to_one_path_do_not_collide(tmp_path: Path) -> None:
    path = tmp_path / "m"
    errors: list[BaseException] = []

    def work(v: int) -> None:
        try:
            for _ in range(15):
                save_bundle(path, *_stamped(v))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(v,)) for v in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    manifest, comps = load_bundle(path)
    assert {cfg["v"] for cfg, _ in comps.values()} == {manifest["config"]["v"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


# ====================================================================== hostile model files
def test_hand_edited_manifests_are_refused(tmp_path: Path) -> None:
    p = save_bundle(tmp_path / "m", *_stamped(1))
    original = (p / "manifest.json").read_bytes()
    cases = {
        b"[" * 100_000 + b"]" * 100_000: "nested too deeply",
        b'{"format": "driftrank-model", "x": "\xff"}': "not UTF-8",
        b"[1, 2]": "format is 'list'",
    }
    for text, message in cases.items():
        (p / "manifest.json").write_bytes(text)
        with pytest.raises(ModelFileError, match=message):
            load_bundle(p)
    (p / "manifest.json").write_bytes(original)
    m = json.loads(original)
    m["config"]["v"] = 2  # edited without fixing the checksum
    (p / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelFileError, match="checksum does not match its content"):
        load_bundle(p)
    for edit, message in [
        (lambda m: {**m, "components": [1]}, "'components' must be an object, got list"),
        (lambda m: {**m, "config": []}, "'config' must be an object, got list"),
        (lambda m: {**m, "components": {"a": {**m["components"]["a"], "arrays": {"x": 1}}}}, "list of names"),
        (lambda m: {**m, "components": {"a": {**m["components"]["a"], "file": "../a.npz"}}}, "file name"),
    ]:
        (p / "manifest.json").write_bytes(original)
        _reseal(p, edit)
        with pytest.raises(ModelFileError, match=message):
            load_bundle(p)


def _npz_with_header(shape: tuple[int, ...], payload: bytes, compress: int = zipfile.ZIP_STORED) -> bytes:
    hdr = io.BytesIO()
    np.lib.format.write_array_header_1_0(hdr, {"descr": "<f4", "fortran_order": False, "shape": shape})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compress) as z:
        z.writestr("z.npy", hdr.getvalue() + payload)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("shape", "payload", "compress", "message"),
    [
        ((10**12,), b"\0" * 64, zipfile.ZIP_STORED, "has shape"),  # the manifest says 3000
        ((3000,), b"\0" * 64, zipfile.ZIP_STORED, "claims shape"),  # the data is not all there
        ((3000,), b"\0" * 12000, zipfile.ZIP_DEFLATED, "compressed"),  # could inflate to anything
    ],
)
def test_npz_headers_are_checked_before_allocating(
    tmp_path: Path, shape: tuple[int, ...], payload: bytes, compress: int, message: str
) -> None:
    p = save_bundle(tmp_path / "m", *_stamped(1))
    data = _npz_with_header(shape, payload, compress)
    (p / "b.npz").write_bytes(data)

    def edit(m: dict) -> dict:
        m["components"]["b"]["sha256"] = hashlib.sha256(data).hexdigest()
        return m

    _reseal(p, edit)
    with pytest.raises(ModelFileError, match=message):
        load_bundle(p)


def test_hmac_key_signs_and_refuses(tmp_path: Path) -> None:
    p = save_bundle(tmp_path / "m", *_stamped(1), key=b"service-secret")
    assert load_bundle(p, key=b"service-secret")[0]["config"] == {"v": 1}
    assert load_bundle(p)[0]["config"] == {"v": 1}  # checksums alone still pass
    with pytest.raises(ModelFileError, match="HMAC does not match"):
        load_bundle(p, key=b"another")
    unsigned = save_bundle(tmp_path / "u", *_stamped(1))
    with pytest.raises(ModelFileError, match="carries no HMAC"):
        load_bundle(unsigned, key=b"service-secret")
    # Re-sealing the checksum after an edit fools the checksum, not the key.
    _reseal(p, lambda m: {**m, "config": {"v": 2}})
    assert load_bundle(p)[0]["config"] == {"v": 2}
    with pytest.raises(ModelFileError, match="HMAC does not match"):
        load_bundle(p, key=b"service-secret")
    with pytest.raises(ConfigError, match="non-empty"):
        save_bundle(tmp_path / "k", *_stamped(1), key=b"")
    assert not (tmp_path / "k").exists()
