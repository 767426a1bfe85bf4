"""Model folders: a JSON manifest plus ``.npz`` arrays, written atomically, verified on load.

No pickle anywhere: arrays are written with ``numpy.savez`` and read back by a reader that
checks every member's header against the manifest (shape, dtype, size) before it allocates
anything; object arrays are refused at save time and at load time.

What is protected, and against what:

- **Nothing is destroyed.** ``save`` replaces only an existing driftrank model holding
  nothing but its own files (or an empty folder); a regular file, a link, or a folder holding
  anything else is refused.
- **Atomic replacement.** The new model is written into a temporary sibling folder and swapped
  in with one rename (``renameat2(RENAME_EXCHANGE)`` on Linux, so the path never stops being a
  complete model; two renames elsewhere). Concurrent saves to one path each swap in their own
  complete folder; the last one wins.
- **One model per load.** ``load`` reads the manifest and every array file through one handle
  on the folder it opened, and checks each file against that manifest's SHA-256 sum; if the
  folder was swapped under it, it starts over (a few times), so it returns one complete model
  or raises :class:`ModelFileError`, never a mixture.
- **Accidents, not attacks.** The SHA-256 sums (of every array file, and of the manifest's own
  content) catch truncation, bit rot and hand edits; anyone who can write the folder can also
  rewrite the sums. ``save(..., key=...)`` adds an HMAC-SHA256 of the manifest (which holds the
  sums of the arrays) under a secret key, and ``load(..., key=...)`` refuses a model whose HMAC
  is missing or does not match: only a holder of the key could have written it.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import hmac
import io
import json
import logging
import math
import os
import shutil
import stat
import sys
import tempfile
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from driftrank._machine import package_versions
from driftrank.errors import ConfigError, ModelFileError

log = logging.getLogger(__name__)

FORMAT = "driftrank-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# A manifest holds configs and array names: far below this. A bigger file is not one of ours.
_MAX_MANIFEST_BYTES = 64 << 20
# A model folder swapped by a concurrent save is re-read up to this many times.
_LOAD_ATTEMPTS = 8

State = tuple[dict[str, Any], dict[str, np.ndarray]]
Key = bytes | str


class _SwappedError(Exception):
    """The folder being read was replaced by a concurrent save: read it again."""


# ---------------------------------------------------------------------- helpers
def _versions() -> dict[str, str | None]:
    return package_versions(
        ("driftrank", "numpy", "torch", "implicit", "rectools-lightfm", "faiss-cpu", "sentence-transformers")
    )


def _safe_name(name: str) -> str:
    if not name or any(c in name for c in "/\\\0") or name.startswith("."):
        raise ModelFileError(f"component name {name!r} cannot be used as a file name")
    return name


def _canonical(body: dict[str, Any]) -> bytes:
    """The bytes the manifest checksum and HMAC cover: sorted keys, no whitespace. JSON floats
    round-trip exactly, so a parsed manifest gives back the same bytes."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True).encode("utf-8")


def _key_bytes(key: Key | None) -> bytes | None:
    if key is None:
        return None
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, (bytes, bytearray)) or not key:
        raise ConfigError(f"key must be non-empty bytes or a non-empty string, got {type(key).__name__}")
    return bytes(key)


def _hmac(key: bytes, body: dict[str, Any]) -> str:
    return hmac.new(key, _canonical(body), hashlib.sha256).hexdigest()


