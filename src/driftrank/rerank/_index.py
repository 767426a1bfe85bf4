"""A faiss inner-product index over item vectors, with per-user exclusions.

Exact search (a BLAS matrix product and a partial sort, in row blocks) for catalogs up to
``exact_max_items``, a faiss HNSW index above that, IVF for the very largest. An approximate
index honours exclusions (items a user has seen) by over-fetching ``k + n_excluded`` results
per query; when it still comes back short, those queries are answered exactly from the stored
vectors, so a search never returns fewer items than the catalog allows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, Self

import numpy as np
import scipy.sparse as sp

from driftrank._linalg import matmul_t
from driftrank.errors import ConfigError, DataError, ModelFileError, NotFittedError
from driftrank.types import Ranking, csr_from_coo, csr_take_rows, topk

__all__ = ["ItemIndex", "ItemIndexConfig"]

IndexKind = Literal["auto", "exact", "hnsw", "ivf"]
STATE_VERSION = 1


@dataclass(frozen=True)
class ItemIndexConfig:
    """Settings of :class:`ItemIndex`.

    Attributes:
        kind: ``"exact"`` (brute force: one matrix product), ``"hnsw"``, ``"ivf"`` or ``"auto"``:
            exact up to ``exact_max_items`` items (a product with 50k × 384 floats is a few ms
            per query batch row, and exact means no recall loss), HNSW up to
            ``hnsw_max_items`` (best recall per query time, no training), IVF beyond (less
            memory and faster to build on millions of items). Chosen once, when built.
        exact_max_items, hnsw_max_items: the ``auto`` thresholds.
        hnsw_m: graph degree (32: faiss' usual choice for 100-1000-d embeddings).
        hnsw_ef_construction: build-time beam (200: a well-connected graph, build once).
        hnsw_ef_search: query-time beam; raised to ``k`` automatically when ``k`` is larger.
        ivf_nlist: number of IVF cells; ``None`` = ``4·√n`` capped at ``n / 39`` (faiss wants
            about 39 training points per centroid).
        ivf_nprobe: cells scanned per query (32 of ``4·√n``: a few percent of the catalog).
        seed: seeds IVF's k-means.
    """

    kind: IndexKind = "auto"
    exact_max_items: int = 50_000
    hnsw_max_items: int = 2_000_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128
    ivf_nlist: int | None = None
    ivf_nprobe: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "exact", "hnsw", "ivf"):
            raise ConfigError(f"kind must be 'auto', 'exact', 'hnsw' or 'ivf', got {self.kind!r}")
        for name in (
            "exact_max_items",
            "hnsw_max_items",
            "hnsw_m",
            "hnsw_ef_construction",
            "hnsw_ef_search",
            "ivf_nprobe",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.ivf_nlist is not None and (not isinstance(self.ivf_nlist, int) or self.ivf_nlist < 1):
            raise ConfigError(f"ivf_nlist must be a positive integer or None, got {self.ivf_nlist!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")

    def resolve(self, n_items: int) -> Literal["exact", "hnsw", "ivf"]:
        """The concrete kind for a catalog of ``n_items``."""
        if self.kind != "auto":
            return self.kind
        if n_items <= self.exact_max_items:
            return "exact"
        return "hnsw" if n_items <= self.hnsw_max_items else "ivf"

    def nlist(self, n_items: int) -> int:
        """IVF cell count for ``n_items`` training vectors."""
        if self.ivf_nlist is not None:
            return max(1, min(self.ivf_nlist, n_items))
        return max(1, min(round(4 * math.sqrt(n_items)), n_items // 39))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ItemIndexConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**d)


class ItemIndex:
    """Nearest items by inner product, for query vectors such as interest vectors.

    Item ``j`` of the index is row ``j`` of the vectors passed to :meth:`build` then
    :meth:`add`, so index positions are item indices.

    Example::

        index = ItemIndex().build(item_vectors)              # float32[n_items, d]
        top = index.search(queries, 100, exclude=seen_rows)  # Ranking, int64/float32[n, 100]
    """

    def __init__(self, config: ItemIndexConfig | None = None) -> None:
        self.config = config or ItemIndexConfig()
        self._vectors: np.ndarray | None = None
        self._index: Any = None
        self._kind: Literal["exact", "hnsw", "ivf"] | None = None

    # .................................................................. properties
    def _require(self) -> np.ndarray:
        if self._vectors is None:
            raise NotFittedError("ItemIndex used before build")
        return self._vectors

    @property
    def kind(self) -> Literal["exact", "hnsw", "ivf"]:
        """The concrete index kind (resolved from ``config.kind`` at build time)."""
        self._require()
        assert self._kind is not None
        return self._kind

    @property
    def n_items(self) -> int:
        """Number of indexed items."""
        return self._require().shape[0]

    @property
    def dim(self) -> int:
        """Vector size."""
        return self._require().shape[1]

    @property
    def vectors(self) -> np.ndarray:
        """``float32[n_items, dim]`` the indexed vectors (read-only view)."""
        v = self._require().view()
        v.setflags(write=False)
        return v

    # .................................................................. building
    def build(self, vectors: np.ndarray) -> Self:
        """Index ``vectors: float[n_items, dim]`` (replacing any previous content)."""
        v = _check_matrix(vectors, "vectors")
        self._kind = self.config.resolve(len(v))
        self._vectors = v.copy()
        self._index = self._new_index(v)
        return self

    def _new_index(self, v: np.ndarray) -> Any:
        n, d = v.shape
        kind = self._kind
        index: Any
        if kind == "exact":
            # A matrix product and a partial sort (search) beat faiss' flat scan here, whose
            # per-query heaps are slow at the few hundred results a candidate list asks for
            # (13 ms against 4 ms for 256 queries over 1.7k items, k = 200-1024).
            return None
        import faiss

        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, self.config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.config.hnsw_ef_construction
        else:
            if n == 0:
                raise DataError("an IVF index needs training vectors; build it with at least one item")
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, self.config.nlist(n), faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = self.config.seed
            index.train(v)
            self._quantizer = quantizer  # keep it alive: the IVF index only borrows it
        if n:
            index.add(v)
        self._configure(index)
        return index

    def _configure(self, index: Any) -> None:
        if self._kind == "hnsw":
            index.hnsw.efSearch = self.config.hnsw_ef_search
        elif self._kind == "ivf":
            index.nprobe = min(self.config.ivf_nprobe, index.nlist)

    def add(self, vectors: np.ndarray) -> Self:
        """Append items (indices ``n_items .. n_items + m - 1``); the kind stays as built."""
        old = self._require()
        v = _check_matrix(vectors, "vectors")
        if v.shape[1] != old.shape[1]:
            raise DataError(f"vectors must be {old.shape[1]}-d like the index, got {v.shape[1]}-d")
        if len(v):
            if self._index is not None:
                self._index.add(v)
            self._vectors = np.concatenate([old, v])
        return self

    # .................................................................. search
    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude: sp.csr_matrix | tuple[np.ndarray, np.ndarray] | None = None,
    ) -> Ranking:
        """Top-``k`` items by inner product for ``queries: float[n, dim]``.

        ``exclude`` (CSR ``[n, >= n_items]``, rows aligned with ``queries``, or the ``(rows,
        cols)`` coordinates of such a matrix's entries) marks items that must not be returned.
        Rows are padded with -1 / NaN when fewer than ``k`` items remain. Equal scores are
        ordered by item index.
        """
        vecs = self._require()
        if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        q = _check_matrix(queries, "queries")
        if q.shape[1] != vecs.shape[1]:
            raise DataError(f"queries must be {vecs.shape[1]}-d like the index, got {q.shape[1]}-d")
        n, n_items = len(q), len(vecs)
        items = np.full((n, k), -1, dtype=np.int64)
        scores = np.full((n, k), np.nan, dtype=np.float32)
        if n == 0 or n_items == 0:
            return Ranking(items, scores)
        if isinstance(exclude, tuple):
            rows_ex, cols_ex = (np.asarray(a, dtype=np.int64) for a in exclude)
            if rows_ex.shape != cols_ex.shape or (
                len(rows_ex) and not 0 <= rows_ex.min() <= rows_ex.max() < n
            ):
                raise DataError(
                    f"exclude coordinates must be two int arrays of one length with rows in [0, {n})"
                )
            keep = (cols_ex >= 0) & (cols_ex < n_items)
            if self._kind == "exact":  # the top-k reads coordinates as they are: no matrix
                return _exact_search(q, vecs, k, (rows_ex[keep], cols_ex[keep]))
            exclude = _coordinates_matrix((rows_ex[keep], cols_ex[keep]), n, n_items)
        excl = _exclusion(exclude, n, n_items)
        if self._kind == "exact":
            return _exact_search(q, vecs, k, excl)
        n_excl = np.diff(excl.indptr) if excl is not None else np.zeros(n, np.int64)
        kk = min(k, n_items)
        want = np.minimum(kk, n_items - n_excl)  # what a perfect search can return per row
        need = np.minimum(n_items, kk + n_excl)  # results to fetch so `want` survive exclusion
        # Group rows by fetch size (powers of two) so one heavy user does not make every query
        # of the batch fetch thousands of results.
        bucket = np.minimum(n_items, 2 ** np.ceil(np.log2(np.maximum(need, 1))).astype(np.int64))
        short = np.zeros(n, dtype=bool)
        for fetch in np.unique(bucket):
            rows = np.flatnonzero(bucket == fetch)
            d, ix = self._faiss_search(q[rows], int(fetch))
            it, sc = _filter(ix, d, rows, excl, n_items)
            got = np.minimum(kk, it.shape[1])
            items[rows, :got] = it[:, :got]
            scores[rows, :got] = sc[:, :got]
            short[rows] = (items[rows, :kk] >= 0).sum(axis=1) < want[rows]
        if short.any():
            # An approximate index missed items it should have found: answer those rows exactly.
            rows = np.flatnonzero(short)
            ex_rows = excl[rows] if excl is not None else None
            r = topk(matmul_t(q[rows], vecs), kk, ex_rows)
            items[rows, :kk], scores[rows, :kk] = r.items, r.scores
        return Ranking(items, scores)

    def _faiss_search(self, q: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        index = self._index
        if self._kind == "hnsw" and fetch > index.hnsw.efSearch:
            index.hnsw.efSearch = fetch  # the beam must hold at least k results
            try:
                return index.search(q, fetch)  # type: ignore[no-any-return]
            finally:
                index.hnsw.efSearch = self.config.hnsw_ef_search
        return index.search(q, fetch)  # type: ignore[no-any-return]

    # .................................................................. persistence
    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(config, arrays)``: the vectors, plus the serialised faiss index (``uint8``) for
        HNSW/IVF so that a loaded index returns exactly what this one returns."""
        import faiss

        vecs = self._require()
        config = {"format_version": STATE_VERSION, "config": self.config.to_dict(), "kind": self.kind}
        arrays = {"vectors": vecs.copy()}
        if self._kind != "exact":
            arrays["faiss_index"] = np.asarray(faiss.serialize_index(self._index), dtype=np.uint8)
        return config, arrays

    @classmethod
    def from_state(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> ItemIndex:
        """Rebuild an index saved by :meth:`get_state` (never unpickles)."""
        import faiss

        if config.get("format_version") != STATE_VERSION:
            raise ModelFileError(
                f"ItemIndex state version {config.get('format_version')!r} is not supported (expected {STATE_VERSION})"
            )
        try:
            out = cls(ItemIndexConfig.from_dict(config["config"]))
            kind = config["kind"]
            vecs = _check_matrix(arrays["vectors"], "vectors")
        except (KeyError, TypeError, ConfigError, DataError) as e:
            raise ModelFileError(f"ItemIndex state is incomplete or invalid: {e}") from e
        if kind not in ("exact", "hnsw", "ivf"):
            raise ModelFileError(f"ItemIndex state has unknown kind {kind!r}")
        out._kind = kind
        out._vectors = vecs.copy()
        if kind == "exact":
            out._index = out._new_index(vecs)
            return out
        if "faiss_index" not in arrays:
            raise ModelFileError(f"ItemIndex state of kind {kind!r} lacks 'faiss_index'")
        try:
            index = faiss.deserialize_index(np.ascontiguousarray(arrays["faiss_index"], dtype=np.uint8))
        except RuntimeError as e:
            raise ModelFileError(f"ItemIndex state holds an unreadable faiss index: {e}") from e
        expected = faiss.IndexHNSWFlat if kind == "hnsw" else faiss.IndexIVFFlat
        if not isinstance(index, expected) or index.ntotal != len(vecs) or index.d != vecs.shape[1]:
            raise ModelFileError(
                f"ItemIndex state mismatch: faiss index {type(index).__name__} with "
                f"{index.ntotal}×{index.d}, vectors {vecs.shape}"
            )
        out._configure(index)
        out._index = index
        return out

    def __repr__(self) -> str:
        if self._vectors is None:
            return f"ItemIndex({self.config.kind!r}, not built)"
        return f"ItemIndex({self.kind!r}, items={self.n_items}, dim={self.dim})"


# ---------------------------------------------------------------------- helpers
def _check_matrix(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[1] < 1:
        raise DataError(f"{what} must be a 2-d array [n, dim], got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number):
        raise DataError(f"{what} must be numeric, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise DataError(f"{what} contains NaN or infinite values")
    return a


def _exclusion(exclude: sp.spmatrix | None, n: int, n_items: int) -> sp.csr_matrix | None:
    if exclude is None:
        return None
    if not sp.issparse(exclude):
        raise DataError(f"exclude must be a scipy sparse matrix, got {type(exclude).__name__}")
    if exclude.shape[0] != n:
        raise DataError(f"exclude must have one row per query ({n}), got {exclude.shape[0]}")
    if (
        exclude.format == "csr"
        and exclude.shape[1] <= n_items
        and exclude.has_canonical_format
        and bool(np.all(exclude.data[: exclude.nnz] != 0))
    ):
        return exclude  # already what the steps below make (the common case: skip the copy)
    ex = sp.csr_matrix(exclude, copy=True)  # canonicalised below: never touch the caller's matrix
    ex.eliminate_zeros()
    if ex.shape[1] > n_items:  # columns past the catalog can never be returned anyway
        ex = ex[:, :n_items]
    ex.sum_duplicates()
    ex.sort_indices()
    return ex.tocsr()


# Rows of scores an exact search holds at once (float32): 4 MB, cache-sized blocks.
_EXACT_BLOCK = 1 << 20


def _coordinates_matrix(coords: tuple[np.ndarray, np.ndarray], n: int, n_items: int) -> sp.csr_matrix:
    """The binary CSR ``[n, n_items]`` whose entries are at ``coords = (rows, cols)``."""
    rows, cols = coords
    return csr_from_coo(np.ones(len(rows), np.float32), rows, cols, (n, n_items))


def _exact_search(
    q: np.ndarray, vecs: np.ndarray, k: int, excl: sp.csr_matrix | tuple[np.ndarray, np.ndarray] | None
) -> Ranking:
    """Top-``k`` by inner product over every item, a block of query rows at a time
    (``excl``: a CSR matrix, or coordinates of its entries for a single block)."""
    n, n_items = len(q), len(vecs)
    step = max(1, _EXACT_BLOCK // max(1, n_items))
    if n <= step:
        return topk(matmul_t(q, vecs), k, excl)
    if isinstance(excl, tuple):
        excl = _coordinates_matrix(excl, n, n_items)
    parts = [
        topk(matmul_t(q[lo : lo + step], vecs), k, excl[lo : lo + step] if excl is not None else None)
        for lo in range(0, n, step)
    ]
    return Ranking(np.concatenate([p.items for p in parts]), np.concatenate([p.scores for p in parts]))


def _filter(
    ix: np.ndarray, d: np.ndarray, rows: np.ndarray, excl: sp.csr_matrix | None, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """Drop padding and excluded items from faiss results, order by (-score, item)."""
    ix = ix.astype(np.int64)
    bad = ix < 0
    if excl is not None and excl.nnz:
        # ``rows`` are sorted distinct row numbers: all of them means ``excl`` itself
        sub = excl if len(rows) == excl.shape[0] else csr_take_rows(excl, rows)
        keys = np.repeat(np.arange(len(rows), dtype=np.int64), np.diff(sub.indptr)) * n_items + sub.indices
        keys.sort()
        cand = np.arange(len(rows), dtype=np.int64)[:, None] * n_items + np.where(bad, 0, ix)
        pos = np.minimum(np.searchsorted(keys, cand), max(len(keys) - 1, 0))
        bad |= (keys[pos] == cand) if len(keys) else False
    s = np.where(bad, -np.inf, d.astype(np.float64))
    it = np.where(bad, np.iinfo(np.int64).max, ix)
    order = _row_lexsort(-s, it)
    it = np.take_along_axis(it, order, axis=1)
    s = np.take_along_axis(s, order, axis=1)
    invalid = ~np.isfinite(s)
    it[invalid] = -1
    out_s = s.astype(np.float32)
    out_s[invalid] = np.nan
    return it, out_s


def _row_lexsort(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """Per-row argsort by ``primary`` then ``secondary`` (both ascending)."""
    order = np.argsort(secondary, axis=1, kind="stable")
    p = np.take_along_axis(primary, order, axis=1)
    return np.take_along_axis(order, np.argsort(p, axis=1, kind="stable"), axis=1)
