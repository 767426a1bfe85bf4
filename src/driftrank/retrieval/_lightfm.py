"""LightFM (WARP) as a hybrid retrieval channel: item and user features beside the ids."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
import scipy.sparse as sp

from driftrank.data import Dataset
from driftrank.errors import ConfigError
from driftrank.retrieval._common import check_int, check_name, check_nonnegative, check_positive
from driftrank.retrieval._factors import FactorChannel

__all__ = ["LightFMChannel", "LightFMConfig", "item_feature_matrix", "user_feature_matrix"]

ItemFeature = Literal["genres", "year", "tags"]
_ITEM_FEATURES = ("genres", "year", "tags")


@dataclass(frozen=True)
class LightFMConfig:
    """Settings of :class:`LightFMChannel` (defaults chosen on the ml-100k validation split).

    Attributes:
        factors: embedding size (``no_components``).
        loss: LightFM's loss; ``"warp"`` optimises the top of the ranking.
        learning_rate, epochs, max_sampled: WARP's SGD settings (adagrad schedule).
        item_alpha, user_alpha: L2 penalties on the feature embeddings.
        item_features: which item metadata become features beside the item id: ``"genres"``,
            ``"year"`` (by decade), ``"tags"`` (the ``max_tags`` most frequent tags used by at
            least ``min_tag_items`` items).
        feature_weight: total weight of an item's (or user's) metadata features relative to its
            id feature (weight 1) before each row is scaled to sum 1; below 1 keeps the id
            embedding dominant for items with much interaction data.
        user_features: user columns used as features where the data has them (numbers are
            bucketed into quintiles, anything else is one feature per value).
        fold_in_regularization, fold_in_alpha: the least squares that turns a history into a
            user vector over the item representations ``[embedding, bias]``.
        half_life_days: recency decay of the WARP sample weights and of the fold-in weights
            (age relative to the user's newest event); ``None`` = every event weighs 1.
        user_vectors: ``"trained"`` (default) serves training users LightFM's own
            representation (id + user features) and calibrates fold-ins onto that space for new
            users and online updates (see :class:`~driftrank.retrieval.FactorChannel`);
            ``"fold_in"`` serves every user the plain least-squares fit of their history (worse
            on validation: NDCG@10 0.057 vs 0.083).
        num_threads: SGD threads; only 1 is reproducible.
        random_state: seed of the initialisation and sampling.
        name: the channel's name.
    """

    factors: int = 64
    loss: Literal["warp", "bpr", "warp-kos"] = "warp"
    learning_rate: float = 0.05
    epochs: int = 30
    max_sampled: int = 10
    item_alpha: float = 0.0
    user_alpha: float = 0.0
    item_features: tuple[ItemFeature, ...] = ("genres", "year", "tags")
    max_tags: int = 500
    min_tag_items: int = 5
    feature_weight: float = 0.25
    user_features: tuple[str, ...] = ("age", "gender", "occupation")
    fold_in_regularization: float = 10.0
    fold_in_alpha: float = 30.0
    half_life_days: float | None = 1.0
    user_vectors: Literal["fold_in", "trained"] = "trained"
    num_threads: int = 1
    random_state: int = 0
    name: str = "lightfm"

    def __post_init__(self) -> None:
        check_int("factors", self.factors)
        if self.loss not in ("warp", "bpr", "warp-kos"):
            raise ConfigError(f"loss must be 'warp', 'bpr' or 'warp-kos', got {self.loss!r}")
        check_positive("learning_rate", self.learning_rate)
        check_int("epochs", self.epochs)
        check_int("max_sampled", self.max_sampled)
        check_nonnegative("item_alpha", self.item_alpha)
        check_nonnegative("user_alpha", self.user_alpha)
        if not isinstance(self.item_features, tuple) or any(
            f not in _ITEM_FEATURES for f in self.item_features
        ):
            raise ConfigError(
                f"item_features must be a tuple of {_ITEM_FEATURES}, got {self.item_features!r}"
            )
        check_int("max_tags", self.max_tags, lo=0)
        check_int("min_tag_items", self.min_tag_items)
        check_positive("feature_weight", self.feature_weight)
        if not isinstance(self.user_features, tuple) or not all(
            isinstance(c, str) for c in self.user_features
        ):
            raise ConfigError(f"user_features must be a tuple of column names, got {self.user_features!r}")
        check_positive("fold_in_regularization", self.fold_in_regularization)
        check_nonnegative("fold_in_alpha", self.fold_in_alpha)
        check_positive("half_life_days", self.half_life_days, allow_none=True)
        if self.user_vectors not in ("fold_in", "trained"):
            raise ConfigError(f"user_vectors must be 'fold_in' or 'trained', got {self.user_vectors!r}")
        if self.loss == "warp-kos" and self.half_life_days is not None:
            raise ConfigError("loss 'warp-kos' takes no sample weights: set half_life_days=None")
        check_int("num_threads", self.num_threads)
        check_int("random_state", self.random_state, lo=0)
        check_name(self.name)


def _normalise_rows(m: sp.csr_matrix, n_ids: int, feature_weight: float) -> sp.csr_matrix:
    """Scale the metadata part of each row to sum ``feature_weight``, then the row to sum 1."""
    m = sp.csr_matrix(m, dtype=np.float64)
    ids, meta = m[:, :n_ids], m[:, n_ids:]
    meta_sum = np.asarray(meta.sum(axis=1)).ravel()
    meta_sum[meta_sum == 0] = 1.0
    meta = sp.diags(feature_weight / meta_sum) @ meta
    out = sp.hstack([ids, meta]).tocsr()
    sums = np.asarray(out.sum(axis=1)).ravel()
    sums[sums == 0] = 1.0
    return sp.csr_matrix(sp.diags(1.0 / sums) @ out, dtype=np.float32)


def item_feature_matrix(
    dataset: Dataset,
    use: tuple[str, ...] = _ITEM_FEATURES,
    max_tags: int = 500,
    min_tag_items: int = 5,
    feature_weight: float = 1.0,
) -> tuple[sp.csr_matrix, list[str]]:
    """``float32[n_items, n_features]`` CSR (rows sum to 1) of item id + metadata, and the names.

    Column ``i`` (for ``i < n_items``) is item ``i``'s own id; then ``genre:<g>``,
    ``decade:<1990>``, ``tag:<t>`` as selected by ``use``.
    """
    n = dataset.n_items
    names = [f"item:{i}" for i in range(n)]
    rows: list[int] = list(range(n))
    cols: list[int] = list(range(n))
    index: dict[str, int] = {}

    def add(item: int, name: str) -> None:
        j = index.get(name)
        if j is None:
            j = index[name] = len(names)
            names.append(name)
        rows.append(item)
        cols.append(j)

    items = dataset.items
    if "genres" in use:
        for i, gs in enumerate(items["genres"].to_list()):
            for g in sorted(set(gs or [])):
                add(i, f"genre:{g}")
    if "year" in use:
        for i, y in enumerate(items["year"].to_list()):
            if y is not None:
                add(i, f"decade:{int(y) // 10 * 10}")
    if "tags" in use and max_tags > 0:
        tag_lists = [sorted({t.lower() for t in (ts or [])}) for ts in items["tags"].to_list()]
        counts = Counter(t for ts in tag_lists for t in ts)
        keep = {
            t
            for t, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_tags]
            if c >= min_tag_items
        }
        for i, ts in enumerate(tag_lists):
            for t in ts:
                if t in keep:
                    add(i, f"tag:{t}")
    m = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n, len(names)), dtype=np.float32
    )
    return _normalise_rows(m, n, feature_weight), names


def user_feature_matrix(
    dataset: Dataset, columns: tuple[str, ...], feature_weight: float = 1.0
) -> tuple[sp.csr_matrix, list[str]]:
    """``float32[n_users, n_features]`` CSR (rows sum to 1) of user id + the ``columns`` present.

    Numeric columns are cut into quintiles (``age:q2``); other columns give one feature per
    value (``gender:F``). Missing values give no feature.
    """
    n = dataset.n_users
    names = [f"user:{u}" for u in range(n)]
    rows: list[int] = list(range(n))
    cols: list[int] = list(range(n))
    frame = dataset.users
    if frame is not None:
        for col in columns:
            if col not in frame.columns:
                continue
            series = frame[col]
            if series.dtype.is_numeric():
                vals = series.cast(pl.Float64).to_numpy()
                ok = np.isfinite(vals)
                if not ok.any():
                    continue
                edges = np.unique(np.quantile(vals[ok], [0.2, 0.4, 0.6, 0.8]))
                labels = [
                    f"{col}:q{int(b)}" if o else None
                    for b, o in zip(np.searchsorted(edges, vals, side="right"), ok)
                ]
            else:
                labels = [None if v is None else f"{col}:{v}" for v in series.cast(pl.String).to_list()]
            index: dict[str, int] = {}
            for u, lab in enumerate(labels):
                if lab is None:
                    continue
                j = index.get(lab)
                if j is None:
                    j = index[lab] = len(names)
                    names.append(lab)
                rows.append(u)
                cols.append(j)
    m = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n, len(names)), dtype=np.float32
    )
    return _normalise_rows(m, n, feature_weight), names


class LightFMChannel(FactorChannel):
    """LightFM (Kula 2015) with WARP loss: ids plus item metadata and user features.

    Item vectors are LightFM's item representations with the item bias appended
    (``[Σ feature embeddings, Σ feature biases]``) and training users' vectors its user
    representations with a 1 appended, so ``user · item`` reproduces LightFM's ranking (the
    user bias, constant per user, is left out). New users and online updates go through the
    calibrated fold-in.
    """

    config_type = LightFMConfig
    config: LightFMConfig

    def __init__(self, config: LightFMConfig | None = None) -> None:
        super().__init__(config or LightFMConfig())

    def _fold_params(self) -> tuple[float, float]:
        return self.config.fold_in_regularization, self.config.fold_in_alpha

    def _train(self, dataset: Dataset, weights: np.ndarray) -> np.ndarray:
        from lightfm import LightFM

        cfg = self.config
        ifeat, inames = item_feature_matrix(
            dataset, cfg.item_features, cfg.max_tags, cfg.min_tag_items, cfg.feature_weight
        )
        ufeat, unames = user_feature_matrix(dataset, cfg.user_features, cfg.feature_weight)
        w = sp.coo_matrix(
            (np.asarray(weights, dtype=np.float64), (dataset.user_index, dataset.item_index)),
            shape=(dataset.n_users, dataset.n_items),
        ).tocsr()
        w.sum_duplicates()
        w = w.tocoo()
        inter = sp.coo_matrix((np.ones(w.nnz, dtype=np.float32), (w.row, w.col)), shape=w.shape)
        sample_weight = None
        if cfg.half_life_days is not None and w.nnz:
            # Mean weight 1 keeps the effective learning rate of the unweighted model.
            sw = w.data / w.data.mean()
            sample_weight = sp.coo_matrix((sw.astype(np.float32), (w.row, w.col)), shape=w.shape)
        model = LightFM(
            no_components=cfg.factors,
            loss=cfg.loss,
            learning_rate=cfg.learning_rate,
            item_alpha=cfg.item_alpha,
            user_alpha=cfg.user_alpha,
            max_sampled=cfg.max_sampled,
            random_state=np.random.RandomState(cfg.random_state),
        )
        model.fit(
            inter,
            user_features=ufeat,
            item_features=ifeat,
            sample_weight=sample_weight,
            epochs=cfg.epochs,
            num_threads=cfg.num_threads,
        )
        self.lightfm_model_ = model
        self.item_feature_names_ = inames
        self.user_feature_names_ = unames
        ib, ie = model.get_item_representations(ifeat)
        if cfg.user_vectors == "trained":
            _, ue = model.get_user_representations(ufeat)
            self._trained_users = np.hstack([ue, np.ones((ue.shape[0], 1), np.float32)]).astype(np.float32)
        return np.hstack([ie, ib[:, None]]).astype(np.float32)
