"""The trainable sequence re-ranker: :class:`SequenceReranker` and :class:`SequenceRerankerConfig`.

The torch network lives in :mod:`driftrank.rerank._seqnets` and is imported inside the methods
that need it, so importing this module (and ``driftrank.rerank``) does not load torch.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Literal, Self

import numpy as np
import scipy.sparse as sp

from driftrank.data import Dataset
from driftrank.errors import ConfigError, DataError, ModelFileError
from driftrank.eval import Targets
from driftrank.rerank._seqdata import (
    CandidateSource,
    FittedSequenceModel,
    Histories,
    Windows,
    candidate_pool,
    carve_last,
    check_at,
    check_k,
    check_users,
    exclude_rows,
    history_pairs,
    relative_days,
    training_windows,
)
from driftrank.types import Candidates, Ranking, topk

if TYPE_CHECKING:
    import torch

    from driftrank.rerank._seqnets import RerankerNet

__all__ = ["SequenceReranker", "SequenceRerankerConfig"]

FORMAT = "driftrank.SequenceReranker/1"
# Upper bound on the elements of one candidate-attention tensor [rows, candidates, L, heads]
# while serving; bounds memory (~32 MB per intermediate) without making batches tiny.
_CHUNK_ELEMENTS = 1 << 23
# Serving keeps the transformer state of up to this many history windows (64 floats each).
_STATE_MEMO_ENTRIES = 200_000
# History windows encoded at once by SequenceReranker.prepare.
_PREPARE_ROWS = 256


@dataclass(frozen=True)
class SequenceRerankerConfig:
    """Architecture and training settings of :class:`SequenceReranker` (validated on construction).

    Architecture:
        dim: model width ``d``. n_layers, n_heads: the causal transformer over the history.
        max_len: history events the model reads (the most recent ones).
        dropout: dropout in the transformer and on its inputs.
        half_lives_days: initial half-lives ``τ`` of the decayed interest vectors, one vector per
            scale (an hour, a day, a month by default: session, recent and standing interest);
            ``()`` turns them off. learn_half_lives: train ``log τ`` with the rest.
        gap_buckets: number of log2-spaced time-gap buckets (24 spans a minute to 16 years).
        candidate_attention: the candidate→history attention term; attention_heads its heads.
        id_dropout: probability that an item's learned ID embedding (and bias) is dropped for a
            training batch, so the text path alone ranks well enough for new items.

    Training:
        lr, weight_decay, batch_size: Adam and its mini-batches of training windows.
        max_epochs, patience, eval_every, early_stopping: stop once validation NDCG@10 has not
            improved for ``patience`` evaluations (one every ``eval_every`` epochs) and keep the
            best weights; without early stopping, train ``max_epochs`` on all the data.
        min_epochs: never stop early before this epoch. Validation NDCG@10 of a few hundred
            users is noisy and can stall for a few epochs while the loss still falls (on
            ml-latest-small it did at epochs 4-6, then rose again), so a short patience alone
            can stop far too soon.
        average_checkpoints: keep the mean of the weights of the last this many evaluated
            epochs instead of the best epoch's (``1``: the best epoch's). With early stopping and
            the default ``patience + 1``, that is the best checkpoint and the ones after it:
            +0.007-0.011 test NDCG@10 on ml-100k over the best checkpoint alone (docs/reranker.md).
            Training holds this many extra copies of the weights in memory.
        stride: training windows of ``max_len + 1`` events end at each user's last event and,
            with a stride, every ``stride`` events before (``None``: the last window only).
        listwise_positions: positions per window that also get the listwise loss over the
            target, ``n_hard`` negatives from the retrieval candidates (random ones when none
            were given) and ``n_random`` uniform negatives; listwise_weight weighs that loss
            against the full-softmax next-item loss on the dot-product part.
        softmax_items: catalogs up to this size get the full softmax at every position; a larger
            catalog gets, per batch, a softmax over the batch's targets plus this many items drawn
            uniformly without replacement, shared by every position of the batch (uniform draws
            need no log-probability correction). ``None``: always the full catalog.
        mask_history: leave the items a user already had out of the softmax at each position:
            serving excludes them anyway, so the model need not learn to push them down.
        pretrain, pretrain_epochs, mask_prob: optional masked-item pre-training (bidirectional,
            ``mask_prob`` of the events masked) before the next-item training.
        unknown_items: what :meth:`SequenceReranker.observe` and ``score_history`` do with
            item indices outside the catalog: ``"error"`` raises, ``"warn"`` warns and skips them.
        seed: all randomness (initialisation, shuffling, sampling, dropout) derives from it.
        progress: show tqdm progress bars.
    """

    dim: int = 64
    n_layers: int = 2
    n_heads: int = 2
    max_len: int = 50
    dropout: float = 0.2
    half_lives_days: tuple[float, ...] = (1.0 / 24.0, 1.0, 30.0)
    learn_half_lives: bool = True
    gap_buckets: int = 24
    candidate_attention: bool = True
    attention_heads: int = 1
    id_dropout: float = 0.1
    lr: float = 5e-3
    weight_decay: float = 0.0
    batch_size: int = 32
    max_epochs: int = 40
    patience: int = 3
    min_epochs: int = 10
    eval_every: int = 1
    early_stopping: bool = True
    average_checkpoints: int = 4
    stride: int | None = 50
    listwise_positions: int = 4
    n_hard: int = 16
    n_random: int = 48
    listwise_weight: float = 1.0
    softmax_items: int | None = 16384
    mask_history: bool = True
    pretrain: Literal["none", "masked"] = "none"
    pretrain_epochs: int = 10
    mask_prob: float = 0.2
    unknown_items: Literal["error", "warn"] = "error"
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "half_lives_days", tuple(float(x) for x in self.half_lives_days))
        positive = (
            "dim",
            "n_layers",
            "n_heads",
            "max_len",
            "gap_buckets",
            "attention_heads",
            "batch_size",
            "max_epochs",
            "patience",
            "eval_every",
            "average_checkpoints",
            "listwise_positions",
        )
        for name in positive:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        for name in ("n_hard", "n_random", "pretrain_epochs", "seed", "min_epochs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {v!r}")
        if self.dim % self.n_heads or self.dim % self.attention_heads:
            raise ConfigError(
                f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads}) and attention_heads "
                f"({self.attention_heads})"
            )
        for name in ("dropout", "id_dropout"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {v!r}")
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"mask_prob must be in (0, 1), got {self.mask_prob!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not self.listwise_weight >= 0:
            raise ConfigError(f"listwise_weight must be >= 0, got {self.listwise_weight!r}")
        if any(not (h > 0 and math.isfinite(h)) for h in self.half_lives_days):
            raise ConfigError(f"half_lives_days must all be positive, got {self.half_lives_days}")
        if self.softmax_items is not None and (
            isinstance(self.softmax_items, bool)
            or not isinstance(self.softmax_items, int)
            or self.softmax_items <= 0
        ):
            raise ConfigError(f"softmax_items must be a positive integer or None, got {self.softmax_items!r}")
        if self.stride is not None and (isinstance(self.stride, bool) or self.stride <= 0):
            raise ConfigError(f"stride must be a positive integer or None, got {self.stride!r}")
        if self.n_hard + self.n_random == 0:
            raise ConfigError("n_hard + n_random must be positive (the listwise loss needs negatives)")
        if self.candidate_attention and self.listwise_weight == 0:
            raise ConfigError(
                "the candidate attention is trained only by the listwise loss: set listwise_weight > 0 "
                "or candidate_attention=False"
            )
        if self.pretrain not in ("none", "masked"):
            raise ConfigError(f"pretrain must be 'none' or 'masked', got {self.pretrain!r}")
        if self.unknown_items not in ("error", "warn"):
            raise ConfigError(f"unknown_items must be 'error' or 'warn', got {self.unknown_items!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        out = asdict(self)
        out["half_lives_days"] = list(self.half_lives_days)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SequenceRerankerConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError`."""
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise ConfigError(f"unknown SequenceRerankerConfig keys: {extra}")
        return cls(**d)