def _model_files(d: Path) -> set[str] | None:
    """The files of the driftrank model in ``d`` (manifest and component files, of any kind
    or version), or ``None`` when ``d`` holds no readable driftrank manifest."""
    try:
        with open(d / MANIFEST, "rb") as fh:
            text = fh.read(_MAX_MANIFEST_BYTES + 1)
        manifest = json.loads(text.decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None
    comps = manifest.get("components")
    files = {MANIFEST}
    if isinstance(comps, dict):
        files |= {str(e.get("file")) for e in comps.values() if isinstance(e, dict)}
    return files


def _check_target(path: str | os.PathLike[str]) -> Path:
    """The absolute folder to save to; refuses any path whose replacement would lose data."""
    raw = os.fspath(path)
    if isinstance(raw, bytes) or not raw:
        raise ModelFileError(f"a model is saved to a folder path; got {raw!r}")
    target = Path(os.path.abspath(raw))
    if target.parent == target:
        raise ModelFileError(f"cannot save a model as the file system root {raw!r}; name a folder under it")
    if target.is_symlink():
        raise ModelFileError(
            f"{target} is a symbolic link; save to the folder it points to, or to a new path"
        )
    if target.exists():
        if not target.is_dir():
            raise ModelFileError(
                f"{target} is an existing file, not a driftrank model folder; refusing to replace it "
                "(save to a new path, or remove the file first)"
            )
        try:
            entries = sorted(p.name for p in target.iterdir())
        except OSError as exc:
            raise ModelFileError(f"{target}: cannot inspect the existing folder ({exc})") from None
        if entries:
            files = _model_files(target)
            if files is None:
                shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
                raise ModelFileError(
                    f"{target} is an existing folder that is not a driftrank model (it holds {shown}); "
                    "refusing to replace it: save to a new or empty folder, or to an existing model"
                )
            extra = [e for e in entries if e not in files]
            if extra:
                shown = ", ".join(extra[:5]) + (", ..." if len(extra) > 5 else "")
                raise ModelFileError(
                    f"{target} holds a driftrank model and also files that are not part of it ({shown}); "
                    "refusing to replace them: move them out, or save to another folder"
                )
    return target


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2``); ``False`` where that is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False  # the file system (or kernel) cannot exchange; use two renames
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(tmp: Path, target: Path) -> None:
    """Put the complete folder ``tmp`` at ``target``, replacing the model there if any."""
    for _ in range(_LOAD_ATTEMPTS):
        if not os.path.lexists(target):
            try:
                os.rename(tmp, target)
                return
            except OSError as exc:  # another writer created it in between: replace theirs
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        _check_target(target)  # still a model (or empty) just before it is replaced
        if _exchange(tmp, target):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the replaced model
            return
        backup = target.with_name(f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        try:
            os.rename(target, backup)
        except FileNotFoundError:
            continue  # another writer moved it away in between; try again
        try:
            os.rename(tmp, target)
        except OSError:
            os.rename(backup, target)  # put the old model back
            raise
        shutil.rmtree(backup, ignore_errors=True)
        return
    raise ModelFileError(f"{target}: could not replace the model (other writers kept replacing it)")


# ---------------------------------------------------------------------- save
def save_bundle(
    path: str | os.PathLike[str],
    config: dict[str, Any],
    components: dict[str, State],
    *,
    kind: str = "engine",
    key: Key | None = None,
) -> Path:
    """Write ``components`` (name -> (config, arrays)) as a model folder at ``path``, atomically.

    Everything is written into a temporary sibling folder, flushed, and swapped into place; an
    existing model at ``path`` is replaced only once the new one is complete, so a crash leaves
    either the old model or the new one, never half of one. ``path`` must be new, an empty
    folder, or an existing driftrank model: anything else raises :class:`ModelFileError` and is
    left untouched. ``key`` (bytes or str) adds an HMAC-SHA256 that :func:`load_bundle` can
    require. Returns the absolute folder path.
    """
    key_b = _key_bytes(key)
    target = _check_target(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    except OSError as exc:
        raise ModelFileError(f"{target}: cannot write a model there ({exc})") from None
    try:
        entries = {}
        for name, (cfg, arrays) in components.items():
            fname = f"{_safe_name(name)}.npz"
            plain = {k: np.asarray(v) for k, v in arrays.items()}
            for k, a in plain.items():
                if a.dtype.hasobject:
                    raise ModelFileError(
                        f"component {name!r}: array {k!r} has dtype object, which would need pickle"
                    )
            h = hashlib.sha256()
            with open(tmp / fname, "wb") as fh:
                np.savez(fh, **plain)  # type: ignore[arg-type]
                fh.flush()
                os.fsync(fh.fileno())
            with open(tmp / fname, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            entries[name] = {
                "config": cfg,
                "file": fname,
                "sha256": h.hexdigest(),
                "arrays": sorted(plain),
                "shapes": {k: list(a.shape) for k, a in plain.items()},
                "dtypes": {k: a.dtype.str for k, a in plain.items()},
            }
        body: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": _versions(),
            "config": config,
            "components": entries,
        }
        integrity = {"manifest_sha256": hashlib.sha256(_canonical(body)).hexdigest()}
        if key_b is not None:
            integrity["hmac_sha256"] = _hmac(key_b, body)
        text = json.dumps({**body, "integrity": integrity}, indent=2, sort_keys=True, allow_nan=True)
        with open(tmp / MANIFEST, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        _swap_in(tmp, target)
    except ModelFileError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as exc:  # disk full, permissions, ...: nothing at target changed
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelFileError(
            f"{target}: the model could not be written ({exc}); nothing was replaced"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# ---------------------------------------------------------------------- load
def load_bundle(
    path: str | os.PathLike[str], *, kind: str = "engine", key: Key | None = None
) -> tuple[dict[str, Any], dict[str, State]]:
    """Read a model folder written by :func:`save_bundle`, verifying format, version, checksums,
    array headers against the manifest, and with ``key`` the HMAC.

    Raises :class:`ModelFileError` for a missing, tampered, truncated, unsigned (with ``key``)
    or incompatible model. A save to the same path while this reads is either seen whole or
    not at all.
    """
    key_b = _key_bytes(key)
    raw = os.fspath(path)
    if isinstance(raw, bytes) or not raw:
        raise ModelFileError(f"a model is loaded from a folder path; got {raw!r}")
    d = Path(raw)
    for attempt in range(_LOAD_ATTEMPTS):
        try:
            return _load_once(d, kind, key_b)
        except _SwappedError:
            time.sleep(0.002 * (attempt + 1))
    raise ModelFileError(f"{d}: the model kept changing while it was read (concurrent saves); try again")


# Where files cannot be opened relative to a folder handle (Windows), a load reads by path:
# every file is still checked against the manifest read first, so a concurrent save makes the
# load fail cleanly rather than mix two models.
_DIR_FD = os.open in os.supports_dir_fd


def _open_dir(d: Path) -> int:
    """A handle on folder ``d`` (``-1`` where handles are not used, see ``_DIR_FD``)."""
    if not _DIR_FD:
        if not d.is_dir():
            raise ModelFileError(f"{d}: not a driftrank model folder (no such folder)")
        return -1
    try:
        return os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (FileNotFoundError, NotADirectoryError):
        if any(p.name.startswith(f".{d.name}.old-") for p in _siblings(d)):
            raise _SwappedError from None  # between the two renames of a save without exchange
        what = "a file, not a folder" if d.is_file() else "no such folder"
        raise ModelFileError(f"{d}: not a driftrank model folder ({what})") from None
    except OSError as exc:
        raise ModelFileError(f"{d}: cannot open the model folder ({exc})") from None


def _siblings(d: Path) -> list[Path]:
    try:
        return list(d.absolute().parent.iterdir())
    except OSError:
        return []


def _still_there(d: Path, fd: int) -> bool:
    """Whether ``d`` still names the folder open as ``fd``."""
    if fd < 0:
        return True
    try:
        a, b = os.stat(d), os.fstat(fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _read_member(d: Path, fd: int, name: str, limit: int | None = None) -> bytes:
    """All bytes of file ``name`` in the folder open as ``fd``."""
    try:
        flags = os.O_RDONLY | getattr(os, "O_BINARY", 0)
        f = os.open(name, flags, dir_fd=fd) if fd >= 0 else os.open(d / name, flags)
    except FileNotFoundError:
        if not _still_there(d, fd):
            raise _SwappedError from None
        raise ModelFileError(
            f"{d}: not a driftrank model folder (no {MANIFEST})"
            if name == MANIFEST
            else f"{d}: component file {name} is missing"
        ) from None
    except OSError as exc:
        raise ModelFileError(f"{d / name}: cannot open ({exc})") from None
    try:
        st = os.fstat(f)
        if not stat.S_ISREG(st.st_mode):
            raise ModelFileError(f"{d / name}: expected a regular file")
        if limit is not None and st.st_size > limit:
            raise ModelFileError(
                f"{d / name}: {st.st_size} bytes, more than a manifest can be ({limit}); not a driftrank model"
            )
        with os.fdopen(f, "rb", closefd=False) as fh:
            return fh.read()
    finally:
        os.close(f)


def _load_once(d: Path, kind: str, key: bytes | None) -> tuple[dict[str, Any], dict[str, State]]:
    fd = _open_dir(d)
    try:
        mpath = d / MANIFEST
        text = _read_member(d, fd, MANIFEST, _MAX_MANIFEST_BYTES)
        manifest = _parse_manifest(mpath, text, kind)
        body = {k: v for k, v in manifest.items() if k != "integrity"}
        integrity = manifest.get("integrity")
        if integrity is not None:
            if not isinstance(integrity, dict):
                raise ModelFileError(
                    f"{mpath}: 'integrity' must be an object, got {type(integrity).__name__}"
                )
            want = integrity.get("manifest_sha256")
            if want != hashlib.sha256(_canonical(body)).hexdigest():
                if not _still_there(d, fd):
                    raise _SwappedError
                raise ModelFileError(
                    f"{mpath}: the manifest's checksum does not match its content; it was edited or damaged"
                )
        if key is not None:
            mac = integrity.get("hmac_sha256") if isinstance(integrity, dict) else None
            if not isinstance(mac, str):
                raise ModelFileError(
                    f"{mpath}: the model carries no HMAC, but a key was given; it was not saved with a key"
                )
            if not hmac.compare_digest(mac, _hmac(key, body)):
                raise ModelFileError(
                    f"{mpath}: the HMAC does not match the key; the model was written with another key "
                    "or modified since"
                )
        components: dict[str, State] = {}
        for name, entry in manifest["components"].items():
            fname = entry["file"]
            data = _read_member(d, fd, fname)
            got = hashlib.sha256(data).hexdigest()
            if got != entry["sha256"]:
                if not _still_there(d, fd):
                    raise _SwappedError
                raise ModelFileError(
                    f"{d / fname}: checksum mismatch (expected {entry['sha256']}, got {got}); the model was "
                    "modified or damaged"
                )
            arrays = _read_npz(d / fname, data, entry)
            components[name] = (entry["config"], arrays)
        return manifest, components
    finally:
        if fd >= 0:
            os.close(fd)


def _parse_manifest(mpath: Path, text: bytes, kind: str) -> dict[str, Any]:
    """The manifest as a dict, its structure checked (no component left to trip on later)."""
    try:
        manifest = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelFileError(f"{mpath}: unreadable manifest (not UTF-8: {exc})") from None
    except ValueError as exc:
        raise ModelFileError(f"{mpath}: unreadable manifest ({exc})") from None
    except RecursionError:
        raise ModelFileError(f"{mpath}: unreadable manifest (nested too deeply)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ModelFileError(f"{mpath}: format is {got!r}, expected {FORMAT!r}")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ModelFileError(
            f"{mpath}: format version {version!r} is not supported by this driftrank (reads 1..{FORMAT_VERSION}); "
            "upgrade driftrank or re-save the model"
        )
    if manifest.get("kind") != kind:
        raise ModelFileError(f"{mpath}: holds a {manifest.get('kind')!r} model, expected {kind!r}")
    if not isinstance(manifest.get("config", {}), dict):
        raise ModelFileError(f"{mpath}: 'config' must be an object, got {type(manifest['config']).__name__}")
    comps = manifest.get("components", {})
    if not isinstance(comps, dict):
        raise ModelFileError(f"{mpath}: 'components' must be an object, got {type(comps).__name__}")
    for name, entry in comps.items():
        where = f"{mpath}: component {name!r}"
        if not isinstance(entry, dict):
            raise ModelFileError(f"{where} must be an object, got {type(entry).__name__}")
        fname = entry.get("file")
        if not isinstance(fname, str):
            raise ModelFileError(f"{where} names file {fname!r}, expected a string")
        _safe_name(fname)
        if not fname.endswith(".npz"):
            raise ModelFileError(f"{where} names file {fname!r}, expected a .npz file")
        if not isinstance(entry.get("sha256"), str):
            raise ModelFileError(f"{where}: 'sha256' must be a string, got {entry.get('sha256')!r}")
        if not isinstance(entry.get("config", {}), dict):
            raise ModelFileError(f"{where}: 'config' must be an object")
        arrays = entry.get("arrays", [])
        if not isinstance(arrays, list) or not all(isinstance(a, str) for a in arrays):
            raise ModelFileError(f"{where}: 'arrays' must be a list of names")
        for field in ("shapes", "dtypes"):
            if field in entry and (
                not isinstance(entry[field], dict) or sorted(entry[field]) != sorted(arrays)
            ):
                raise ModelFileError(f"{where}: {field!r} must name each of its arrays once")
        entry.setdefault("config", {})
        entry.setdefault("arrays", [])
    manifest.setdefault("config", {})
    manifest.setdefault("components", {})
    return manifest


def _read_npz(f: Path, data: bytes, entry: dict[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of one ``.npz`` file held in ``data``. Every member's header is checked (against
    the manifest's shapes and dtypes when it has them, and against the member's stored size)
    before its array is allocated, so a header claiming 10**12 elements or a compressed member
    inflating to gigabytes is refused without trying."""
    shapes = entry.get("shapes")
    dtypes = entry.get("dtypes")
    out: dict[str, np.ndarray] = {}
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ModelFileError(f"{f}: unreadable arrays ({exc})") from None
    with zf:
        for info in zf.infolist():
            name = info.filename
            key = name[:-4] if name.endswith(".npy") else name
            if not name.endswith(".npy") or key in out:
                raise ModelFileError(f"{f}: unexpected member {name!r}")
            if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
                raise ModelFileError(
                    f"{f}: member {name!r} is compressed ({info.compress_size} bytes claiming {info.file_size}); "
                    "driftrank writes arrays uncompressed"
                )
            try:
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                    elif version == (2, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                    else:
                        raise ModelFileError(
                            f"{f}: member {name!r} has .npy format {version}, expected 1.0 or 2.0"
                        )
                    header_len = fh.tell()
                    if dtype.hasobject:
                        raise ModelFileError(f"{f}: array {key!r} has dtype object, which would need pickle")
                    if shapes is not None and list(shape) != shapes.get(key):
                        raise ModelFileError(
                            f"{f}: array {key!r} has shape {list(shape)}, the manifest says {shapes.get(key)}"
                        )
                    if dtypes is not None and dtype.str != dtypes.get(key):
                        raise ModelFileError(
                            f"{f}: array {key!r} has dtype {dtype.str}, the manifest says {dtypes.get(key)}"
                        )
                    nbytes = math.prod(int(s) for s in shape) * dtype.itemsize
                    if header_len + nbytes != info.file_size:
                        raise ModelFileError(
                            f"{f}: array {key!r} claims shape {list(shape)} ({nbytes} bytes of data), but the "
                            f"member holds {info.file_size - header_len}"
                        )
                    buf = bytearray(nbytes)
                    if nbytes and fh.readinto(buf) != nbytes:  # type: ignore[attr-defined]
                        raise ModelFileError(f"{f}: array {key!r} is truncated")
            except ModelFileError:
                raise
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
                raise ModelFileError(f"{f}: unreadable array {key!r} ({exc})") from None
            arr = np.frombuffer(buf, dtype=dtype) if nbytes else np.empty(0, dtype=dtype)
            out[key] = arr.reshape(shape, order="F" if fortran else "C")
    if sorted(out) != sorted(entry["arrays"]):
        raise ModelFileError(f"{f}: holds arrays {sorted(out)}, the manifest lists {entry['arrays']}")
    return out
