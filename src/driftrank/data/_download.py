"""Locating data sets on disk and downloading them (with a checksum check) when online."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from driftrank.errors import DataError, DataNotFoundError

log = logging.getLogger(__name__)

ENV_DATA_HOME = "DRIFTRANK_DATA_HOME"
ENV_CACHE = "DRIFTRANK_CACHE"


@dataclass(frozen=True)
class Remote:
    """Where a data set's official archive lives and how to check it (``algorithm:hexdigest``)."""

    url: str
    checksum: str
    folder: str  # folder inside the archive that holds the files


# GroupLens publishes an MD5 next to the older archives; SHA-256 where it was recorded by us.
REMOTES: dict[str, Remote] = {
    "ml-100k": Remote(
        "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        "md5:0e33842e24a9c977be4e0107933c0723",
        "ml-100k",
    ),
    "ml-1m": Remote(
        "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        "md5:c4d9eecfca2ab87c1945afe126590906",
        "ml-1m",
    ),
    "ml-latest-small": Remote(
        "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip",
        "sha256:696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
        "ml-latest-small",
    ),
}


# Written into a downloaded folder: size and SHA-256 of every file unpacked from the archive
# that passed its checksum, so that a later load can tell the files are still those.
CHECKED = ".driftrank-checked.json"

# Sizes in bytes of files of the official GroupLens releases, to check data placed in the cache
# by hand (no record of a download): a truncated or edited copy is refused, not loaded partially.
RELEASE_SIZES: dict[str, dict[str, int]] = {
    "ml-100k": {"u.data": 1979173},
    "ml-1m": {"ratings.dat": 24594131},
    "ml-latest-small": {
        "ratings.csv": 2483723,
        "movies.csv": 494431,
        "tags.csv": 118660,
        "links.csv": 197979,
    },
}


def cache_dir() -> Path:
    """``$DRIFTRANK_CACHE``, else ``$XDG_CACHE_HOME/driftrank``, else ``~/.cache/driftrank``."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "driftrank"


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path: Path, checksum: str) -> None:
    """Raise :class:`DataError` unless ``path`` matches ``algorithm:hexdigest``."""
    algorithm, _, expected = checksum.partition(":")
    got = file_digest(path, algorithm)
    if got != expected:
        raise DataError(f"{path}: {algorithm} checksum mismatch, expected {expected}, got {got}")


def download(name: str, dest_root: Path, *, timeout: float = 60.0) -> Path:
    """Download and unpack ``name`` into ``dest_root/name``; returns that folder.

    The archive is checked against its recorded checksum before anything is unpacked, and
    unpacked into a temporary folder that is renamed into place, so a failed download never
    leaves a half data set behind.
    """
    remote = REMOTES[name]
    dest_root.mkdir(parents=True, exist_ok=True)
    target = dest_root / name
    with tempfile.TemporaryDirectory(dir=dest_root, prefix=f".{name}-") as tmp:
        archive = Path(tmp) / "archive.zip"
        log.info("downloading %s from %s", name, remote.url)
        with urllib.request.urlopen(remote.url, timeout=timeout) as resp, open(archive, "wb") as out:
            shutil.copyfileobj(resp, out)
        verify_checksum(archive, remote.checksum)
        log.info("%s sha256 %s", name, file_digest(archive, "sha256"))
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        unpacked = Path(tmp) / remote.folder
        _record_files(unpacked)
        if target.exists():
            shutil.rmtree(target)
        os.replace(unpacked, target)
    return target


def _record_files(folder: Path) -> None:
    import json

    files = {
        p.name: {"size": p.stat().st_size, "sha256": file_digest(p, "sha256")}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != CHECKED
    }
    (folder / CHECKED).write_text(json.dumps(files, indent=2, sort_keys=True), encoding="utf-8")


def check_files(name: str, folder: Path, *, in_cache: bool) -> None:
    """Raise :class:`DataError` if ``folder``'s files are not those that were checked.

    A folder written by :func:`download` is checked against its record (size and SHA-256 of
    every file). A folder in the cache without a record (placed there by hand) is checked
    against the known sizes of the official release's files. Anywhere else, files without a
    record are the user's own and are only validated row by row as they are read."""
    import json

    record = folder / CHECKED
    if record.is_file():
        try:
            files = json.loads(record.read_text(encoding="utf-8"))
            expected = {str(k): (int(v["size"]), str(v["sha256"])) for k, v in files.items()}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise DataError(f"{record}: unreadable record of the downloaded files ({exc})") from None
        for fname, (size, digest) in expected.items():
            f = folder / fname
            if not f.is_file():
                raise DataError(
                    f"{f}: missing from the downloaded {name}; delete {folder} to download it again"
                )
            if f.stat().st_size != size or file_digest(f, "sha256") != digest:
                raise DataError(
                    f"{f}: changed since it was downloaded and checked ({f.stat().st_size} bytes, expected "
                    f"{size}, or other content); delete {folder} to download it again"
                )
        return
    if not in_cache:
        return
    for fname, size in RELEASE_SIZES.get(name, {}).items():
        f = folder / fname
        if f.is_file() and f.stat().st_size != size:
            raise DataError(
                f"{f}: {f.stat().st_size} bytes, but the official {name} file has {size}; it is truncated or "
                f"not the official release. Delete {folder} to download it again, or pass data_home= for your own copy"
            )


def resolve(
    name: str,
    path: str | os.PathLike[str] | None,
    has_files: Callable[[Path], bool],
    *,
    download_ok: bool = True,
) -> Path:
    """Find the folder of data set ``name``.

    Order: the explicit ``path`` (the folder itself or its parent), then
    ``$DRIFTRANK_DATA_HOME/<name>``, then the cache folder, then (online) the official download.
    """
    tried: list[str] = []
    candidates: list[Path] = []
    if path is not None:
        p = Path(path)
        candidates += [p, p / name]
    elif os.environ.get(ENV_DATA_HOME):
        candidates.append(Path(os.environ[ENV_DATA_HOME]) / name)
    candidates.append(cache_dir() / name)
    cached = cache_dir() / name
    for c in candidates:
        tried.append(str(c))
        if c.is_dir() and has_files(c):
            check_files(name, c, in_cache=c == cached)
            return c
    if path is not None:
        raise DataNotFoundError(f"data set {name!r}: no {name} files in {path} (looked in {tried})")
    if download_ok and name in REMOTES:
        try:
            return download(name, cache_dir())
        except (OSError, urllib.error.URLError) as exc:
            tried.append(f"{REMOTES[name].url} ({exc})")
    raise DataNotFoundError(
        f"data set {name!r} not found; looked in {tried}. Pass data_home=PATH (--data-home PATH on the "
        f"command line), set "
        f"${ENV_DATA_HOME} to a folder holding {name}/, put it in the cache {cache_dir()}, "
        "or go online so it can be downloaded"
    )
