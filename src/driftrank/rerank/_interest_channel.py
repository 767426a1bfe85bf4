"""The interest retrieval channel: nearest items to each user's decayed interest vectors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import numpy as np
import scipy.sparse as sp

from driftrank.data import Dataset
from driftrank.errors import ConfigError, DataError, ModelFileError, NotFittedError
from driftrank.rerank._encoder import SentenceEncoder, TextEncoder
from driftrank.rerank._index import ItemIndex, ItemIndexConfig
from driftrank.rerank._interest import InterestConfig, InterestModel, normalise_rows
from driftrank.types import Ranking, csr_coordinates, csr_take_rows

__all__ = ["InterestChannel", "InterestChannelConfig"]

STATE_VERSION = 1
Combine = Literal["sum", "max"]


def _default_interest() -> InterestConfig:
    # Measured best single setting for retrieval on ml-100k and ml-latest-small (docs/interest.md):
    # the last few items, by position, beat every time scale and every multi-scale mix there.
    return InterestConfig(mode="position", position_half_lives=(2.0,))


@dataclass(frozen=True)
class InterestChannelConfig:
    """Settings of :class:`InterestChannel`.

    Attributes:
        interest: the scales (see :class:`InterestConfig`); default one position scale with
            τ_pos = 2 events, the best candidate recall measured on both MovieLens sets.
        index: the faiss index (see :class:`ItemIndexConfig`).
        combine: how the scales make one candidate list. ``"sum"``: one query, the weighted
            sum of the unit interest vectors of all scales (score = cosine to it). ``"max"``:
            one query per scale, merged by each item's best weighted cosine. ``"sum"``
            matched or beat ``"max"`` in every measured setting (docs/interest.md) and costs
            one search instead of one per scale.
        scale_weights: one non-negative weight per scale (``None`` = equal).
        name: the channel's name (its score column in merged candidates).
    """

    interest: InterestConfig = field(default_factory=_default_interest)
    index: ItemIndexConfig = field(default_factory=ItemIndexConfig)
    combine: Combine = "sum"
    scale_weights: tuple[float, ...] | None = None
    name: str = "interest"

    def __post_init__(self) -> None:
        if not isinstance(self.interest, InterestConfig):
            raise ConfigError(f"interest must be an InterestConfig, got {type(self.interest).__name__}")
        if not isinstance(self.index, ItemIndexConfig):
            raise ConfigError(f"index must be an ItemIndexConfig, got {type(self.index).__name__}")
        if self.combine not in ("sum", "max"):
            raise ConfigError(f"combine must be 'sum' or 'max', got {self.combine!r}")
        if self.scale_weights is not None:
            try:
                w = tuple(float(x) for x in self.scale_weights)
            except (TypeError, ValueError):
                raise ConfigError(f"scale_weights must be numbers, got {self.scale_weights!r}") from None
            if len(w) != self.interest.n_scales:
                raise ConfigError(
                    f"scale_weights needs one weight per scale ({self.interest.n_scales}: "
                    f"{', '.join(self.interest.scale_names)}), got {len(w)}"
                )
            if any(not (x >= 0 and np.isfinite(x)) for x in w) or not any(x > 0 for x in w):
                raise ConfigError(
                    f"scale_weights must be finite, >= 0 and not all 0, got {self.scale_weights!r}"
                )
            object.__setattr__(self, "scale_weights", w)
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"name must be a non-empty string, got {self.name!r}")

    @property
    def weights(self) -> np.ndarray:
        """``float32[n_scales]`` the scale weights in use."""
        if self.scale_weights is None:
            return np.ones(self.interest.n_scales, dtype=np.float32)
        return np.asarray(self.scale_weights, dtype=np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (nested configs as dicts)."""
        return {
            "interest": self.interest.to_dict(),
            "index": self.index.to_dict(),
            "combine": self.combine,
            "scale_weights": None if self.scale_weights is None else list(self.scale_weights),
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InterestChannelConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        if isinstance(d.get("interest"), dict):
            d["interest"] = InterestConfig.from_dict(d["interest"])
        if isinstance(d.get("index"), dict):
            d["index"] = ItemIndexConfig.from_dict(d["index"])
        return cls(**d)


class InterestChannel:
    """A retrieval channel (:class:`driftrank.types.CandidateGenerator`): for each user, the
    items nearest to their time-decayed interest vectors in an :class:`ItemIndex`.

    Item vectors come from ``item_vectors`` when given (``float[n_items, dim]``, rows aligned
    with the data set's item indices) or else from ``encoder`` over ``dataset.item_texts``
    (default: :class:`SentenceEncoder`, the bundled MiniLM with its disk cache). Users without
    any event before the request time get no candidates (-1 rows): the cold-start path belongs
    to other channels.

    Example::

        channel = InterestChannel(encoder=HashingEncoder()).fit(split.train_valid)
        cands = channel.candidates(users, 200, exclude=split.train_valid.seen, at=times)
    """

    def __init__(
        self,
        config: InterestChannelConfig | None = None,
        *,
        encoder: TextEncoder | None = None,
        item_vectors: np.ndarray | None = None,
    ) -> None:
        self.config = config or InterestChannelConfig()
        self.name = self.config.name
        self.encoder = encoder
        self._given_vectors = item_vectors
        self._interest: InterestModel | None = None
        self._index: ItemIndex | None = None

    # .................................................................. parts
    @property
    def interest(self) -> InterestModel:
        """The fitted :class:`InterestModel` (histories and item vectors)."""
        if self._interest is None:
            raise NotFittedError(f"InterestChannel {self.name!r} used before fit")
        return self._interest

    @property
    def index(self) -> ItemIndex:
        """The fitted :class:`ItemIndex`."""
        if self._index is None:
            raise NotFittedError(f"InterestChannel {self.name!r} used before fit")
        return self._index

    # .................................................................. fitting
    def fit(self, dataset: Dataset) -> Self:
        """Embed the items (unless vectors were given), index them, take the histories."""
        if self._given_vectors is not None:
            vecs = np.asarray(self._given_vectors)
            if vecs.ndim != 2 or vecs.shape[0] != dataset.n_items:
                raise DataError(
                    f"item_vectors must be [n_items={dataset.n_items}, dim], got shape {vecs.shape}"
                )
        else:
            if self.encoder is None:
                self.encoder = SentenceEncoder()
            vecs = self.encoder.encode(dataset.item_texts)
        interest = InterestModel(self.config.interest).fit(dataset, vecs)
        self._index = ItemIndex(self.config.index).build(interest.item_vectors)
        self._interest = interest
        return self

    def observe(self, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray) -> Self:
        """Add events online (see :meth:`InterestModel.observe`); later requests see them."""
        self.interest.observe(users, items, timestamps)
        return self

    def extend_items(self, n_new: int, vectors: np.ndarray | Sequence[str]) -> Self:
        """Add ``n_new`` items (indices ``n_items .. n_items + n_new - 1``): ``vectors`` is
        ``float[n_new, dim]`` or the new items' texts (encoded with the channel's encoder)."""
        interest, index = self.interest, self.index
        if not isinstance(n_new, int | np.integer) or n_new < 0:
            raise ConfigError(f"n_new must be a non-negative integer, got {n_new!r}")
        if len(vectors) == 0 and n_new == 0:
            return self
        if len(vectors) and all(isinstance(t, str) for t in vectors):
            if self.encoder is None:
                raise ConfigError("extend_items got texts but the channel has no encoder; pass vectors")
            vecs = self.encoder.encode([str(t) for t in vectors])
        else:
            vecs = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
        if vecs.shape[0] != n_new:
            raise DataError(f"extend_items expected {n_new} new items, got {vecs.shape[0]}")
        interest.extend_items(vecs)
        index.add(vecs)
        return self

    # .................................................................. serving
    def candidates(
        self,
        users: np.ndarray,
        n: int,
        *,
        exclude: sp.csr_matrix | Literal["seen"] | None = None,
        at: np.ndarray | None = None,
    ) -> Ranking:
        """Up to ``n`` items per user in ``users: int[m]``, best first, scored by cosine to
        the combined interest (``float32``); -1 / NaN padding.

        ``exclude`` is the full users × items CSR (row = user index; users past its rows
        exclude nothing), or ``"seen"``: every item the channel knows the user interacted with
        (fitted and observed events), as the retrieval channels accept. ``at: float64[m]`` is
        the request time in unix seconds (``None`` = each user's latest event; only earlier
        events count).
        """
        interest, index = self.interest, self.index
        if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"n must be a positive integer, got {n!r}")
        n = int(n)
        u = np.asarray(users, dtype=np.int64).reshape(-1)
        items = np.full((len(u), n), -1, dtype=np.int64)
        scores = np.full((len(u), n), np.nan, dtype=np.float32)
        if len(u) == 0:
            return Ranking(items, scores)
        q = normalise_rows(interest.vectors(u, at))  # [m, S, d]
        w = self.config.weights
        ex: sp.csr_matrix | tuple[np.ndarray, np.ndarray] | None
        if isinstance(exclude, str):
            if exclude != "seen":
                raise DataError(f"exclude must be a CSR matrix, 'seen' or None, got {exclude!r}")
            ex = interest.seen(u)
        else:
            ex = _exclude_rows(exclude, u)
        if self.config.combine == "sum":
            combined = normalise_rows(np.einsum("s,msd->md", w, q))
            warm = np.flatnonzero(np.linalg.norm(combined, axis=1) > 0)
            if len(warm) == len(u):  # the common case: skip copying every row
                r = index.search(combined, n, ex)
                items, scores = r.items, r.scores
            elif len(warm):
                r = index.search(combined[warm], n, _rows_of(ex, warm))
                items[warm], scores[warm] = r.items, r.scores
            return Ranking(items, scores)
        per_scale_items, per_scale_scores = [], []
        for s in np.flatnonzero(w > 0):
            r_items = np.full((len(u), n), -1, dtype=np.int64)
            r_scores = np.full((len(u), n), np.nan, dtype=np.float32)
            warm = np.flatnonzero(np.linalg.norm(q[:, s], axis=1) > 0)
            if len(warm):
                r = index.search(q[warm, s], n, _rows_of(ex, warm))
                r_items[warm], r_scores[warm] = r.items, r.scores * w[s]
            per_scale_items.append(r_items)
            per_scale_scores.append(r_scores)
        return _merge_max(np.concatenate(per_scale_items, 1), np.concatenate(per_scale_scores, 1), n)

    # .................................................................. persistence
    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(config, arrays)``; arrays ``interest.*`` and ``index.*`` (the item vectors are
        stored once)."""
        ic, ia = self.interest.get_state()
        xc, xa = self.index.get_state()
        config = {
            "format_version": STATE_VERSION,
            "config": self.config.to_dict(),
            "interest": ic,
            "index": xc,
        }
        arrays = {f"interest.{k}": v for k, v in ia.items()}
        arrays.update({f"index.{k}": v for k, v in xa.items() if k != "vectors"})
        return config, arrays

    @classmethod
    def from_state(
        cls, config: dict[str, Any], arrays: dict[str, np.ndarray], *, encoder: TextEncoder | None = None
    ) -> InterestChannel:
        """Rebuild a channel saved by :meth:`get_state`; ``encoder`` (optional) lets
        :meth:`extend_items` take texts."""
        if config.get("format_version") != STATE_VERSION:
            raise ModelFileError(
                f"InterestChannel state version {config.get('format_version')!r} is not supported "
                f"(expected {STATE_VERSION})"
            )
        try:
            out = cls(InterestChannelConfig.from_dict(config["config"]), encoder=encoder)
            ia = {k.removeprefix("interest."): v for k, v in arrays.items() if k.startswith("interest.")}
            xa = {k.removeprefix("index."): v for k, v in arrays.items() if k.startswith("index.")}
            xa["vectors"] = ia["item_vectors"]
            interest_cfg, index_cfg = config["interest"], config["index"]
        except (KeyError, TypeError, ConfigError) as e:
            raise ModelFileError(f"InterestChannel state is incomplete or invalid: {e}") from e
        out._interest = InterestModel.from_state(interest_cfg, ia)
        out._index = ItemIndex.from_state(index_cfg, xa)
        return out

    def __repr__(self) -> str:
        state = "fitted" if self._interest is not None else "not fitted"
        return f"InterestChannel({self.name!r}, {self.config.interest.scale_names}, {self.config.combine!r}, {state})"


def _rows_of(
    ex: sp.csr_matrix | tuple[np.ndarray, np.ndarray] | None, warm: np.ndarray
) -> sp.csr_matrix | tuple[np.ndarray, np.ndarray] | None:
    """The exclusions of the ``warm`` rows; coordinates only come for one user, whose only
    row is then the one searched."""
    if ex is None or isinstance(ex, tuple):
        return ex
    return csr_take_rows(ex, warm)


def _exclude_rows(
    exclude: sp.spmatrix | None, users: np.ndarray
) -> sp.csr_matrix | tuple[np.ndarray, np.ndarray] | None:
    """Rows of ``exclude`` for ``users``; users past its last row get empty rows. For one user
    (a single request), the coordinates of their entries instead: no matrix is built."""
    if exclude is None:
        return None
    if not sp.issparse(exclude):
        raise DataError(f"exclude must be a scipy sparse matrix, got {type(exclude).__name__}")
    if len(users) == 1:
        return csr_coordinates(exclude.tocsr(), users)
    return csr_take_rows(exclude.tocsr(), users)


def _merge_max(items: np.ndarray, scores: np.ndarray, n: int) -> Ranking:
    """Per row: unique items by their best score, top ``n`` by (score desc, item asc)."""
    m, width = items.shape
    rows = np.repeat(np.arange(m, dtype=np.int64), width)
    it = items.ravel()
    sc = scores.ravel().astype(np.float64)
    ok = it >= 0
    rows, it, sc = rows[ok], it[ok], sc[ok]
    out_items = np.full((m, n), -1, dtype=np.int64)
    out_scores = np.full((m, n), np.nan, dtype=np.float32)
    if len(it) == 0:
        return Ranking(out_items, out_scores)
    span = int(it.max()) + 1
    keys = rows * span + it
    order = np.lexsort((-sc, keys))  # by (row, item), best score first
    ks = keys[order]
    first = np.ones(len(ks), dtype=bool)
    first[1:] = ks[1:] != ks[:-1]
    sel = order[first]
    sel = sel[np.lexsort((it[sel], -sc[sel], rows[sel]))]
    r = rows[sel]
    starts = np.searchsorted(r, np.arange(m))
    pos = np.arange(len(sel)) - starts[r]
    take = pos < n
    out_items[r[take], pos[take]] = it[sel][take]
    out_scores[r[take], pos[take]] = sc[sel][take].astype(np.float32)
    return Ranking(out_items, out_scores)
