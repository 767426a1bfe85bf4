"""SASRec, the self-attentive sequential recommender (Kang & McAuley, ICDM 2018), as a Ranker.

A causal transformer over item-ID embeddings, trained with the full-softmax next-item loss at
every position (the "SASRec+ / cross-entropy" variant, which is stronger than the paper's one
sampled negative), ranking the whole catalog. It is the strong sequential baseline next to
which the re-ranker is measured; it shares the transformer blocks and the training loop with
:class:`~driftrank.rerank.SequenceReranker`. Torch is imported inside the methods.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import scipy.sparse as sp

from driftrank.data import Dataset
from driftrank.errors import ConfigError, DataError, ModelFileError
from driftrank.eval import Targets
from driftrank.rerank._seqdata import (
    FittedSequenceModel,
    Histories,
    carve_last,
    check_at,
    check_k,
    check_users,
    exclude_rows,
    history_pairs,
    training_windows,
)
from driftrank.types import Ranking, topk

if TYPE_CHECKING:
    from driftrank.rerank._seqnets import SASRecNet

__all__ = ["SASRec", "SASRecConfig"]

FORMAT = "driftrank.SASRec/1"


@dataclass(frozen=True)
class SASRecConfig:
    """Settings of :class:`SASRec` (validated on construction).

    dim, n_layers, n_heads, max_len, dropout: the paper's architecture (64-d, 2 blocks, one
    head; max length 50 and dropout 0.2 as for MovieLens-1M). lr, weight_decay, batch_size:
    Adam. max_epochs, patience, eval_every, early_stopping: stop when validation NDCG@10 has
    not improved for ``patience`` evaluations and keep the best weights. stride: ``None``
    trains on each user's latest ``max_len + 1`` events as in the paper; an integer also adds
    windows ending every ``stride`` events earlier (the default 50 makes every event a target
    once; with batch 32 and lr 3e-3 it reached the paper-style setting's validation NDCG@10 in
    16 epochs instead of 34, see ``docs/reranker.md``). mask_history: leave each position's earlier
    items out of its softmax (not in the paper; off by default, offered to the tuning grid so
    the baseline gets the re-ranker's trick too). average_checkpoints: keep the mean weights
    of the last this many evaluated epochs instead of the best epoch's (not in the paper; off
    by default, the re-ranker's default is measured on the baseline too). seed: all randomness.
    progress: tqdm bars.
    """

    dim: int = 64
    n_layers: int = 2
    n_heads: int = 1
    max_len: int = 50
    dropout: float = 0.2
    lr: float = 3e-3
    weight_decay: float = 0.0
    batch_size: int = 32
    max_epochs: int = 100
    patience: int = 5
    eval_every: int = 1
    early_stopping: bool = True
    stride: int | None = 50
    mask_history: bool = False
    average_checkpoints: int = 1
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        for name in (
            "dim",
            "n_layers",
            "n_heads",
            "max_len",
            "batch_size",
            "max_epochs",
            "patience",
            "eval_every",
            "average_checkpoints",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.dim % self.n_heads:
            raise ConfigError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.stride is not None and (isinstance(self.stride, bool) or self.stride <= 0):
            raise ConfigError(f"stride must be a positive integer or None, got {self.stride!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SASRecConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError`."""
        extra = sorted(set(d) - {f.name for f in fields(cls)})
        if extra:
            raise ConfigError(f"unknown SASRecConfig keys: {extra}")
        return cls(**d)


class SASRec(FittedSequenceModel["SASRecNet"]):
    """The SASRec baseline as a :class:`~driftrank.types.Ranker` (pipeline ``sasrec``).

    ``fit(dataset)`` trains on the users' sequences, early-stopping on validation NDCG@10
    (given targets, or each user's last event held out); ``rank`` scores the whole catalog from
    each user's latest ``max_len`` events at or before ``at``. Users without history get the
    most popular items.
    """

    _display_name = "SASRec"

    def __init__(self, config: SASRecConfig | None = None) -> None:
        self.config = config or SASRecConfig()
        super().__init__()

    @property
    def n_items(self) -> int:
        """Catalog size of the fitted model."""
        return int(self._net().item.num_embeddings)

    def fit(self, dataset: Dataset, *, validation: Targets | None = None) -> Self:
        """Train on ``dataset``; returns ``self``.

        With ``validation`` targets, train on all of ``dataset`` and early-stop on them; without
        (and ``early_stopping``), hold out each user's last event (users with ≥ 3 events) for
        that. The histories kept for ranking are all of ``dataset``.
        """
        import torch
        import torch.nn.functional as nnf

        from driftrank.rerank._seqnets import SASRecNet
        from driftrank.rerank._train import FitReport, ndcg_at_10, seeded, train_loop

        cfg = self.config
        if dataset.n_interactions == 0:
            raise DataError(f"cannot fit SASRec on {dataset.name!r}: it has no interactions")
        start = time.perf_counter()
        if validation is not None:
            train_ds = dataset
        elif cfg.early_stopping:
            train_ds, validation = carve_last(dataset)
        else:
            train_ds = dataset
        train_h = Histories.from_dataset(train_ds)
        w_items, _, _ = training_windows(train_h, cfg.max_len, cfg.stride)
        if len(w_items) == 0:
            raise DataError(f"cannot fit SASRec on {dataset.name!r}: no user has two or more training events")
        rng = np.random.default_rng(cfg.seed)
        n_items = dataset.n_items

        with seeded(cfg.seed):
            net = SASRecNet(
                n_items,
                dim=cfg.dim,
                n_layers=cfg.n_layers,
                heads=cfg.n_heads,
                dropout=cfg.dropout,
                max_len=cfg.max_len,
            )

            def batches(epoch: int) -> Any:
                order = rng.permutation(len(w_items))
                for s in range(0, len(order), cfg.batch_size):
                    w = w_items[order[s : s + cfg.batch_size]]
                    pairs = history_pairs(w[:, :-1], w[:, 1:]) if cfg.mask_history else None
                    yield torch.from_numpy(w), pairs

            def step(batch: tuple[torch.Tensor, tuple[np.ndarray, np.ndarray] | None]) -> torch.Tensor:
                w, pairs = batch
                inp, tgt = w[:, :-1], w[:, 1:]
                valid = inp >= 0
                logits = net.logits(net(inp)[valid])
                if pairs is not None and len(pairs[0]):
                    idx = (torch.from_numpy(pairs[0]), torch.from_numpy(pairs[1]))
                    logits.index_put_(idx, torch.tensor(float("-inf")))
                return nnf.cross_entropy(logits, tgt[valid])

            validate = None
            if validation is not None and len(validation):
                val = validation
                seen = train_h.seen(n_items)

                def validate() -> float:
                    ranked = _rank(net, train_h, val.users, 10, seen[val.users], val.timestamps)
                    return ndcg_at_10(ranked.items, val)

            loop = train_loop(
                net,
                epochs=cfg.max_epochs,
                lr=cfg.lr,
                weight_decay=cfg.weight_decay,
                batches=batches,
                step=step,
                validate=validate,
                patience=cfg.patience,
                eval_every=cfg.eval_every,
                progress=cfg.progress,
                desc="sasrec",
                average=cfg.average_checkpoints,
            )
        self.net_ = net
        self.histories_ = Histories.from_dataset(dataset)
        self.fit_report_ = FitReport.of(loop, time.perf_counter() - start)
        return self

    def rank(
        self,
        users: np.ndarray,
        k: int,
        *,
        exclude: sp.csr_matrix | None = None,
        at: np.ndarray | None = None,
    ) -> Ranking:
        """Top-``k`` items of the catalog for ``users: int[n]`` from their history at ``at``."""
        k = check_k(k)
        users = check_users(users)
        at = check_at(at, len(users))
        net = self._net()
        return _rank(net, self._histories(), users, k, exclude_rows(exclude, users, self.n_items), at)

    def observe(self, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray) -> Self:
        """Append events ``(users[j], items[j], timestamps[j])`` to the stored histories."""
        users_a = check_users(users)
        items_a = np.asarray(items)
        times_a = np.asarray(timestamps, dtype=np.float64)
        if items_a.shape != users_a.shape or times_a.shape != users_a.shape:
            raise DataError(
                f"users, items and timestamps must have one length, got {users_a.shape}, "
                f"{items_a.shape} and {times_a.shape}"
            )
        if items_a.size and (
            items_a.dtype.kind not in "iu" or items_a.min() < 0 or items_a.max() >= self.n_items
        ):
            raise DataError(f"items must be integer indices in [0, {self.n_items})")
        if not np.isfinite(times_a).all():
            raise DataError("timestamps must be finite unix seconds")
        self.histories_ = self._histories().append(users_a, items_a.astype(np.int64), times_a)
        return self

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(config, arrays)``: settings plus ``net.<name>`` weights and ``history.*`` arrays."""
        from driftrank.rerank._train import net_arrays

        arrays = net_arrays(self._net()) | self._histories().to_arrays()
        report = None if self.fit_report_ is None else self.fit_report_.to_dict()
        return {"format": FORMAT, "config": self.config.to_dict(), "fit_report": report}, arrays

    @classmethod
    def from_state(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> SASRec:
        """Rebuild a fitted model from :meth:`get_state` output (:class:`ModelFileError` if invalid)."""
        from driftrank.rerank._seqnets import SASRecNet
        from driftrank.rerank._train import load_net_arrays

        if config.get("format") != FORMAT:
            raise ModelFileError(f"not a {FORMAT} state (format {config.get('format')!r})")
        cfg = SASRecConfig.from_dict(config["config"])
        try:
            n_items = int(np.asarray(arrays["net.item.weight"]).shape[0])
            net = SASRecNet(
                n_items,
                dim=cfg.dim,
                n_layers=cfg.n_layers,
                heads=cfg.n_heads,
                dropout=cfg.dropout,
                max_len=cfg.max_len,
            )
            load_net_arrays(net, arrays)
            histories = Histories.from_arrays(arrays)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise ModelFileError(f"SASRec state is incomplete or inconsistent: {exc}") from None
        net.eval()
        model = cls(cfg)
        model._restore(net, histories, config.get("fit_report"))
        return model


def _rank(
    net: SASRecNet,
    histories: Histories,
    users: np.ndarray,
    k: int,
    rows: sp.csr_matrix | None,
    at: np.ndarray | None,
) -> Ranking:
    """Full-catalog top-``k`` (``rows``: exclusions aligned with ``users``)."""
    import torch

    windows = histories.windows(users, at, net.max_len)
    n_items = int(net.item.num_embeddings)
    scores = np.empty((len(users), n_items), dtype=np.float32)
    with torch.inference_mode():
        for s in range(0, len(users), 512):
            items = torch.from_numpy(windows.items[s : s + 512])
            states = net(items)[:, -1]
            scores[s : s + 512] = net.logits(states).numpy()
    cold = windows.lengths == 0
    if cold.any():
        scores[cold] = histories.popularity(n_items)
    return topk(scores, k, rows)
