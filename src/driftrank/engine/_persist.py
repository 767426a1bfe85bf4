"""Model folders: a JSON manifest plus ``.npz`` arrays, written atomically, verified on load.

No pickle anywhere: arrays are saved with ``numpy.savez`` and read with ``allow_pickle=False``;
object arrays are refused at save time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from driftrank._machine import package_versions
from driftrank.errors import ModelFileError

FORMAT = "driftrank-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

State = tuple[dict[str, Any], dict[str, np.ndarray]]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> dict[str, str | None]:
    return package_versions(
        ("driftrank", "numpy", "torch", "implicit", "rectools-lightfm", "faiss-cpu", "sentence-transformers")
    )


def _safe_name(name: str) -> str:
    if not name or any(c in name for c in "/\\\0") or name.startswith("."):
        raise ModelFileError(f"component name {name!r} cannot be used as a file name")
    return name


def save_bundle(
    path: str | os.PathLike[str],
    config: dict[str, Any],
    components: dict[str, State],
    *,
    kind: str = "engine",
) -> Path:
    """Write ``components`` (name -> (config, arrays)) under ``path`` atomically.

    Everything is written into a temporary sibling folder, flushed, and renamed into place; an
    existing model at ``path`` is replaced only once the new one is complete, so a crash leaves
    either the old model or the new one, never half of one.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        entries = {}
        for name, (cfg, arrays) in components.items():
            fname = f"{_safe_name(name)}.npz"
            for key, arr in arrays.items():
                a = np.asarray(arr)
                if a.dtype == object:
                    raise ModelFileError(
                        f"component {name!r}: array {key!r} has dtype object, which would need pickle"
                    )
            with open(tmp / fname, "wb") as fh:
                np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})  # type: ignore[arg-type]
                fh.flush()
                os.fsync(fh.fileno())
            entries[name] = {
                "config": cfg,
                "file": fname,
                "sha256": _sha256(tmp / fname),
                "arrays": sorted(arrays),
            }
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": _versions(),
            "config": config,
            "components": entries,
        }
        text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=True)
        with open(tmp / MANIFEST, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if target.exists():
            backup = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, backup)
            os.replace(tmp, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_bundle(
    path: str | os.PathLike[str], *, kind: str = "engine"
) -> tuple[dict[str, Any], dict[str, State]]:
    """Read a model folder written by :func:`save_bundle`, verifying format, version and checksums.

    Raises :class:`ModelFileError` for a missing, tampered, truncated or incompatible model.
    """
    d = Path(path)
    mpath = d / MANIFEST
    if not mpath.is_file():
        raise ModelFileError(f"{d}: not a driftrank model folder (no {MANIFEST})")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{mpath}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelFileError(
            f"{mpath}: format is {manifest.get('format') if isinstance(manifest, dict) else None!r}, expected {FORMAT!r}"
        )
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ModelFileError(
            f"{mpath}: format version {version!r} is not supported by this driftrank (reads 1..{FORMAT_VERSION}); upgrade driftrank or re-save the model"
        )
    if manifest.get("kind") != kind:
        raise ModelFileError(f"{mpath}: holds a {manifest.get('kind')!r} model, expected {kind!r}")
    components: dict[str, State] = {}
    for name, entry in manifest.get("components", {}).items():
        fname = _safe_name(str(entry.get("file", "")))
        if not fname.endswith(".npz"):
            raise ModelFileError(f"{mpath}: component {name!r} names file {fname!r}, expected a .npz file")
        f = d / fname
        if not f.is_file():
            raise ModelFileError(f"{d}: component file {f.name} is missing")
        got = _sha256(f)
        if got != entry.get("sha256"):
            raise ModelFileError(
                f"{f}: checksum mismatch (expected {entry.get('sha256')}, got {got}); the model was modified or damaged"
            )
        try:
            with np.load(f, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"{f}: unreadable arrays ({exc})") from None
        if sorted(arrays) != sorted(entry.get("arrays", [])):
            raise ModelFileError(
                f"{f}: holds arrays {sorted(arrays)}, the manifest lists {entry.get('arrays')}"
            )
        components[name] = (entry.get("config", {}), arrays)
    return manifest, components