class SequenceReranker(FittedSequenceModel["RerankerNet"]):
    """Scores candidate items against each user's interest *now*, from the text, IDs and times of
    their history (a trainable torch model; see ``docs/reranker.md``).

    ``fit`` learns next-item prediction on the users' sequences; ``score`` re-ranks given
    candidates, ``rank`` ranks the whole catalog (so it is also a :class:`~driftrank.types.Ranker`),
    ``score_history`` scores for a history that is not stored (cold or folded-in users).
    ``observe`` appends new events, ``extend_items`` adds items (scored by their text alone).

    Item text vectors (``float32[n_items, d_text]``, e.g. sentence embeddings of
    ``dataset.item_texts``) are given to ``fit`` or to the constructor.
    Time: ``at`` is the request time in unix seconds per user; events after it are ignored.
    Without ``at``, each user is scored right after their latest stored event.
    """

    _display_name = "SequenceReranker"

    def __init__(
        self, config: SequenceRerankerConfig | None = None, *, item_text_vectors: np.ndarray | None = None
    ) -> None:
        self.config = config or SequenceRerankerConfig()
        self._text = None if item_text_vectors is None else _check_text(item_text_vectors, None)
        super().__init__()
        # (net, its tensors, their versions, item tables) of the last serving call.
        self._tables_cache: tuple[Any, ...] | None = None
        # (item tables, {window key: transformer state at its latest event}); see _state_memo.
        self._memo: tuple[Any, dict[bytes, Any]] | None = None
        self._memo_lock = threading.Lock()
        self._memo_entries = _STATE_MEMO_ENTRIES

    # ------------------------------------------------------------------ properties
    @property
    def n_items(self) -> int:
        """Catalog size the fitted model scores (grows with :meth:`extend_items`)."""
        return self._net().n_items

    @property
    def n_users(self) -> int:
        """Number of user slots with stored histories (grows with :meth:`observe`)."""
        return self._histories().n_users

    @property
    def half_lives_days(self) -> np.ndarray:
        """``float64[S]`` the (learned) half-lives of the decayed interest vectors, in days."""
        import torch

        with torch.no_grad():
            return self._net().log_tau.exp().double().numpy().copy()

    # ------------------------------------------------------------------ training
    def fit(
        self,
        dataset: Dataset,
        item_text_vectors: np.ndarray | None = None,
        *,
        validation: Targets | None = None,
        candidates: CandidateSource | None = None,
    ) -> Self:
        """Train on ``dataset``'s sequences; returns ``self``.

        ``item_text_vectors: float[n_items, d_text]`` (defaults to the constructor's). With
        ``validation`` targets, training uses all of ``dataset`` and stops early on their
        NDCG@10 (ranked against the full catalog, excluding each user's items); without them
        (and ``early_stopping``), each user's last event (users with ≥ 3 events) is held out
        for that. ``candidates`` gives hard negatives per user: retrieval candidates as
        :class:`~driftrank.types.Candidates`, a :class:`~driftrank.types.Ranking` with one row
        per user, or a callable from user indices to either. The stored histories for serving
        are all of ``dataset`` (held-out events included).
        """

        from driftrank.rerank._train import FitReport, ndcg_at_10, seeded, train_loop

        cfg = self.config
        text = item_text_vectors if item_text_vectors is not None else self._text
        if text is None:
            raise ConfigError(
                "SequenceReranker needs item_text_vectors (float[n_items, d_text]): pass them to fit() "
                "or to the constructor"
            )
        text = _check_text(text, dataset.n_items)
        if dataset.n_interactions == 0:
            raise DataError(f"cannot fit SequenceReranker on {dataset.name!r}: it has no interactions")
        start = time.perf_counter()
        if validation is not None:
            _check_targets(validation, dataset)
            train_ds = dataset
        elif cfg.early_stopping:
            train_ds, validation = carve_last(dataset)
        else:
            train_ds = dataset
        train_h = Histories.from_dataset(train_ds)
        n_items = dataset.n_items
        pool = candidate_pool(candidates, dataset.n_users, n_items) if candidates is not None else None
        # Items nobody interacted with in training have no trained ID: score them by text alone.
        has_id = (train_ds.item_popularity > 0).astype(np.float32)
        w_items, w_times, w_users = training_windows(train_h, cfg.max_len, cfg.stride)
        if len(w_items) == 0:
            raise DataError(
                f"cannot fit SequenceReranker on {dataset.name!r}: no user has two or more training events"
            )
        rng = np.random.default_rng(cfg.seed)

        with seeded(cfg.seed):
            net = _build_net(cfg, text, has_id)

            def batches(epoch: int) -> Any:
                order = rng.permutation(len(w_items))
                for s in range(0, len(order), cfg.batch_size):
                    idx = order[s : s + cfg.batch_size]
                    yield self._make_batch(w_items[idx], w_times[idx], w_users[idx], n_items, rng, pool)

            pre = None
            if cfg.pretrain == "masked" and cfg.pretrain_epochs:
                pre = train_loop(
                    net,
                    epochs=cfg.pretrain_epochs,
                    lr=cfg.lr,
                    weight_decay=cfg.weight_decay,
                    batches=batches,
                    step=lambda b: _masked_loss(net, b, cfg.mask_prob),
                    progress=cfg.progress,
                    desc="rerank pretrain",
                )

            validate = None
            if validation is not None and len(validation):
                val = validation
                seen = train_h.seen(n_items)

                def validate() -> float:
                    ranked = self._rank_with(net, train_h, val.users, 10, seen, val.timestamps)
                    return ndcg_at_10(ranked.items, val)

            loop = train_loop(
                net,
                epochs=cfg.max_epochs,
                lr=cfg.lr,
                weight_decay=cfg.weight_decay,
                batches=batches,
                step=lambda b: _next_item_loss(net, b, cfg.listwise_weight),
                validate=validate,
                patience=cfg.patience,
                min_epochs=cfg.min_epochs,
                eval_every=cfg.eval_every,
                progress=cfg.progress,
                desc="rerank",
                average=cfg.average_checkpoints,
            )
        net.eval()
        self.net_ = net
        self.histories_ = Histories.from_dataset(dataset)
        self.fit_report_ = FitReport.of(loop, time.perf_counter() - start, pre)
        return self

    def _make_batch(
        self,
        w_items: np.ndarray,
        w_times: np.ndarray,
        w_users: np.ndarray,
        n_items: int,
        rng: np.random.Generator,
        pool: tuple[np.ndarray, np.ndarray] | None,
    ) -> dict[str, Any]:
        """Tensors of one training batch (windows of ``max_len + 1`` events)."""
        import torch

        cfg = self.config
        b, width = w_items.shape
        n = width - 1
        inp, tgt = w_items[:, :-1], w_items[:, 1:]
        rel = relative_days(w_times, w_times[:, -1])
        valid = inp >= 0
        # Left padding: the m real (input, target) pairs of a row are its last m positions.
        m = valid.sum(axis=1)
        pos = n - 1 - np.floor(rng.random((b, cfg.listwise_positions)) * m[:, None]).astype(np.int64)
        target = np.take_along_axis(tgt, pos, axis=1)
        hard = rng.integers(0, n_items, size=(b, cfg.listwise_positions, cfg.n_hard))
        if pool is not None and cfg.n_hard:
            indptr, pitems = pool
            for r, u in enumerate(w_users):
                lo, hi = indptr[u], indptr[u + 1]
                if hi > lo:
                    hard[r] = pitems[lo + rng.integers(0, hi - lo, size=(cfg.listwise_positions, cfg.n_hard))]
        rand = rng.integers(0, n_items, size=(b, cfg.listwise_positions, cfg.n_random))
        cand = np.concatenate([target[..., None], hard, rand], axis=2)
        # Negatives that are the target itself, or (mask_history) already in the history there.
        drop = np.zeros(cand.shape, dtype=bool)
        drop[..., 1:] = cand[..., 1:] == cand[..., :1]
        if cfg.mask_history:
            upto = np.arange(n)[None, None, :] <= pos[..., None]  # [B, P, L]
            hist = np.where(upto & valid[:, None, :], inp[:, None, :], -1)
            in_hist = (cand[..., :, None] == hist[..., None, :]).any(-1)
            drop[..., 1:] |= in_hist[..., 1:]
        rows, hitems = history_pairs(inp, tgt) if cfg.mask_history else (np.zeros(0, np.int64),) * 2
        keep = (rng.random(n_items) >= cfg.id_dropout).astype(np.float32) if cfg.id_dropout else None
        sample = None
        if cfg.softmax_items is not None and n_items > cfg.softmax_items:
            drawn = rng.choice(n_items, size=cfg.softmax_items, replace=False)
            sample = np.union1d(drawn, tgt[valid])  # sorted: targets map by searchsorted
            pos_of = np.full(n_items, -1, dtype=np.int64)
            pos_of[sample] = np.arange(len(sample))
            hitems = pos_of[hitems]
            rows, hitems = rows[hitems >= 0], hitems[hitems >= 0]
        return {
            "inp": torch.from_numpy(inp),
            "tgt": torch.from_numpy(tgt),
            "times": torch.from_numpy(rel[:, :-1]),
            "qtime": torch.from_numpy(rel[:, 1:]),
            "valid": torch.from_numpy(valid),
            "pos": torch.from_numpy(pos),
            "cand": torch.from_numpy(cand),
            "drop": torch.from_numpy(drop),
            "hist_rows": torch.from_numpy(rows),
            "hist_items": torch.from_numpy(hitems),
            "keep": None if keep is None else torch.from_numpy(keep),
            "sample": None if sample is None else torch.from_numpy(sample),
        }

    # ------------------------------------------------------------------ serving
    def score(
        self,
        users: np.ndarray,
        candidates: Candidates | list[np.ndarray],
        at: np.ndarray | None = None,
    ) -> np.ndarray:
        """Scores ``float32[m]`` of each user's candidates, in the candidates' row order.

        ``candidates`` is a :class:`~driftrank.types.Candidates` batch for exactly ``users`` (in
        that order) or a list with one array of item indices per user. Higher is better; scores
        compare within a user. Users without a stored history get the training popularity of
        the items. Equal to scoring the users one at a time.
        """
        users = check_users(users)
        at = check_at(at, len(users))
        lists = _candidate_lists(users, candidates, self.n_items)
        return self._pair_scores(self._histories().windows(users, at, self.config.max_len), at, lists)

    def score_history(
        self,
        items: np.ndarray,
        timestamps: np.ndarray,
        candidate_items: np.ndarray,
        at: float | None = None,
    ) -> np.ndarray:
        """Scores ``float32[c]`` of ``candidate_items`` for a history that is not stored.

        ``items: int[n]`` and ``timestamps: float[n]`` (unix seconds, any order: sorted stably
        here) describe a user the model has not seen or whose events are kept elsewhere; ``at``
        defaults to the latest timestamp. Item indices outside the catalog follow
        ``config.unknown_items``.
        """
        items_a, times_a, _ = self._check_events(items, timestamps, "score_history")
        cand = _check_items(candidate_items, self.n_items, "candidate_items")
        at_a = None if at is None else check_at(np.asarray([at], dtype=np.float64), 1)
        order = np.argsort(times_a, kind="stable")
        h = Histories(np.array([0, len(items_a)], dtype=np.int64), items_a[order], times_a[order])
        windows = h.windows(np.zeros(1, dtype=np.int64), at_a, self.config.max_len)
        return self._pair_scores(windows, at_a, [cand])

    def rank(
        self,
        users: np.ndarray,
        k: int,
        *,
        exclude: sp.csr_matrix | None = None,
        at: np.ndarray | None = None,
    ) -> Ranking:
        """Top-``k`` of the whole catalog for ``users: int[n]`` (a :class:`~driftrank.types.Ranker`).

        ``exclude`` (CSR ``[n_users_total, n_items]``) removes items per user; ``at: float64[n]``
        request times. Users without a stored history get the most popular items.
        """
        k = check_k(k)
        users = check_users(users)
        at = check_at(at, len(users))
        rows = exclude_rows(exclude, users, self.n_items)
        return self._rank_with(self._net(), self._histories(), users, k, rows, at, rows_given=True)

    def _rank_with(
        self,
        net: RerankerNet,
        histories: Histories,
        users: np.ndarray,
        k: int,
        exclude: sp.csr_matrix | None,
        at: np.ndarray | None,
        *,
        rows_given: bool = False,
    ) -> Ranking:
        rows = exclude if rows_given or exclude is None else exclude[users]
        windows = histories.windows(users, at, net.max_len)
        scores = self._catalog_scores(net, windows, at, histories)
        return topk(scores, k, rows)

    def observe(self, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray) -> Self:
        """Append events to the stored histories (new user indices grow the store); returns ``self``.

        ``users: int[n]``, ``items: int[n]``, ``timestamps: float[n]`` unix seconds. The weights
        do not change: the new events only enter what later requests read.
        """
        users_a = check_users(users)
        items_a, times_a, kept = self._check_events(items, timestamps, "observe", users_a)
        self.histories_ = self._histories().append(users_a[kept], items_a, times_a)
        return self

    def extend_items(self, new_text_vectors: np.ndarray) -> Self:
        """Add items with the given text vectors ``float[n_new, d_text]``; returns ``self``.

        The new items get indices ``n_items, n_items + 1, ...`` and are scored by their text
        alone (no learned ID embedding) until the next ``fit``. The serving memo is kept: the
        old items' vectors do not change, so neither do the encoded histories (which can only
        hold old items until ``observe`` adds events with new ones, under new window keys).
        """
        import torch

        net = self._net()
        new = _check_text(new_text_vectors, None)
        if new.shape[1] != net.text.shape[1]:
            raise DataError(
                f"new_text_vectors must have {net.text.shape[1]} columns like the fitted text vectors, "
                f"got {new.shape[1]}"
            )
        if len(new) == 0:
            return self
        extra = len(new)
        with torch.no_grad():
            net.text = torch.cat([net.text, torch.from_numpy(new)])
            net.has_id = torch.cat([net.has_id, torch.zeros(extra)])
            weight = torch.cat([net.item_id.weight, torch.zeros(extra, net.dim)])
            net.item_id = torch.nn.Embedding.from_pretrained(weight, freeze=False)
            net.item_bias = torch.nn.Parameter(torch.cat([net.item_bias, torch.zeros(extra)]))
        self._carry_memo(net)
        return self

    def _carry_memo(self, net: RerankerNet) -> None:
        """Move the serving memo to the item tables of ``net`` after :meth:`extend_items`.

        Its entries depend only on the rows of the items in their windows, and extending the
        catalog leaves those rows as they were (tested bit for bit: the rows of a matrix product
        do not depend on how many rows are computed), so requests keep reading them instead of
        encoding every user again after each ``add_items``."""
        import torch

        old = self._memo
        if old is None:
            return
        with torch.inference_mode():
            tables = self._item_tables(net)
        with self._memo_lock:
            self._memo = (tables, old[1])

    # ------------------------------------------------------------------ persistence
    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(config, arrays)``: JSON-able settings and the weights plus stored histories.

        Arrays are ``net.<name>`` (the torch state dict), ``history.indptr|items|timestamps``
        and ``serving.*`` (see :meth:`_serving_arrays`). :meth:`from_state` rebuilds a model
        that gives identical scores and starts with every stored history encoded.
        """
        from driftrank.rerank._train import net_arrays

        arrays = net_arrays(self._net()) | self._histories().to_arrays() | self._serving_arrays()
        config = {
            "format": FORMAT,
            "config": self.config.to_dict(),
            "fit_report": None if self.fit_report_ is None else self.fit_report_.to_dict(),
        }
        return config, arrays

    @classmethod
    def from_state(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> SequenceReranker:
        """Rebuild a fitted model from :meth:`get_state` output (:class:`ModelFileError` if invalid)."""

        from driftrank.rerank._train import load_net_arrays

        if config.get("format") != FORMAT:
            raise ModelFileError(f"not a {FORMAT} state (format {config.get('format')!r})")
        cfg = SequenceRerankerConfig.from_dict(config["config"])
        try:
            net = _build_net(cfg, arrays["net.text"], arrays["net.has_id"])
            load_net_arrays(net, arrays)
            histories = Histories.from_arrays(arrays)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise ModelFileError(f"SequenceReranker state is incomplete or inconsistent: {exc}") from None
        net.eval()
        model = cls(cfg)
        model._restore(net, histories, config.get("fit_report"))
        if any(k.startswith("serving.") for k in arrays):  # absent from older files
            model._seed_memo(arrays)
        return model

    # ------------------------------------------------------------------ internals
    def _item_tables(self, net: RerankerNet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``net.item_tables()``, reused while the served net's weights are unchanged.

        Projecting the whole catalog costs more than scoring one user's candidates, so serving
        keeps the last result. It is keyed on the net's parameter and buffer objects and their
        in-place version counters: an optimizer step, ``load_state_dict``, ``extend_items``
        (new tensors) or a new net all miss the cache. Only the fitted net (``net_``) is cached,
        never one being trained. The tuple is swapped atomically, so concurrent readers are
        safe. Call under ``torch.inference_mode()``.
        """
        if net is not self.net_:
            return net.item_tables()
        # One walk over the modules' own dicts (modules() builds a name for every module, and
        # parameters() plus buffers() would walk twice): the same tensors, in another order.
        tensors: list[torch.Tensor] = []
        stack: list[torch.nn.Module] = [net]
        while stack:
            m = stack.pop()
            tensors.extend(t for t in m._parameters.values() if t is not None)
            tensors.extend(t for t in m._buffers.values() if t is not None)
            stack.extend(c for c in m._modules.values() if c is not None)
        try:
            versions = tuple(t._version for t in tensors)
        except RuntimeError:  # inference tensors carry no version counter: never cache them
            return net.item_tables()
        hit = self._tables_cache
        if (
            hit is not None
            and hit[0] is net
            and len(hit[1]) == len(tensors)
            and all(a is b for a, b in zip(hit[1], tensors, strict=True))
            and hit[2] == versions
        ):
            return hit[3]  # type: ignore[no-any-return]
        tables = net.item_tables()
        self._tables_cache = (net, tensors, versions, tables)
        return tables

    def _check_events(
        self, items: np.ndarray, timestamps: np.ndarray, where: str, users: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Checked ``(items, timestamps, kept rows)``; unknown items raise or are skipped."""
        items_a = np.asarray(items)
        times_a = np.asarray(timestamps, dtype=np.float64)
        if items_a.ndim != 1 or times_a.shape != items_a.shape:
            raise DataError(
                f"{where}: items and timestamps must be 1-d arrays of one length, got shapes "
                f"{items_a.shape} and {times_a.shape}"
            )
        if users is not None and users.shape != items_a.shape:
            raise DataError(
                f"{where}: users, items and timestamps must have one length, got {users.shape[0]}, "
                f"{items_a.shape[0]} and {times_a.shape[0]}"
            )
        if items_a.size and items_a.dtype.kind not in "iu":
            raise DataError(f"{where}: items must be integer item indices, got dtype {items_a.dtype}")
        if not np.isfinite(times_a).all():
            raise DataError(f"{where}: timestamps must be finite unix seconds")
        items_a = items_a.astype(np.int64)
        bad = (items_a < 0) | (items_a >= self.n_items)
        if bad.any():
            msg = (
                f"{where}: {int(bad.sum())} item index(es) outside the catalog [0, {self.n_items}), "
                f"first {int(items_a[bad][0])}; call extend_items() for new items"
            )
            if self.config.unknown_items == "error":
                raise DataError(msg)
            warnings.warn(msg + " (skipped)", stacklevel=3)
        return items_a[~bad], times_a[~bad], np.flatnonzero(~bad)

    def _state_memo(self, net: RerankerNet, tables: Any) -> dict[bytes, Any] | None:
        """Transformer states of the served net by history window, or ``None`` for any other net.

        The state at a window's latest event depends only on the window (its items and the gaps
        between them) and the weights, not on the request time, so serving computes it once per
        window, like the user factors of a factor model: a user's requests re-encode their
        history only after new events. The memo belongs to one ``tables`` object of
        :meth:`_item_tables`, so anything that changes the weights starts a new one
        (:meth:`extend_items` moves it to the grown catalog's tables), and :meth:`get_state`
        saves the states of the stored users' latest windows for :meth:`from_state` to put
        back. It also holds the query side of windows at request times (``_forward_rows``),
        under longer keys; at most :attr:`memo_entries` entries in all (oldest dropped first),
        and none with a capacity of 0.
        """
        hit = self._tables_cache
        if net is not self.net_ or hit is None or hit[3] is not tables or self._memo_entries == 0:
            return None
        memo = self._memo
        if memo is None or memo[0] is not tables:
            memo = (tables, {})
            self._memo = memo
        return memo[1]

    def _serving_arrays(self) -> dict[str, np.ndarray]:
        """What the memo holds for the stored users' latest history windows, for the model file,
        so that a loaded model serves its users without encoding their histories again, as a
        factor model keeps its user factors. One row per stored user, oldest latest event first
        (the order in which the memo drops entries when it is full):

        - ``serving.keys: uint8[m, 16]`` and ``serving.states: float32[m, d]``: the window key
          (:func:`_window_keys`) and the transformer state at the latest event, from the memo
          where it has them (so a loaded model scores bit for bit as this one does), encoded
          here otherwise;
        - ``serving.has_query: bool[m]`` and, for those rows, ``serving.query_keys:
          uint8[q, 24]``, ``serving.query_vectors: float32[q, d]`` and ``serving.query_bias:
          float32[q, H, L]``: the query side of a one-user request at the default time (right
          after the latest event; see :meth:`_forward_rows`), where the memo has it (``fit``,
          ``observe`` and :meth:`prepare` fill it).
        """
        import torch

        net = self._net()
        histories = self._histories()
        users = np.flatnonzero(histories.lengths() > 0)
        keys = np.zeros((len(users), 16), dtype=np.uint8)
        states = np.zeros((len(users), net.dim), dtype=np.float32)
        last = np.zeros(len(users), dtype=np.float64)
        queries: dict[int, tuple[bytes, Any]] = {}
        with torch.inference_mode():
            tables = self._item_tables(net)
            memo = self._state_memo(net, tables)
            for lo in range(0, len(users), _PREPARE_ROWS):
                rows = slice(lo, lo + _PREPARE_ROWS)
                w = histories.windows(users[rows], None, self.config.max_len)
                window_keys = _window_keys(w.items, w.times)
                it = torch.from_numpy(w.items)
                states[rows] = self._latest_states(
                    net, tables[0], w.items, w.times, w.lengths, it, it >= 0, memo, window_keys, keep=False
                ).numpy()
                keys[rows] = np.frombuffer(b"".join(window_keys), dtype=np.uint8).reshape(-1, 16)
                last[rows] = w.times[:, -1]
                for j, k in enumerate(window_keys):
                    qkey = _query_key(k, w.times[j, -1])
                    hit = None if memo is None else memo.get(qkey)
                    if hit is not None:
                        queries[lo + j] = (qkey, hit)
        order = np.argsort(last, kind="stable")
        has_query = np.array([int(r) in queries for r in order], dtype=bool)
        picked = [queries[int(r)] for r in order if int(r) in queries]
        heads = net.attention_heads if net.candidate_attention else 0
        return {
            "serving.keys": keys[order],
            "serving.states": states[order],
            "serving.has_query": has_query,
            "serving.query_keys": np.frombuffer(b"".join(k for k, _ in picked), dtype=np.uint8).reshape(
                -1, 24
            ),
            "serving.query_vectors": np.stack([v[0].reshape(-1).numpy() for _, v in picked]).astype(
                np.float32
            )
            if picked
            else np.zeros((0, net.dim), dtype=np.float32),
            "serving.query_bias": np.stack(
                [v[1].reshape(heads, net.max_len).numpy() for _, v in picked]
            ).astype(np.float32)
            if picked
            else np.zeros((0, heads, net.max_len), dtype=np.float32),
        }

    def _seed_memo(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Fill the serving memo with :meth:`_serving_arrays` read back from a model file
        (:class:`ModelFileError` when they do not fit the model)."""
        import torch

        net = self._net()
        dim, length = net.dim, net.max_len
        heads = net.attention_heads if net.candidate_attention else 0
        keys, states = arrays.get("serving.keys"), arrays.get("serving.states")
        has_query = arrays.get("serving.has_query")
        q_keys, q_vec, q_bias = (arrays.get(f"serving.query_{n}") for n in ("keys", "vectors", "bias"))
        if isinstance(keys, np.ndarray) and all(a is None for a in (has_query, q_keys, q_vec, q_bias)):
            # States without query sides (files of the first version of these arrays).
            has_query = np.zeros(len(keys), dtype=bool)
            q_keys = np.zeros((0, 24), dtype=np.uint8)
            q_vec = np.zeros((0, dim), dtype=np.float32)
            q_bias = np.zeros((0, heads, length), dtype=np.float32)

        def fits(a: Any, dtype: Any, shape: tuple[int, ...]) -> bool:
            return isinstance(a, np.ndarray) and a.dtype == dtype and a.shape == shape

        m = len(keys) if isinstance(keys, np.ndarray) else -1
        q = (
            int(has_query.sum())
            if isinstance(has_query, np.ndarray) and fits(has_query, np.bool_, (m,))
            else -1
        )
        if not (
            fits(keys, np.uint8, (m, 16))
            and fits(states, np.float32, (m, dim))
            and q >= 0
            and fits(q_keys, np.uint8, (q, 24))
            and fits(q_vec, np.float32, (q, dim))
            and fits(q_bias, np.float32, (q, heads, length))
        ):
            shapes = ", ".join(
                f"{name} " + (f"{a.dtype}{list(a.shape)}" if isinstance(a, np.ndarray) else "missing")
                for name, a in (
                    ("keys", keys),
                    ("states", states),
                    ("has_query", has_query),
                    ("query_keys", q_keys),
                    ("query_vectors", q_vec),
                    ("query_bias", q_bias),
                )
            )
            raise ModelFileError(
                f"SequenceReranker serving arrays must be keys uint8[m, 16], states float32[m, {dim}], "
                f"has_query bool[m] and, for its q rows, query_keys uint8[q, 24], query_vectors "
                f"float32[q, {dim}] and query_bias float32[q, {heads}, {length}]; got {shapes}"
            )
        assert keys is not None and states is not None and has_query is not None
        assert q_keys is not None and q_vec is not None and q_bias is not None
        # The query bias is -inf where a query may not see an event; nothing else may be infinite.
        if (
            not (np.isfinite(states).all() and np.isfinite(q_vec).all())
            or (np.isnan(q_bias) | (q_bias == np.inf)).any()
        ):
            raise ModelFileError("SequenceReranker serving arrays hold NaN or infinite values")
        if not np.array_equal(q_keys[:, :16], keys[has_query]):
            raise ModelFileError("SequenceReranker serving query entries do not match their windows")
        with torch.inference_mode():
            memo = self._state_memo(net, self._item_tables(net))
            if memo is None or not m:
                return
            # Rows go oldest latest event first: past the capacity, keep the newest.
            per_row = 1 + has_query.astype(np.int64)
            kept = int((np.cumsum(per_row[::-1]) <= self._memo_entries).sum())
            state_t = torch.from_numpy(states[m - kept :].copy())
            qrow = np.cumsum(has_query) - 1  # row -> its query entry
            vec_t, bias_t = torch.from_numpy(q_vec.copy()), torch.from_numpy(q_bias.copy())
            entries: list[tuple[bytes, Any]] = []
            for j in range(m - kept, m):
                entries.append((keys[j].tobytes(), state_t[j - (m - kept)]))
                if has_query[j]:
                    i = qrow[j]
                    u, bias = vec_t[i].view(1, 1, dim), bias_t[i].view(1, heads, 1, length)
                    entries.append((q_keys[i].tobytes(), (u, bias)))
            self._memo_put(memo, entries)

    def clear_memo(self) -> None:
        """Forget the memoised transformer states of served history windows (see
        :meth:`_state_memo`); later requests recompute them. Frees their memory."""
        self._memo = None

    def prepare(self, users: np.ndarray) -> None:
        """Encode the latest history window of each of ``users: int[n]`` now, in batches, into
        the memo that serving reads (see :meth:`_state_memo`): its transformer state, and its
        query side at the default request time (right after the latest event), so that the
        user's next request does neither. Windows already memoised and empty ones are skipped;
        scores do not change."""
        import torch

        u = np.unique(check_users(users))
        if not len(u):
            return
        net = self._net()
        windows = self._histories().windows(u, None, self.config.max_len)
        rows = np.flatnonzero(windows.lengths > 0)
        with torch.inference_mode():
            tables = self._item_tables(net)
            memo = self._state_memo(net, tables)
            if memo is None:
                return
            for lo in range(0, len(rows), _PREPARE_ROWS):
                r = rows[lo : lo + _PREPARE_ROWS]
                it = torch.from_numpy(windows.items[r])
                self._latest_states(
                    net, tables[0], windows.items[r], windows.times[r], windows.lengths[r], it, it >= 0, memo
                )
            # The query side one window at a time, as a one-user request computes it.
            for row in rows.tolist():
                self._forward_rows(net, tables[0], windows, None, slice(row, row + 1), memo)

    def _latest_states(
        self,
        net: RerankerNet,
        table: torch.Tensor,
        items: np.ndarray,
        times: np.ndarray,
        lengths: np.ndarray,
        it: torch.Tensor,
        valid: torch.Tensor,
        memo: dict[bytes, Any] | None,
        keys: list[bytes] | None = None,
        keep: bool = True,
    ) -> torch.Tensor:
        """Transformer states ``[n, d]`` at the latest position of windows ``items: int64[n, L]``
        (times in unix seconds; ``it`` and ``valid`` are the items as a tensor and ``it >= 0``),
        from ``memo`` where it has them (``keys``: the windows' :func:`_window_keys`); the ones
        encoded here go into ``memo`` unless ``keep`` is false."""
        import torch

        def encode(rows: slice | np.ndarray) -> torch.Tensor:
            last = np.where(lengths[rows] > 0, times[rows, -1], 0.0)
            rel = np.where(items[rows] >= 0, relative_days(times[rows], last), 0.0).astype(np.float32)
            sel = rows if isinstance(rows, slice) else torch.from_numpy(rows)
            return net.encode(table, it[sel], torch.from_numpy(rel), valid[sel], last_only=True)[0][:, -1]

        if memo is None:
            return encode(slice(None))
        keys = _window_keys(items, times) if keys is None else keys
        found: list[torch.Tensor | None] = [memo.get(k) for k in keys]
        miss = [r for r, v in enumerate(found) if v is None]
        if miss:
            # Only the windows to encode get their times made relative (not on every hit).
            fresh = encode(np.asarray(miss, dtype=np.int64)).clone()
            for j, r in enumerate(miss):
                found[r] = fresh[j]
            if keep:
                self._memo_put(memo, [(keys[r], fresh[j]) for j, r in enumerate(miss)])
        return torch.stack(found)  # type: ignore[arg-type]

    def _memo_put(self, memo: dict[bytes, Any], entries: list[tuple[bytes, Any]]) -> None:
        """Add entries to the serving memo, dropping the oldest past :attr:`memo_entries`."""
        with self._memo_lock:
            for k, v in entries:
                memo[k] = v
            self._memo_trim(memo)

    def _memo_trim(self, memo: dict[bytes, Any]) -> None:
        """Drop the oldest entries past :attr:`memo_entries` (call under ``_memo_lock``)."""
        excess = len(memo) - self._memo_entries
        if excess > 0:
            for k in list(itertools.islice(iter(memo), excess)):
                memo.pop(k, None)

    @property
    def memo_entries(self) -> int:
        """Capacity of the serving memo (see :meth:`_state_memo`), 200,000 entries by default;
        0 keeps nothing, so every request encodes its history. Not saved with the model."""
        return self._memo_entries

    @memo_entries.setter
    def memo_entries(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise ConfigError(f"memo_entries must be a non-negative integer, got {n!r}")
        with self._memo_lock:
            self._memo_entries = int(n)
            if self._memo is not None:
                self._memo_trim(self._memo[1])

    def _forward_rows(
        self,
        net: RerankerNet,
        table: torch.Tensor,
        windows: Windows,
        at: np.ndarray | None,
        rows: slice,
        memo: dict[bytes, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(u, gap_bias, eh)`` for a slice of window rows, queried at their request times.

        The query side (``u`` and the attention's ``gap_bias``) depends only on the window and
        the request time, so a one-user request memoises it under both (in ``memo``, with the
        transformer states): a repeated request at the default time (right after the user's
        latest event), or the first one after :meth:`prepare`, only scores its candidates.
        Only one-row calls read and fill that part of the memo, so that a user's scores never
        depend on which batch their query side was computed in.
        """
        import torch

        items = windows.items[rows]
        times = windows.times[rows]
        lengths = windows.lengths[rows]
        if at is None:
            ref = np.where(lengths > 0, times[:, -1], 0.0)
        else:
            ref = np.asarray(at[rows], dtype=np.float64)
        it = torch.from_numpy(items)
        valid = it >= 0
        eh = net.history_vectors(table, it, valid)
        if memo is None or len(items) != 1:
            u, gap_bias = self._query(net, table, items, times, lengths, ref, it, valid, eh, memo, None)
            return u, gap_bias, eh
        keys = _window_keys(items, times)
        qkey = _query_key(keys[0], ref[0])
        hit = memo.get(qkey)
        if hit is not None:
            return hit[0], hit[1], eh
        u, gap_bias = self._query(net, table, items, times, lengths, ref, it, valid, eh, memo, keys)
        self._memo_put(memo, [(qkey, (u, gap_bias))])
        return u, gap_bias, eh

    def _query(
        self,
        net: RerankerNet,
        table: torch.Tensor,
        items: np.ndarray,
        times: np.ndarray,
        lengths: np.ndarray,
        ref: np.ndarray,
        it: torch.Tensor,
        valid: torch.Tensor,
        eh: torch.Tensor,
        memo: dict[bytes, Any] | None,
        keys: list[bytes] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u, gap_bias)`` of windows queried at times ``ref`` (unix seconds)."""
        import torch

        rel = torch.from_numpy(np.where(items >= 0, relative_days(times, ref), 0.0).astype(np.float32))
        n = items.shape[0]
        qpos = torch.full((n, 1), items.shape[1] - 1, dtype=torch.int64)
        qtime = torch.zeros(n, 1)
        state = self._latest_states(net, table, items, times, lengths, it, valid, memo, keys)
        gap, visible = net.context(rel, valid, qpos, qtime)
        return net.query_from(state[:, None, :], eh, gap, visible, qpos), net.gap_bias(gap, visible)

    def _catalog_scores(
        self, net: RerankerNet, windows: Windows, at: np.ndarray | None, histories: Histories
    ) -> np.ndarray:
        """``float32[n, n_items]`` full-catalog scores (popularity for empty histories)."""
        import torch

        n = len(windows.lengths)
        out = np.empty((n, net.n_items), dtype=np.float32)
        per_row = max(1, net.n_items * net.max_len * net.attention_heads)
        chunk = max(1, _CHUNK_ELEMENTS // per_row)
        with torch.inference_mode():
            tables = self._item_tables(net)
            memo = self._state_memo(net, tables)
            for s in range(0, n, chunk):
                rows = slice(s, min(n, s + chunk))
                u, gap_bias, eh = self._forward_rows(net, tables[0], windows, at, rows, memo)
                out[rows] = net.scores(u, gap_bias, eh, tables)[:, 0].numpy()
        cold = windows.lengths == 0
        if cold.any():
            out[cold] = histories.popularity(net.n_items)
        return out

    def _pair_scores(self, windows: Windows, at: np.ndarray | None, lists: list[np.ndarray]) -> np.ndarray:
        """Scores of per-row candidate lists, concatenated in row order."""
        import torch

        net = self._net()
        counts = np.array([len(c) for c in lists], dtype=np.int64)
        out = np.zeros(int(counts.sum()), dtype=np.float32)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        n = len(lists)
        per_cand = net.max_len * net.attention_heads
        s = 0
        with torch.inference_mode():
            tables = self._item_tables(net)
            memo = self._state_memo(net, tables)
            while s < n:
                # Grow the chunk while the padded [rows, max count, L, heads] tensor stays small.
                e, widest = s + 1, max(1, int(counts[s]))
                while e < n and (e + 1 - s) * max(widest, int(counts[e])) * per_cand <= _CHUNK_ELEMENTS:
                    widest = max(widest, int(counts[e]))
                    e += 1
                rows = slice(s, e)
                cand = np.zeros((e - s, widest), dtype=np.int64)
                for r in range(s, e):
                    cand[r - s, : counts[r]] = lists[r]
                u, gap_bias, eh = self._forward_rows(net, tables[0], windows, at, rows, memo)
                ct = torch.from_numpy(cand)[:, None, :]
                sc = net.scores(u, gap_bias, eh, tables, ct)[:, 0].numpy()
                for r in range(s, e):
                    out[offsets[r] : offsets[r + 1]] = sc[r - s, : counts[r]]
                s = e
        cold = np.flatnonzero(windows.lengths == 0)
        if len(cold):
            pop = self._histories().popularity(net.n_items)
            for c in cold:
                out[offsets[c] : offsets[c + 1]] = pop[lists[c]]
        return out


# ---------------------------------------------------------------------- losses
def _next_item_loss(net: RerankerNet, batch: dict[str, Any], listwise_weight: float) -> torch.Tensor:
    """Full-softmax next-item loss at every position, plus the listwise loss on sampled ones."""
    import torch
    import torch.nn.functional as nnf

    inp, tgt, valid = batch["inp"], batch["tgt"], batch["valid"]
    b, n = inp.shape
    tables = net.item_tables(batch["keep"])
    table, bias = tables[0], tables[1]
    states, eh = net.encode(table, inp, batch["times"], valid)
    qpos = torch.arange(n).expand(b, n)
    gap, visible = net.context(batch["times"], valid, qpos, batch["qtime"])
    u = net.query(states, eh, gap, visible, qpos)
    sample = batch.get("sample")
    target = tgt[valid]
    if sample is None:
        logits = u[valid] @ table.T + bias
    else:  # sampled softmax: columns are the batch's item sample (sorted, holds every target)
        logits = u[valid] @ table[sample].T + bias[sample]
        target = torch.searchsorted(sample, target)
    if len(batch["hist_items"]):
        # In place: the matmul's backward does not need its output, and a copy of [M, N] is not free.
        logits.index_put_((batch["hist_rows"], batch["hist_items"]), torch.tensor(float("-inf")))
    loss = nnf.cross_entropy(logits, target)
    if listwise_weight > 0:
        pos, cand = batch["pos"], batch["cand"]
        d = u.shape[-1]
        up = torch.gather(u, 1, pos[..., None].expand(-1, -1, d))
        gp = torch.gather(gap, 1, pos[..., None].expand(-1, -1, n))
        vp = torch.gather(visible, 1, pos[..., None].expand(-1, -1, n))
        s = net.scores(up, net.gap_bias(gp, vp), eh, tables, cand).masked_fill(batch["drop"], float("-inf"))
        loss = loss + listwise_weight * nnf.cross_entropy(
            s.flatten(0, 1), torch.zeros(s.shape[0] * s.shape[1], dtype=torch.int64)
        )
    return loss


def _masked_loss(net: RerankerNet, batch: dict[str, Any], mask_prob: float) -> torch.Tensor:
    """Masked-item pre-training: predict hidden events from both sides (full softmax)."""
    import torch
    import torch.nn.functional as nnf

    inp, valid = batch["inp"], batch["valid"]
    table, bias = net.items(batch["keep"])
    masked = (torch.rand(inp.shape) < mask_prob) & valid
    # Every row predicts at least its latest event, so no batch is empty.
    masked[:, -1] = True
    states, _ = net.encode(table, inp, batch["times"], valid, masked=masked)
    logits = states[masked] @ table.T + bias
    return nnf.cross_entropy(logits, inp[masked])


# ---------------------------------------------------------------------- helpers
def _build_net(cfg: SequenceRerankerConfig, text: np.ndarray, has_id: np.ndarray) -> RerankerNet:
    """A freshly initialised :class:`RerankerNet` for ``cfg`` (torch's global generator seeds it)."""
    import torch

    from driftrank.rerank._seqnets import RerankerNet

    return RerankerNet(
        torch.from_numpy(np.asarray(text, dtype=np.float32)),
        torch.from_numpy(np.asarray(has_id, dtype=np.float32)),
        dim=cfg.dim,
        n_layers=cfg.n_layers,
        heads=cfg.n_heads,
        attention_heads=cfg.attention_heads,
        max_len=cfg.max_len,
        dropout=cfg.dropout,
        half_lives_days=cfg.half_lives_days,
        learn_half_lives=cfg.learn_half_lives,
        n_buckets=cfg.gap_buckets,
        candidate_attention=cfg.candidate_attention,
    )


def _check_text(text: np.ndarray, n_items: int | None) -> np.ndarray:
    """Text vectors as L2-normalised ``float32[n, d]`` (zero rows stay zero)."""
    arr = np.asarray(text, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise DataError(
            f"item_text_vectors must be a 2-d float array [n_items, d_text], got shape {arr.shape}"
        )
    if n_items is not None and arr.shape[0] != n_items:
        raise DataError(
            f"item_text_vectors must have one row per item of the data set ({n_items}), got {arr.shape[0]}"
        )
    if not np.isfinite(arr).all():
        raise DataError("item_text_vectors must be finite (found NaN or inf)")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return np.ascontiguousarray(arr / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def _check_items(items: np.ndarray, n_items: int, name: str) -> np.ndarray:
    arr = np.asarray(items)
    if arr.ndim != 1:
        raise DataError(f"`{name}` must be a 1-d array of item indices, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise DataError(f"`{name}` must hold integer item indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n_items):
        bad = arr[(arr < 0) | (arr >= n_items)][0]
        raise DataError(f"`{name}` holds item index {bad}, outside the catalog [0, {n_items})")
    return arr


def _candidate_lists(
    users: np.ndarray, candidates: Candidates | list[np.ndarray], n_items: int
) -> list[np.ndarray]:
    if isinstance(candidates, Candidates):
        if len(candidates) != len(users) or not np.array_equal(candidates.users, users):
            raise DataError(
                f"candidates are for users {np.asarray(candidates.users)[:5].tolist()}..., "
                f"expected exactly `users` in order ({users[:5].tolist()}...)"
            )
        items = _check_items(candidates.items, n_items, "candidates.items")
        return [items[candidates.of(j)] for j in range(len(users))]
    if not isinstance(candidates, (list, tuple)) or len(candidates) != len(users):
        got = len(candidates) if isinstance(candidates, (list, tuple)) else type(candidates).__name__
        raise DataError(
            f"candidates must be Candidates or a list with one item array per user ({len(users)}), got {got}"
        )
    return [_check_items(c, n_items, "candidates") for c in candidates]


def _check_targets(targets: Targets, dataset: Dataset) -> None:
    n = len(targets.users)
    if targets.items.shape != (n,) or targets.timestamps.shape != (n,):
        raise DataError("validation targets must have users, items and timestamps of one length")
    if n and (targets.users.min() < 0 or targets.users.max() >= dataset.n_users):
        raise DataError(f"validation targets mention users outside [0, {dataset.n_users})")
    if n and (targets.items.min() < 0 or targets.items.max() >= dataset.n_items):
        raise DataError(f"validation targets mention items outside [0, {dataset.n_items})")


def _query_key(window_key: bytes, ref: np.float64) -> bytes:
    """Memo key of a window's query side at request time ``ref`` (unix seconds)."""
    return window_key + np.float64(ref).tobytes()


def _window_keys(items: np.ndarray, times: np.ndarray) -> list[bytes]:
    """Memo key of each history window (its items and times; ``int64[n, L]``, ``float64[n, L]``)."""
    return [
        hashlib.blake2b(items[r].tobytes() + times[r].tobytes(), digest_size=16).digest()
        for r in range(len(items))
    ]
