"""The :class:`Engine`: retrieval → re-rank → fusion behind one ranking API."""

from __future__ import annotations

import logging
import math
import threading
import time
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any, Self

import numpy as np
import polars as pl
import scipy.sparse as sp

from driftrank._progress import FitStages
from driftrank.data import Dataset, IdMap
from driftrank.engine._config import EngineConfig
from driftrank.engine._result import TableFormat
from driftrank.errors import (
    ConfigError,
    DataError,
    DriftrankError,
    ModelFileError,
    NotFittedError,
    UnknownIdError,
)
from driftrank.types import Candidates, Ranking

log = logging.getLogger(__name__)

# rank_batch(workers=...) gives each worker at least this many users: below it, a part's fixed
# costs (a thread, one pass of every stage) outweigh what the second core adds.
_MIN_WORKER_USERS = 32

__all__ = ["Engine", "RankResult"]

DAY = 86400.0


Explanations = tuple[list[dict[str, np.ndarray]], list[np.ndarray]]


class _BatchExplanations:
    """The contributions and bases of one ranking call's results, computed on first read.

    Attributing each score to the signals costs about a fifth of a one-user request (the
    fusion layer's path-averaged gradients), and most callers only read the items, so the
    results of a call share this object and the first ``contributions`` or ``base`` read
    computes them for every user of the call, once (thread-safe). It keeps what it needs (the
    fitted fusion layer and the call's signals), so a later ``observe`` or refit does not
    change what an earlier result explains.
    """

    __slots__ = ("_compute", "_lock", "_value")

    def __init__(self, compute: Callable[[], Explanations] | None, value: Explanations | None = None) -> None:
        self._compute = compute
        self._value = value
        self._lock = threading.Lock()

    @classmethod
    def ready(cls, contributions: dict[str, np.ndarray], base: np.ndarray) -> _BatchExplanations:
        """Already computed, for one result."""
        return cls(None, ([contributions], [base]))

    def _computed(self) -> Explanations:
        value = self._value
        if value is None:
            with self._lock:
                if self._value is None:
                    assert self._compute is not None
                    self._value = self._compute()
                    self._compute = None  # drop the signals it held
                value = self._value
        return value

    def get(self, j: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        value = self._computed()
        return value[0][j], value[1][j]

    # Pickling or copying a result (e.g. to send it to another process) carries the computed
    # explanations, not the lock and the signals behind them.
    def __getstate__(self) -> Explanations:
        return self._computed()

    def __setstate__(self, value: Explanations) -> None:
        self._compute = None
        self._value = value
        self._lock = threading.Lock()


@dataclass(frozen=True)
class RankResult:
    """One user's ranking.

    Attributes:
        user: the raw user id (``None`` for an anonymous history or a text query).
        item_ids: raw item ids, best first (``k`` or fewer).
        items: the same as item indices.
        scores: ``float32[k]`` final scores.
        titles: item titles, for display.
        at: the ranking time (unix seconds).
        contributions: per signal group, ``float32[k]`` how much it added to each score (the
            scores equal ``base`` plus the sum of the contributions).
        base: ``float32[k]`` the score part no signal explains.

    ``contributions`` and ``base`` are computed when first read, for all results of the same
    ``rank``/``rank_batch`` call at once; a caller that reads only the items does not pay for
    them.
    """

    user: object | None
    item_ids: np.ndarray
    items: np.ndarray = field(repr=False)  # positions in the engine's catalog, not ids
    scores: np.ndarray
    titles: list[str]
    at: float
    _explained: _BatchExplanations = field(repr=False, compare=False)
    _row: int = field(default=0, repr=False, compare=False)

    @property
    def contributions(self) -> dict[str, np.ndarray]:
        """Per signal group, how much it added to each item's score."""
        return self._explained.get(self._row)[0]

    @property
    def base(self) -> np.ndarray:
        """The score part no signal explains."""
        return self._explained.get(self._row)[1]

    def __len__(self) -> int:
        return len(self.items)

    def to_frame(self) -> pl.DataFrame:
        """The ranking as a table: rank, item_id, title, score and one column per signal."""
        cols: dict[str, Any] = {
            "rank": np.arange(1, len(self.items) + 1),
            "item_id": self.item_ids,
            "title": self.titles,
            "score": self.scores,
        }
        cols.update({f"+{k}": v for k, v in self.contributions.items()})
        return pl.DataFrame(cols)


class _RWLock:
    """Many concurrent readers (``rank``) or one writer (``observe``, ``add_items``).

    Writer-preferring: once a writer waits, new readers wait behind it, so a steady stream of
    ``rank`` calls cannot starve ``observe``. A thread that already reads may read again (nested
    calls) without waiting, so it cannot deadlock against a writer queued behind it.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0
        self._local = threading.local()

    @contextmanager
    def read(self) -> Any:
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            with self._cond:
                while self._writer or self._waiting_writers:
                    self._cond.wait()
                self._readers += 1
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth
            if depth == 0:
                with self._cond:
                    self._readers -= 1
                    if self._readers == 0:
                        self._cond.notify_all()

    @contextmanager
    def lent(self) -> Any:
        """Read in a helper thread on behalf of a reader that holds the lock until the helper
        is done (``rank_batch`` with workers), as a nested read of that reader: a helper that
        queued behind a waiting writer would deadlock, the writer waiting for the reader and
        the reader for its helper."""
        depth = getattr(self._local, "depth", 0)
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth

    @contextmanager
    def write(self) -> Any:
        with self._cond:
            self._waiting_writers += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


@dataclass
class _State:
    """Everything the engine itself tracks besides its components."""

    user_ids: IdMap
    item_ids: IdMap
    items: pl.DataFrame
    log: Any  # driftrank.retrieval._common.EventLog
    popularity: np.ndarray  # float64[n_items] event counts
    first_seen: np.ndarray  # float64[n_items], NaN = never
    item_vectors: np.ndarray  # float32[n_items, d]
    # Catalog size at fit time: items at or beyond it came through add_items (new items).
    n_fit_items: int
    fit_report: dict[str, Any] = field(default_factory=dict)


class Engine:
    """A hybrid ranking engine that follows how each user's interests drift.

    ``fit`` embeds item texts, fits the retrieval channels, the interest model and the sequence
    re-ranker on all but each user's last event, trains the fusion layer on those held-out
    events, then takes them in online. ``rank`` serves one user (known, new with a few items, or
    just a text), ``rank_batch`` many; ``observe`` takes new events without refitting;
    ``add_items`` grows the catalog from texts; ``explain`` tells why; ``save``/``load`` persist.

    Example::

        engine = Engine(EngineConfig()).fit(driftrank.load_dataset("ml-100k"))
        engine.rank(196, k=10).to_frame()
    """

    def __init__(self, config: EngineConfig | None = None, *, llm: Any = None) -> None:
        """``llm``: with ``config.llm`` set, an :class:`~driftrank.rerank.LLMReranker` to use
        instead of the one the config would load (one around a model you built, say)."""
        if config is not None and not isinstance(config, EngineConfig):
            raise ConfigError(f"Engine takes an EngineConfig, got {type(config).__name__}")
        self.config = config or EngineConfig()
        if llm is not None and self.config.llm is None:
            raise ConfigError(
                "an llm was given but config.llm is None: set EngineConfig(llm=LLMStageConfig())"
            )
        self._llm_given = llm
        self._llm: Any = None
        self._lock = _RWLock()
        self._state: _State | None = None
        self._merger: Any = None
        self._interest: Any = None
        self._reranker: Any = None
        self._fuser: Any = None
        # (FusionInput, targets) the fusion layer was trained on in the last fit; kept in memory
        # (not saved) for ablations and diagnostics.
        self._fusion_data: tuple[Any, np.ndarray] | None = None
        self._encoder: Any = None
        # (catalog frame, its titles as a list): converting 1.7k titles costs ~0.1 ms a request.
        self._titles_cache: tuple[pl.DataFrame, list[str]] | None = None

    # ================================================================== fitting
    def fit(self, dataset: Dataset) -> Self:
        """Fit every stage on ``dataset`` (see the class docstring); returns ``self``.

        With ``config.progress`` a bar shows the stage being fitted (and the re-ranker's epochs);
        each stage's duration is logged at INFO level and kept in ``fit_report["seconds"]``.
        """
        if not isinstance(dataset, Dataset):
            raise DataError(f"Engine.fit takes a driftrank Dataset, got {type(dataset).__name__}")
        if dataset.n_interactions == 0:
            raise DataError(f"cannot fit on {dataset.name!r}: it has no interactions")
        cfg = self.config
        names = ["encode", "retrieval", "interest", "reranker", *(["llm"] if self._llm else []), "fusion"]
        stages = FitStages(
            [*names, "final_update"], enabled=cfg.progress, logger=log, what=f"fit {dataset.name}"
        )
        t0 = time.perf_counter()
        import torch

        from driftrank._threads import fit_threads, limited_threads

        threads = fit_threads(cfg.fit_threads, torch.get_num_threads())
        log.info("fitting on %d thread(s)", threads)
        try:
            with limited_threads(threads):
                self._fit_stages(dataset, stages)
        finally:
            stages.close()
        timings = dict(stages.seconds)
        timings["total"] = time.perf_counter() - t0
        st = self._require()
        st.fit_report["seconds"] = timings
        log.info("engine fitted on %s in %.1f s", dataset.name, timings["total"])
        return self

    def _fit_stages(self, dataset: Dataset, stages: FitStages) -> None:
        """The steps of :meth:`fit`, each timed by ``stages``."""
        from driftrank.eval import leave_one_out
        from driftrank.retrieval._common import EventLog

        cfg = self.config
        with stages.stage("encode"):
            vectors = self._encode(dataset.item_texts)

        split = leave_one_out(dataset)
        fit_part, held = split.train_valid, split.test
        self._build_components(vectors)

        with stages.stage("retrieval"):
            if self._merger is not None:
                self._merger.fit(fit_part)
        with stages.stage("interest"):
            if self._interest is not None:
                self._interest.fit(fit_part)

        self._state = _State(
            user_ids=dataset.user_ids,
            item_ids=dataset.item_ids,
            items=dataset.items,
            log=EventLog.from_dataset(fit_part),
            popularity=np.bincount(fit_part.item_index, minlength=dataset.n_items).astype(np.float64),
            first_seen=_first_seen(fit_part),
            item_vectors=vectors,
            n_fit_items=dataset.n_items,
        )
        with stages.stage("reranker"):
            if self._reranker is not None:
                hard = None
                if self._merger is not None and cfg.reranker.n_hard > 0:
                    hard = self._train_candidates(fit_part)
                self._reranker.fit(fit_part, vectors, candidates=hard)
        if self._llm is not None:
            with stages.stage("llm"):
                self._llm.fit(self, fit_part, seed=cfg.seed, progress=cfg.progress)

        with stages.stage("fusion"):
            self._fit_fusion(dataset, fit_part, held)
        with stages.stage("final_update"):
            self._final_update(dataset, held)

    def _fit_fusion(self, dataset: Dataset, fit_part: Dataset, held: Any) -> None:
        """Train the fusion layer on the held-out events; records the fit report."""
        assert self._state is not None
        report: dict[str, Any] = {"held_out_users": len(held)}
        if self._llm is not None:
            report["llm"] = {k: v for k, v in self._llm.train_report_.items() if k != "log"}
        if self._fuser is not None and len(held):
            # Reserved cold slots go to the simulated new items only: the items that have no event
            # here are those whose only event is a held-out target, so they would teach the layer
            # that an item without events is a likely pick.
            sim_cold = self._simulated_cold(dataset.n_items)
            cands = self._candidates(
                held.users,
                held.timestamps,
                exclude=fit_part.seen,
                reserve_cold=sim_cold is not None,
                cold_as=sim_cold,
            )
            inputs = self._fusion_input(cands, held.timestamps, cold_as=sim_cold)
            self._fuser.fit(inputs, held.items)
            self._fusion_data = (inputs, held.items.copy())
            hit = np.array([held.items[j] in cands.items[cands.of(j)] for j in range(len(cands))])
            report["held_out_candidate_recall"] = float(hit.mean())
            if sim_cold is not None:
                report["fusion_simulated_cold_items"] = int(sim_cold.sum())
            fr = getattr(self._fuser, "report_", None)
            if fr is not None:
                report["fusion"] = {k: v for k, v in vars(fr).items() if isinstance(v, (int, float, str))}
        self._state.fit_report = report

    def _final_update(self, dataset: Dataset, held: Any) -> None:
        """Bring every component up to date with the held-out events (``final_update``)."""
        assert self._state is not None
        cfg = self.config
        if cfg.final_update == "refit":
            if self._merger is not None:
                self._merger.fit(dataset)
            if self._interest is not None:
                self._interest.fit(dataset)
            if self._reranker is not None:
                self._reranker.observe(held.users, held.items, held.timestamps)
            self._state.log.add(held.users, held.items, held.timestamps)
            self._count(held.items, held.timestamps)
            self._prepare(held.users)
        else:
            self._observe_indices(held.users, held.items, held.timestamps)

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        enc = self._get_encoder()
        return np.ascontiguousarray(enc.encode(list(texts)), dtype=np.float32)

    def _get_encoder(self) -> Any:
        if self._encoder is None:
            ec = self.config.encoder
            if ec.kind == "hashing":
                from driftrank.rerank._encoder import HashingEncoder, HashingEncoderConfig

                self._encoder = HashingEncoder(HashingEncoderConfig(dim=ec.dim))
            else:
                from driftrank.rerank._encoder import SentenceEncoder, SentenceEncoderConfig

                self._encoder = SentenceEncoder(
                    SentenceEncoderConfig(
                        model=ec.model,
                        device=ec.device,
                        batch_size=ec.batch_size,
                        progress=self.config.progress,
                    )
                )
        return self._encoder

    def _build_components(self, vectors: np.ndarray) -> None:
        from driftrank.retrieval import (
            ALSChannel,
            BPRChannel,
            CandidateMerger,
            CovisitChannel,
            LightFMChannel,
            MergerConfig,
            PopularityChannel,
        )

        cfg = self.config
        kinds = {
            "als": ALSChannel,
            "bpr": BPRChannel,
            "lightfm": LightFMChannel,
            "covisit": CovisitChannel,
            "popularity": PopularityChannel,
        }
        channels = [
            cls(self._seeded(getattr(cfg, k))) for k, cls in kinds.items() if getattr(cfg, k) is not None
        ]
        names = [ch.name for ch in channels]
        if cfg.interest is not None:
            from driftrank.rerank._interest_channel import InterestChannel

            self._interest = InterestChannel(cfg.interest, encoder=self._get_encoder(), item_vectors=vectors)
            names.append(self._interest.name)
        quotas = cfg.quotas or _default_quotas(names)
        missing = set(names) - {n for n, _ in quotas}
        if missing or len(quotas) != len(names):
            raise ConfigError(
                f"quotas must name exactly the enabled channels {names}, got {[n for n, _ in quotas]}"
            )
        self._quota_order = tuple(n for n, _ in quotas)
        self._quotas = np.array([q for _, q in quotas], dtype=np.float64)
        cf_quotas = tuple((n, q) for n, q in quotas if n in {ch.name for ch in channels})
        self._merger = CandidateMerger(channels, MergerConfig(cf_quotas)) if channels else None
        if cfg.reranker is not None:
            from driftrank.rerank._model import SequenceReranker

            self._reranker = SequenceReranker(self._seeded(cfg.reranker))
        if cfg.llm is not None:
            from driftrank.engine._llm_stage import LLMStage

            self._llm = LLMStage(cfg.llm, llm=self._llm_given)
        self._fuser = self._make_fuser()

    def _seeded(self, component: Any) -> Any:
        """``component``'s config with ``config.seed`` added to its own seed (``seed`` or
        ``random_state``), so that the engine's seed moves every stochastic part and seed 0
        keeps the components' seeds as configured."""
        offset = self.config.seed
        if not offset or not is_dataclass(component) or isinstance(component, type):
            return component
        for name in ("seed", "random_state"):
            if hasattr(component, name):
                return replace(component, **{name: getattr(component, name) + offset})
        return component

    def _make_fuser(self) -> Any:
        cfg = self.config
        if cfg.fusion == "gated":
            from driftrank.fusion import FusionModel

            return FusionModel(self._seeded(cfg.fusion_config))
        if cfg.fusion == "linear":
            from driftrank.fusion import LinearFusion, LinearFusionConfig

            return LinearFusion(LinearFusionConfig(method="logistic"))
        if cfg.fusion == "rrf":
            from driftrank.fusion import ReciprocalRankFusion, RRFConfig

            return ReciprocalRankFusion(RRFConfig())
        return None  # "reranker": the re-ranker's score alone

    def _train_candidates(self, fit_part: Dataset) -> Callable[[np.ndarray], Candidates]:
        """Hard negatives for the re-ranker: each user's retrieval candidates (computed lazily)."""
        n = min(100, self.config.n_candidates)
        seen = fit_part.seen

        def source(users: np.ndarray) -> Candidates:
            # No reserved cold-item slots: the re-ranker's negatives stay what its training expects.
            return self._candidates(
                np.asarray(users, dtype=np.int64), None, exclude=seen, n=n, reserve_cold=False
            )

        return source

    # ================================================================== internals
    def _require(self) -> _State:
        if self._state is None:
            raise NotFittedError("Engine used before fit (or load)")
        return self._state

    def _count(self, items: np.ndarray, times: np.ndarray) -> None:
        st = self._require()
        np.add.at(st.popularity, items, 1.0)
        fs = st.first_seen
        for i, t in zip(items.tolist(), times.tolist(), strict=True):
            if not fs[i] <= t:
                fs[i] = t

    def _observe_indices(self, users: np.ndarray, items: np.ndarray, times: np.ndarray) -> None:
        if self._merger is not None:
            self._merger.observe(users, items, times)
        if self._interest is not None:
            self._interest.observe(users, items, times)
        if self._reranker is not None:
            self._reranker.observe(users, items, times)
        self._require().log.add(users, items, times)
        self._count(items, times)
        self._prepare(users)

    def _prepare(self, users: np.ndarray) -> None:
        """Encode the re-ranker's view of ``users``' latest histories now (``encode_on_observe``)."""
        if self._reranker is not None and self.config.encode_on_observe:
            self._reranker.prepare(users)

    def _titles(self, st: _State) -> list[str]:
        """Item titles by item index (do not modify). Kept until the catalog frame is replaced
        (``add_items`` builds a new one, ``load`` a new state); swapping the tuple is atomic,
        so concurrent readers are safe."""
        cached = self._titles_cache
        if cached is not None and cached[0] is st.items:
            return cached[1]
        titles: list[str] = st.items["title"].to_list()
        self._titles_cache = (st.items, titles)
        return titles

    def _seen_matrix(self, users: np.ndarray) -> sp.csr_matrix:
        """``float32[max(users) + 1, n_items]`` CSR, row ``u`` = the items user ``u`` of the
        batch interacted with (the rows of other users are empty): the ``exclude`` the channels
        take. Built in one go from the log, for it is on every request's path."""
        st = self._require()
        batch = np.unique(users)
        n = int(batch[-1]) + 1 if len(batch) else 0
        rows, cols = st.log.seen(batch)
        counts = np.zeros(n, dtype=np.int64)
        counts[batch] = np.bincount(rows, minlength=len(batch))
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return sp.csr_matrix((np.ones(len(cols), np.float32), cols, indptr), shape=(n, len(st.item_ids)))

    def _candidates(
        self,
        users: np.ndarray,
        at: np.ndarray | None,
        *,
        exclude: sp.csr_matrix | None,
        n: int | None = None,
        reserve_cold: bool = True,
        cold_as: np.ndarray | None = None,
    ) -> Candidates:
        """Merged candidates of every channel (CF channels and the interest channel).

        With ``reserve_cold``, the interest channel's first ``config.cold_item_slots`` items
        without any event (added by ``add_items`` and not interacted with yet) are always
        among the ``n``, replacing the tail of the merged list. ``cold_as: bool[n_items]``
        (fusion training only) marks the items to treat as new instead: the CF channels' lists
        leave them out and they, not the items without events, get the reserved slots.
        """
        from driftrank.retrieval._merge import merge_rankings

        n = n or self.config.n_candidates
        lists: dict[str, Ranking] = {}
        if self._merger is not None:
            channels = self._merger.channels
            for ch, r in zip(
                channels, self._merger.channel_lists(users, n, exclude=exclude, at=at), strict=True
            ):
                lists[ch.name] = r if cold_as is None else _drop_items(r, cold_as)
        if self._interest is not None:
            lists[self._interest.name] = self._interest.candidates(users, n, exclude=exclude, at=at)
        ordered = [lists[name] for name in self._quota_order]
        # Reciprocal-rank merge: it had the higher validation recall at 50 and 100 (docs/retrieval.md).
        merged = merge_rankings(users, ordered, self._quota_order, self._quotas, n, "rrf", 60.0)
        slots = min(self.config.cold_item_slots, n)
        if reserve_cold and slots > 0 and self._interest is not None:
            # An item nobody interacted with has no CF score, so in the reciprocal-rank merge it
            # competes with the interest channel's rank alone and never makes the cut (measured:
            # 0 of 200 merged candidates on the cold-start protocol, benchmarks/bench_coldstart.py).
            name = self._interest.name
            cold = self._new_items() if cold_as is None else cold_as
            merged = _reserve_cold(merged, lists[name], self._quota_order.index(name), cold, slots, n)
        return merged

    def _new_items(self) -> np.ndarray:
        """``bool[n_items]``: items added by :meth:`add_items` that have no event yet.

        Items that were in the catalog at fit time but have no event are *not* new: in an
        offline evaluation they are exactly the items that first appear in the test period, so
        reserving places for them would leak the future into the candidates.
        """
        st = self._require()
        added = np.arange(len(st.popularity)) >= st.n_fit_items
        return added & (st.popularity == 0)

    def _simulated_cold(self, n_items: int) -> np.ndarray | None:
        """``bool[n_items]``: the items fusion training treats as new (``cold_item_dropout``),
        so that the layer sees rows like those of real new items (no CF signal, no popularity,
        no age) with known outcomes; ``None`` when off."""
        share = self.config.cold_item_dropout
        if share <= 0:
            return None
        rng = np.random.default_rng([self.config.seed, 0xC01D])
        return rng.random(n_items) < share

    def _fusion_input(
        self, cands: Candidates, at: np.ndarray | None, cold_as: np.ndarray | None = None
    ) -> Any:
        """Signals of every candidate row; ``cold_as: bool[n_items]`` (fusion training only)
        marks items whose event-based signals are hidden, as for items nobody interacted with."""
        from driftrank.fusion import FusionInput

        st = self._require()
        users = cands.users
        lengths, last = st.log.latest(users)
        at_u = self._resolve_at(users, at, (lengths, last))
        row_user = cands.user_of_row()
        at_rows = at_u[row_user]
        popularity = st.popularity if cold_as is None else np.where(cold_as, 0.0, st.popularity)
        first_seen = st.first_seen if cold_as is None else np.where(cold_as, np.nan, st.first_seen)
        signals: dict[str, np.ndarray] = {}
        if self._reranker is not None:
            signals["rerank"] = self._reranker.score(users, cands, at_u).astype(np.float64)
        if self._llm is not None:
            signals["llm"] = self._llm.signal(self, cands, at_u, signals.get("rerank"))
        if self._interest is not None:
            model = self._interest.interest
            sims = model.similarity(users[row_user], cands.items, at_rows)
            for s, name in enumerate(model.scale_names):
                signals[f"interest_{name}".replace(":", "_")] = sims[:, s].astype(np.float64)
        with np.errstate(invalid="ignore"):
            signals["item_age_days"] = (at_rows - first_seen[cands.items]) / DAY
        size = int(users.max()) + 1 if len(users) else 1
        hist_len = np.full(size, np.nan)
        idle = np.full(size, np.nan)
        hist_len[users] = np.log1p(lengths)
        has = lengths > 0
        idle[users[has]] = np.maximum(0.0, (at_u[has] - last[has]) / DAY)
        item_signals = {"popularity": np.log1p(popularity)}
        user_signals = {"history_length": hist_len, "idle_days": idle}
        if cold_as is not None:  # fusion training: the checked constructor
            return FusionInput(cands, signals, item_signals, user_signals)
        return FusionInput._unchecked(cands, signals, item_signals, user_signals)

    def _resolve_at(
        self,
        users: np.ndarray,
        at: np.ndarray | None,
        latest: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Request times: given, or each user's latest known event (NaN-free); ``latest`` is
        ``log.latest(users)`` when the caller has it."""
        st = self._require()
        lengths, last = st.log.latest(users) if latest is None else latest
        out = last.copy()
        if not (lengths > 0).all():
            out[lengths == 0] = float(np.nanmax(st.first_seen)) if np.isfinite(st.first_seen).any() else 0.0
        if at is not None:
            given = np.asarray(at, dtype=np.float64)
            out = np.where(np.isnan(given), out, given)
        return out

    def _score(self, cands: Candidates, at: np.ndarray | None) -> tuple[np.ndarray, Any]:
        inputs = self._fusion_input(cands, at)
        if self._fuser is None:
            s = np.asarray(inputs.signals["rerank"], dtype=np.float64)
            return np.where(np.isfinite(s), s, -np.inf), inputs
        return np.asarray(self._fuser.score(inputs), dtype=np.float64), inputs

    def _rank_indices(
        self,
        users: np.ndarray,
        k: int,
        at: np.ndarray | None,
        exclude: sp.csr_matrix | None,
        *,
        keep: Callable[[np.ndarray], np.ndarray] | None = None,
        explain: bool = False,
        only: np.ndarray | None = None,
    ) -> tuple[Ranking, Callable[[], Explanations] | None]:
        """Core batch path: candidates → signals → fused scores → top-k.

        ``keep`` (item indices → bool) drops items from the ranking; ``only: int[m]`` ranks
        exactly those items (less the excluded), retrieved or not. With ``explain``, also a
        function that computes each user's contributions and bases, one value per ranked item
        (a short list gives shorter arrays); it holds the fusion layer and the signals of this
        call."""
        from driftrank.fusion import rank_candidates

        k = min(k, len(self._require().item_ids))  # more than the catalog cannot be ranked
        cands = self._candidates(users, at, exclude=exclude)
        if only is not None:
            cands = _only_items(cands, only, exclude)
        scores, inputs = self._score(cands, at)
        if keep is not None and len(cands.items):
            scores = np.where(keep(cands.items), scores, np.nan)  # NaN: never ranked
        ranking, rows = rank_candidates(cands, scores.astype(np.float32), k)
        if not explain:
            return ranking, None
        fuser = self._fuser
        n_users = len(users)

        def explanations() -> Explanations:
            valid = rows >= 0  # where ranking.items >= 0: each user's first entries
            counts = valid.sum(axis=1)
            flat = rows[valid]
            if fuser is not None and len(flat):
                c = fuser.explain(inputs, flat)
                bounds = np.cumsum(counts)[:-1]
                values = np.split(np.asarray(c.values, dtype=np.float32), bounds)
                base = np.split(np.asarray(c.base, dtype=np.float32), bounds)
                contribs = [{g: v[:, gi] for gi, g in enumerate(c.groups)} for v in values]
                return contribs, base
            contribs = [
                {"rerank": ranking.scores[j, : counts[j]]} if fuser is None else {} for j in range(n_users)
            ]
            return contribs, [np.zeros(n, dtype=np.float32) for n in counts.tolist()]

        return ranking, explanations

    # ================================================================== public API
    def rank(
        self,
        user: object | None = None,
        k: int = 10,
        *,
        at: float | None = None,
        exclude_seen: bool = True,
        candidates: Iterable[object] | None = None,
        filter: Callable[[object], bool] | Collection[object] | None = None,
        history: Iterable[object] | None = None,
        text: str | None = None,
    ) -> RankResult:
        """Rank items for one user.

        - ``user``: a raw user id. A known user is ranked from everything the engine knows.
          An unknown user needs ``history`` (raw item ids, or ``(item_id, timestamp)`` pairs);
          they are registered with those events (CF fold-in, interest vector) and ranked.
        - ``text``: no history, just a description ("space operas and heist films"): items
          nearest to its embedding, blended with popularity (``user`` may be ``None``).
        - ``at``: ranking time in unix seconds (default: right after the user's latest event);
          it may not precede events the engine already knows for that user.
        - ``exclude_seen``: leave out items the user interacted with.
        - ``candidates``: rank exactly these raw item ids (less the seen ones with
          ``exclude_seen``), whether retrieval would have proposed them or not; the channels
          that did not retrieve one count as missing signals, as for any candidate.
        - ``filter``: a predicate on raw item ids, or a collection of allowed raw item ids;
          items it rejects are never returned (fewer than ``k`` results if few pass).
        Returns a :class:`RankResult` with per-signal contributions.
        """
        k = _check_k(k)
        if text is not None:
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"text must be a non-empty string, got {text!r}")
            if history is not None:
                raise DataError("give either history or text, not both")
            return self._rank_text(
                text, k, user=user, filter=filter, candidates=candidates, at=at, exclude_seen=exclude_seen
            )
        with self._lock.read():
            st = self._require()
            u = st.user_ids.get(user) if user is not None else -1
        if u < 0:
            if history is None:
                if user is None:
                    raise DataError("rank needs a user id, a history, or a text")
                raise UnknownIdError(
                    f"unknown user id {user!r}: pass history=[item ids] to rank a new user, or text=... "
                    "to rank from a description"
                )
            items, times = self._parse_history(history, at)
            if user is None:
                raise DataError(
                    "an anonymous history needs a user id to register it under: rank(user='new-id', history=[...])"
                )
            # Checked before the user is registered, so that a refused call registers nobody.
            self._check_rank_args(candidates, filter)
            if at is not None and len(times) and float(times.max()) > float(at):
                raise DataError(
                    f"at={float(at):.0f} is before the latest event of the history ({float(times.max()):.0f}); "
                    "rank at or after it"
                )
            self.observe(
                [(user, i, t) for i, t in zip(st.item_ids.ids[items].tolist(), times.tolist(), strict=True)]
            )
            with self._lock.read():
                u = self._require().user_ids.index(user)
        elif history is not None:
            raise DataError(f"user {user!r} is known: observe() new events instead of passing history")
        return self._rank_known(np.array([u], dtype=np.int64), k, [at], exclude_seen, candidates, filter)[0]

    def rank_batch(
        self,
        users: Sequence[object],
        k: int = 10,
        *,
        at: Sequence[float | None] | None = None,
        exclude_seen: bool = True,
        filter: Callable[[object], bool] | Collection[object] | None = None,
        workers: int = 1,
    ) -> list[RankResult]:
        """Rank many known users at once (faster than calling :meth:`rank` in a loop).

        ``at`` gives one time per user (or ``None`` for the default). Every user must be known;
        unknown ids raise :class:`UnknownIdError` naming the first.

        ``workers > 1`` splits the users into that many parts (of at least
        ``_MIN_WORKER_USERS`` users each) and ranks them in parallel threads. Much of a batch is
        numpy and scipy work that runs on one core, so on two cores two workers rank 1.1-1.4x as
        many users per second as one (``benchmarks/bench_engine_speed.py``). For the call, torch,
        BLAS and OpenMP run on one thread each, so that the threads do not outnumber the cores
        (process-wide settings, restored afterwards).
        Results are those of one call up to float rounding (each part is a batch of its own),
        and the batch sees one state of the engine: ``observe`` waits until it is done. An
        engine with the LLM stage ranks in one part whatever ``workers`` says.
        """
        k = _check_k(k)
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
            raise DataError(f"workers must be a positive integer, got {workers!r}")
        if isinstance(users, (str, bytes)) or not isinstance(users, Sequence):
            raise DataError(f"users must be a sequence of user ids, got {type(users).__name__}")
        if at is not None and (isinstance(at, (str, bytes)) or not isinstance(at, Sequence)):
            raise DataError(f"at must be a sequence of times (one per user), got {type(at).__name__}")
        if at is not None and len(at) != len(users):
            raise DataError(f"at must have one time per user ({len(users)}), got {len(at)}")
        if not users:
            self._require()
            return []
        at_list: list[float | None] = list(at) if at is not None else [None] * len(users)
        with self._lock.read():
            st = self._require()
            idx = np.array([st.user_ids.index(u) for u in users], dtype=np.int64)
            n_parts = min(int(workers), len(idx) // _MIN_WORKER_USERS)
            if n_parts <= 1 or self._llm is not None:
                # The language model scores one batch of queries at a time (and loads lazily).
                return self._rank_known(idx, k, at_list, exclude_seen, None, filter)
            from concurrent.futures import ThreadPoolExecutor

            keep = self._keep_fn(None, filter)  # once, not per part (a predicate visits every item)

            def part(rows: np.ndarray) -> list[RankResult]:
                with self._lock.lent():
                    return self._rank_known(
                        idx[rows], k, [at_list[j] for j in rows.tolist()], exclude_seen, None, None, keep
                    )

            from driftrank._threads import limited_threads

            # Threads that outnumber the cores wait on each other: one per worker for the call
            # (process-wide settings, restored afterwards).
            with (
                limited_threads(1),
                ThreadPoolExecutor(n_parts, thread_name_prefix="driftrank-batch") as pool,
            ):
                parts = list(pool.map(part, np.array_split(np.arange(len(idx)), n_parts)))
        return [r for p in parts for r in p]

    def rank_tables(
        self,
        users: Sequence[object],
        k: int = 10,
        *,
        chunk_size: int = 4096,
        contributions: bool = False,
        format: TableFormat = "polars",
        progress: bool = False,
        **rank_kwargs: Any,
    ) -> Iterator[Any]:
        """Rank ``users`` ``chunk_size`` at a time, yielding one table per chunk (see
        :meth:`rank_table` for the columns), so that memory stays bounded however many users
        there are. ``rank_kwargs`` go to :meth:`rank_batch` (``at``, ``exclude_seen``,
        ``filter``, ``workers``); an ``at`` sequence is cut into chunks with the users.
        """
        from driftrank._progress import bar
        from driftrank.engine._result import results_table

        k = _check_k(k)
        if format not in ("polars", "pandas"):
            raise ConfigError(f"format must be 'polars' or 'pandas', got {format!r}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise DataError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        if isinstance(users, (str, bytes)) or not isinstance(users, Sequence):
            raise DataError(f"users must be a sequence of user ids, got {type(users).__name__}")
        at = rank_kwargs.pop("at", None)
        if at is not None and len(at) != len(users):
            raise DataError(f"at must have one time per user ({len(users)}), got {len(at)}")
        with bar(total=len(users), enabled=progress, desc="rank", unit="user") as shown:
            for s in range(0, len(users), int(chunk_size)):
                part = users[s : s + int(chunk_size)]
                results = self.rank_batch(
                    part, k, at=None if at is None else at[s : s + len(part)], **rank_kwargs
                )
                yield results_table(results, contributions=contributions, format=format)
                shown.update(len(part))

    def rank_table(
        self,
        users: Sequence[object],
        k: int = 10,
        *,
        contributions: bool = False,
        format: TableFormat = "polars",
        **rank_kwargs: Any,
    ) -> Any:
        """Rank ``users`` into one table with a row per (user, rank): ``user_id``, ``rank``
        (1-based), ``item_id``, ``title``, ``score`` and, with ``contributions``, one ``+signal``
        column per signal group plus ``base`` (they add up to ``score``).

        A polars frame, or pandas with ``format="pandas"``. ``rank_kwargs`` go to
        :meth:`rank_batch` (``at``, ``exclude_seen``, ``filter``, ``workers``). For millions of
        users, write :meth:`rank_tables`' chunks out one by one instead.
        """
        parts = list(self.rank_tables(users, k, contributions=contributions, format=format, **rank_kwargs))
        if not parts:
            from driftrank.engine._result import results_table

            return results_table([], contributions=contributions, format=format)
        if format == "pandas":
            import pandas as pd

            return pd.concat(parts, ignore_index=True)
        return pl.concat(parts)

    def _rank_known(
        self,
        users: np.ndarray,
        k: int,
        at: list[float | None],
        exclude_seen: bool,
        candidates: Iterable[object] | None,
        filt: Callable[[object], bool] | Collection[object] | None,
        keep: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> list[RankResult]:
        """``keep``: the item mask of ``filt`` when the caller made it already (``filt`` is
        then ``None``)."""
        with self._lock.read():
            st = self._require()
            at_arr = np.array([np.nan if a is None else _check_time(a, "at") for a in at], dtype=np.float64)
            if not np.isnan(at_arr).all():
                _, last = st.log.latest(users)
                early = np.flatnonzero(at_arr < last)  # NaN (no at, or no event) compares False
                if len(early):
                    j = int(early[0])
                    raise DataError(
                        f"at={at_arr[j]:.0f} is before the latest event the engine knows for user "
                        f"{st.user_ids.ids[users[j]]!r} ({last[j]:.0f}); rank at or after it"
                    )
            if keep is None:
                keep = self._keep_fn(None, filt)
            only = None if candidates is None else self._candidate_items(candidates)
            exclude = self._seen_matrix(users) if exclude_seen else None
            at_opt = None if np.isnan(at_arr).all() else at_arr
            ranking, explain = self._rank_indices(
                users, k, at_opt, exclude, keep=keep, explain=True, only=only
            )
            assert explain is not None
            at_used = self._resolve_at(users, at_opt)
            titles = self._titles(st)
            valid = ranking.items >= 0
            explained = _BatchExplanations(explain)
            out = []
            for j, u in enumerate(users.tolist()):
                items = ranking.items[j][valid[j]]
                out.append(
                    RankResult(
                        user=st.user_ids.ids[u].item()
                        if hasattr(st.user_ids.ids[u], "item")
                        else st.user_ids.ids[u],
                        item_ids=st.item_ids.ids[items],
                        items=items,
                        scores=ranking.scores[j][valid[j]],
                        titles=[titles[i] for i in items.tolist()],
                        at=float(at_used[j]),
                        _explained=explained,
                        _row=j,
                    )
                )
            return out

    def _check_rank_args(self, candidates: Iterable[object] | None, filt: object) -> None:
        """Raise what ``_keep_fn`` and ``_candidate_items`` would, without visiting the catalog."""
        if (
            filt is not None
            and not callable(filt)
            and (not isinstance(filt, Collection) or isinstance(filt, (str, bytes)))
        ):
            raise DataError(
                f"filter must be a predicate on item ids or a collection of item ids, got {type(filt).__name__}"
            )
        if candidates is not None:
            with self._lock.read():
                self._candidate_items(candidates)

    def _candidate_items(self, candidates: Iterable[object]) -> np.ndarray:
        """Distinct item indices of raw ``candidates`` (every one must be in the catalog)."""
        if isinstance(candidates, (str, bytes)):
            raise DataError(f"candidates must be a collection of item ids, got {type(candidates).__name__}")
        cand_list = list(candidates)
        if not cand_list:
            raise DataError("candidates is empty; pass None to rank the whole catalog")
        return np.unique(self._require().item_ids.indices(cand_list))

    def _keep_fn(
        self, candidates: Iterable[object] | None, filt: Callable[[object], bool] | Collection[object] | None
    ) -> Callable[[np.ndarray], np.ndarray] | None:
        st = self._require()
        allowed: np.ndarray | None = None
        if candidates is not None:
            allowed = np.zeros(len(st.item_ids), dtype=bool)
            allowed[self._candidate_items(candidates)] = True
        if filt is not None:
            if callable(filt):
                mask = np.fromiter(
                    (bool(filt(x)) for x in st.item_ids.ids.tolist()), dtype=bool, count=len(st.item_ids)
                )
            elif isinstance(filt, Collection) and not isinstance(filt, (str, bytes)):
                mask = np.zeros(len(st.item_ids), dtype=bool)
                idx = st.item_ids.indices(list(filt), missing=-1)
                mask[idx[idx >= 0]] = True
            else:
                raise DataError(
                    f"filter must be a predicate on item ids or a collection of item ids, got {type(filt).__name__}"
                )
            allowed = mask if allowed is None else allowed & mask
        if allowed is None:
            return None
        final = allowed
        return lambda items: final[items]

    def _parse_history(self, history: Iterable[object], at: float | None) -> tuple[np.ndarray, np.ndarray]:
        st = self._require()
        items: list[int] = []
        times: list[float] = []
        entries = list(history)
        if not entries:
            raise DataError("history is empty: give at least one item id, or use text=... for a cold user")
        base = _check_time(at, "at") if at is not None else float(np.nanmax(st.first_seen))
        for j, e in enumerate(entries):
            raw, ts = e if isinstance(e, tuple) and len(e) == 2 else (e, None)
            i = st.item_ids.get(raw)
            if i < 0:
                if self.config.unknown_items == "error":
                    raise UnknownIdError(f"history item {raw!r} is not in the catalog (add_items() first)")
                warnings.warn(f"history item {raw!r} is not in the catalog; it is ignored", stacklevel=3)
                continue
            items.append(i)
            # Without timestamps, events are spaced one second apart, oldest first, ending at `at`.
            times.append(
                _check_time(ts, "history timestamp") if ts is not None else base - (len(entries) - 1 - j)
            )
        if not items:
            raise DataError("no history item is in the catalog")
        return np.array(items, dtype=np.int64), np.array(times, dtype=np.float64)

    def _rank_text(
        self,
        text: str,
        k: int,
        *,
        user: object | None,
        filter: Any,
        candidates: Any,
        at: float | None = None,
        exclude_seen: bool = True,
    ) -> RankResult:
        """Items the text means and what was chosen beside them (``_text_query``), fused with
        popularity; a known ``user``'s seen items are left out with ``exclude_seen``; ``at``
        (checked) is reported as the ranking time."""
        from driftrank.engine._text_query import text_query_terms

        when = _check_time(at, "at") if at is not None else float(time.time())
        with self._lock.read():
            st = self._require()
            u = st.user_ids.get(user) if user is not None else -1
            q = self._get_encoder().encode([text]).astype(np.float32)
            sims = (st.item_vectors @ q[0]).astype(np.float64)
            channels = {c.name: c for c in self._merger.channels} if self._merger is not None else {}
            terms = text_query_terms(
                sims,
                st.popularity,
                channels.get("covisit"),
                channels.get("als"),
                float(self.config.text_popularity_weight),
            )
            score = np.sum(list(terms.values()), axis=0)
            keep = self._keep_fn(candidates, filter)
            if keep is not None:
                score = np.where(keep(np.arange(len(score))), score, -np.inf)
            if u >= 0 and exclude_seen:
                score[st.log.user(u)[0]] = -np.inf
            order = np.argsort(-score, kind="stable")[:k]
            order = order[np.isfinite(score[order])]
            titles = self._titles(st)
            return RankResult(
                user=user,
                item_ids=st.item_ids.ids[order],
                items=order.astype(np.int64),
                scores=score[order].astype(np.float32),
                titles=[titles[i] for i in order.tolist()],
                at=when,
                _explained=_BatchExplanations.ready(
                    {name: term[order].astype(np.float32) for name, term in terms.items()},
                    np.zeros(len(order), dtype=np.float32),
                ),
            )

    # ================================================================== online
    def observe(self, events: Any) -> int:
        """Take new interactions without refitting; returns how many were taken.

        ``events``: a polars/pandas frame with ``user_id``, ``item_id``, ``timestamp`` columns,
        or an iterable of ``(user_id, item_id, timestamp)`` tuples. Unknown users are added;
        unknown items raise :class:`UnknownIdError` (``add_items`` first) or, with
        ``unknown_items="warn"``, are reported and skipped. CF user vectors are folded in again,
        interest vectors, co-visitation and popularity updated; rankings see the events at once.
        """
        users_raw, items_raw, times = _events_to_lists(events)
        if not users_raw:
            return 0
        with self._lock.write():
            st = self._require()
            item_idx = st.item_ids.indices(items_raw, missing=-1)
            bad = np.flatnonzero(item_idx < 0)
            if len(bad):
                if self.config.unknown_items == "error":
                    raise UnknownIdError(
                        f"event item {items_raw[bad[0]]!r} is not in the catalog (add_items() first)"
                    )
                warnings.warn(
                    f"{len(bad)} event(s) name items outside the catalog, first {items_raw[bad[0]]!r}; skipped",
                    stacklevel=2,
                )
            ok = item_idx >= 0
            # Every id is checked (type, length, fit to the vocabulary) before anything changes:
            # a refused call leaves the engine as it was.
            users_map = st.user_ids.extend([u for u, keep in zip(users_raw, ok, strict=True) if keep])
            user_idx = users_map.indices([u for u, keep in zip(users_raw, ok, strict=True) if keep])
            t = np.asarray(times, dtype=np.float64)[ok]
            items = item_idx[ok]
            order = np.argsort(t, kind="stable")
            st.user_ids = users_map
            self._observe_indices(user_idx[order], items[order], t[order])
            return int(ok.sum())

    def add_items(self, items: Any) -> int:
        """Add new items from their texts; returns how many were added.

        ``items``: a frame or a list of dicts with ``item_id`` and ``title`` and/or ``text``
        (optional ``genres``). They are embedded, indexed and retrievable at once: by text
        queries, and for users through the interest channel, whose nearest items without any
        event get ``config.cold_item_slots`` reserved places among the candidates. The
        re-ranker scores them from text; the fusion layer scores them with their CF signals
        missing, as the interest-only candidates it was trained on (optionally also on
        simulated new items, ``config.cold_item_dropout``).
        """
        from driftrank.data._dataset import _to_polars
        from driftrank.data._validate import normalise_items

        if isinstance(items, list):
            if not all(isinstance(x, dict) for x in items):
                raise DataError("add_items: expected a frame or a list of dicts (item_id, title/text, ...)")
            try:
                frame = pl.DataFrame(items)
            except (pl.exceptions.PolarsError, TypeError, ValueError, OverflowError) as exc:
                raise DataError(f"add_items: the items cannot form a table ({exc})") from None
        else:
            frame = items if isinstance(items, pl.DataFrame) else _to_polars(items, "items")
        new = normalise_items(frame, source="add_items")
        with self._lock.write():
            st = self._require()
            raw_ids = new["item_id"].to_list()
            if not st.item_ids.is_integer and frame["item_id"].dtype == pl.String:
                # A catalog of text ids keeps new ids as written ("007" stays "007", where
                # the file loaders read a column of digits as integers).
                raw_ids = frame["item_id"].str.strip_chars().to_list()
            dup = [x for x in raw_ids if x in st.item_ids]
            if dup:
                raise DataError(f"add_items: item {dup[0]!r} is already in the catalog")
            texts = new["text"].to_list()
            if any(not t.strip() for t in texts):
                raise DataError("add_items: every new item needs a non-empty title or text")
            # Everything new is built aside first (ids checked against the catalog's kind, texts
            # embedded), then swapped in: a refused call leaves the catalog as it was.
            item_ids = st.item_ids.extend(raw_ids)
            vecs = self._encode(texts)
            n_new = new.height
            old_n = len(st.item_ids)
            table = new.with_columns(
                pl.Series("item", np.arange(old_n, old_n + n_new, dtype=np.int32)),
                pl.Series("item_id", item_ids.ids[old_n:]),
            )
            items_table = pl.concat([st.items, table.select(st.items.columns)], how="vertical_relaxed")
            if items_table["item_id"].to_list()[old_n:] != item_ids.ids[old_n:].tolist():
                raise DataError("add_items: the new item ids do not survive in the catalog table")
            st.item_ids = item_ids
            st.items = items_table
            st.item_vectors = np.vstack([st.item_vectors, vecs])
            st.popularity = np.concatenate([st.popularity, np.zeros(n_new)])
            st.first_seen = np.concatenate([st.first_seen, np.full(n_new, np.nan)])
            if self._merger is not None:
                self._merger.extend_items(n_new)
            if self._interest is not None:
                self._interest.extend_items(n_new, vecs)
            if self._reranker is not None:
                self._reranker.extend_items(vecs)
            return n_new

    # ================================================================== info
    def known_users(self) -> list[object]:
        """Every user id the engine knows (fitted and observed), in the order it numbered them."""
        with self._lock.read():
            return self._require().user_ids.ids.tolist()

    @property
    def n_users(self) -> int:
        """Users the engine knows (fitted and observed)."""
        return len(self._require().user_ids)

    @property
    def n_items(self) -> int:
        """Items in the catalog (fitted and added)."""
        return len(self._require().item_ids)

    @property
    def fit_report(self) -> dict[str, Any]:
        """What ``fit`` measured: seconds per stage, held-out candidate recall, fusion report."""
        return dict(self._require().fit_report)

    @property
    def memo_entries(self) -> int:
        """How many entries the serving memo keeps (the re-ranker's encoded history windows
        and a one-user request's query side, two per active user, about 0.5 kB of tensors
        each): 200,000 by default, the oldest dropped first. Set it to bound the memory of a
        server with many users, or to 0 to memoise nothing (every request then encodes its
        user's history). A serving setting: not saved with the model, and a loaded engine
        starts with the default (the states that ``load`` restores count against it, the
        users with the oldest latest events dropped first). Rankings do not change."""
        return self._reranker.memo_entries if self._reranker is not None else 0

    @memo_entries.setter
    def memo_entries(self, n: int) -> None:
        if self._reranker is None:
            raise ConfigError("this engine has no re-ranker, so nothing to memoise")
        with self._lock.write():
            self._reranker.memo_entries = n

    def clear_caches(self) -> None:
        """Forget what serving memoises per request: the re-ranker's encoded user histories,
        computed once per history and reused until the user's next event (``fit``,
        ``observe`` and ``load`` provide them for every stored user). The next requests
        recompute them, or :meth:`prepare` does. Rankings do not change."""
        if self._reranker is not None:
            self._reranker.clear_memo()

    def prepare(self, users: Sequence[object] | None = None) -> None:
        """Encode the latest histories of ``users`` (raw ids; default every user) for the
        re-ranker now, in batches, so that their next requests skip it: after
        :meth:`clear_caches`, or after ``observe`` with ``EngineConfig.encode_on_observe`` off.
        ``fit`` and ``observe`` already do this for the users they touch, and :meth:`load`
        restores it for every user from the model file (saved by :meth:`save`); users already
        encoded are skipped. Rankings do not change."""
        with self._lock.read():
            st = self._require()
            if users is None:
                idx = np.arange(len(st.user_ids), dtype=np.int64)
            else:
                if isinstance(users, (str, bytes)) or not isinstance(users, Sequence):
                    raise DataError(f"users must be a sequence of user ids, got {type(users).__name__}")
                idx = np.array([st.user_ids.index(u) for u in users], dtype=np.int64)
            if self._reranker is not None:
                self._reranker.prepare(idx)

    def history(self, user: object) -> pl.DataFrame:
        """A user's known events, oldest first: ``item_id``, ``title``, ``timestamp``."""
        with self._lock.read():
            st = self._require()
            u = st.user_ids.index(user)
            items, times = st.log.user(u)
            titles = self._titles(st)
            return pl.DataFrame(
                {
                    "item_id": st.item_ids.ids[items],
                    "title": [titles[i] for i in items.tolist()],
                    "timestamp": times,
                }
            )

    def explain(self, user: object, k: int = 10, windows: int = 4) -> Any:
        """Why ``user`` gets what they get: their interest evolution and per-item reasons.

        Returns an :class:`~driftrank.engine.Explanation` (print it for a readable summary):
        genre shares per time window of the history (``windows`` windows of equal event counts),
        the genres rising and falling, the genres nearest to each current interest vector, and
        for each of the top-``k`` items the signal that added most and the most similar history item.
        """
        from driftrank.engine._explain import explain

        return explain(self, user, k=_check_k(k), windows=windows)

    def interest_trajectory(self, user: object, times: Sequence[float]) -> np.ndarray:
        """``float32[len(times), n_scales, dim]``: the user's interest vectors at each time."""
        with self._lock.read():
            st = self._require()
            if self._interest is None:
                raise ConfigError("interest_trajectory needs the interest channel (EngineConfig.interest)")
            u = st.user_ids.index(user)
            t = np.array([_check_time(x, "times") for x in times], dtype=np.float64)
            return np.asarray(self._interest.interest.trajectory(u, t))

    # ================================================================== persistence
    def save(self, path: str | Path, *, key: bytes | str | None = None) -> Path:
        """Save to folder ``path`` atomically (JSON manifest + ``.npz`` arrays, no pickle).

        ``path`` must be new, an empty folder, or a model saved before (which is replaced in
        one step, so a concurrent :meth:`load` sees the old model or the new one); a file or a
        folder holding anything else raises :class:`~driftrank.errors.ModelFileError` and is
        left as it was. ``key`` (bytes or str, kept secret) signs the model with an
        HMAC-SHA256 that ``load(path, key=...)`` checks; see ``docs/robustness.md``.

        The re-ranker's part holds every stored user's encoded latest history (64 floats per
        user by default), so that :meth:`load` serves them without encoding them again.
        Returns the absolute folder path."""
        from driftrank.engine._persist import save_bundle
        from driftrank.engine._state import engine_components

        with self._lock.read():
            return save_bundle(path, self.config.to_dict(), engine_components(self), key=key)

    @classmethod
    def load(cls, path: str | Path, *, llm: Any = None, key: bytes | str | None = None) -> Engine:
        """Load a folder written by :meth:`save`, verifying checksums, array shapes and versions
        (and with ``key``, refusing a model not signed with that key). The loaded
        engine ranks exactly as the saved one, with every user's encoded history in place
        (folders saved before these were stored load too; their users are encoded on request).

        An engine with an LLM stage reloads its base model from ``config.llm.reranker.model``
        (then the saved adapter and projection on top); ``llm`` gives a re-ranker around a
        model you built instead, as for the constructor. Anything wrong with the folder
        raises :class:`~driftrank.errors.ModelFileError`."""
        from driftrank.engine._persist import load_bundle
        from driftrank.engine._state import restore_engine

        manifest, components = load_bundle(path, key=key)
        try:
            return restore_engine(cls, manifest, components, llm=llm)
        except DriftrankError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
            # The files are intact (checksums passed) but disagree with each other or with the
            # config: a hand-edited manifest, or parts written by an incompatible version.
            raise ModelFileError(
                f"{path}: the model's parts do not fit together ({type(exc).__name__}: {exc}); "
                "re-save it with this driftrank"
            ) from exc


# ---------------------------------------------------------------------- helpers
def _default_quotas(names: list[str]) -> tuple[tuple[str, float], ...]:
    # The retrieval defaults tuned on the ml-100k validation split (docs/retrieval.md), plus the
    # interest channel, which finds targets the CF channels miss but is weaker alone.
    base = {"covisit": 3.0, "als": 1.0, "lightfm": 1.0, "bpr": 1.0, "pop": 0.1, "interest": 0.5}
    return tuple((n, base.get(n, 1.0)) for n in names)


def _drop_items(r: Ranking, drop: np.ndarray) -> Ranking:
    """``r`` without the items where ``drop: bool[n_items]``, each row closing up (order kept)."""
    valid = r.items >= 0
    gone = np.zeros(r.items.shape, dtype=bool)
    gone[valid] = drop[r.items[valid]]
    if not gone.any():
        return r
    keep = valid & ~gone
    order = np.argsort(~keep, axis=1, kind="stable")  # kept entries first, in their order
    items = np.take_along_axis(np.where(keep, r.items, -1), order, axis=1)
    scores = np.take_along_axis(np.where(keep, r.scores, np.nan), order, axis=1)
    return Ranking(items, scores.astype(np.float32))


def _only_items(cands: Candidates, only: np.ndarray, exclude: sp.csr_matrix | None) -> Candidates:
    """Each user's candidates narrowed to the items ``only: int[m]`` (distinct), with the ones
    retrieval did not return added after the others, their channel scores and ranks missing
    (as for any item a channel did not retrieve). Items ``exclude`` (CSR, row = user index)
    marks for a user are left out."""
    wanted = np.zeros(int(max(only.max(), cands.items.max(initial=-1))) + 1, dtype=bool)
    wanted[only] = True
    parts_rows: list[np.ndarray] = []
    parts_new: list[np.ndarray] = []
    counts = np.zeros(len(cands.users), dtype=np.int64)
    for j, u in enumerate(cands.users.tolist()):
        sl = cands.of(j)
        rows = sl.start + np.flatnonzero(wanted[cands.items[sl]])
        new = np.setdiff1d(only, cands.items[rows], assume_unique=True)
        if exclude is not None and u < exclude.shape[0] and len(new):
            seen = exclude.indices[exclude.indptr[u] : exclude.indptr[u + 1]]
            new = new[~np.isin(new, seen)]
        parts_rows.append(rows)
        parts_new.append(new)
        counts[j] = len(rows) + len(new)
    offsets = np.zeros(len(cands.users) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    total, n_src = int(offsets[-1]), len(cands.sources)
    items = np.empty(total, dtype=np.int64)
    scores = np.full((total, n_src), np.nan, dtype=np.float32)
    ranks = np.full((total, n_src), np.nan, dtype=np.float32)
    for j, (rows, new) in enumerate(zip(parts_rows, parts_new, strict=True)):
        lo, mid = int(offsets[j]), int(offsets[j]) + len(rows)
        items[lo:mid], scores[lo:mid], ranks[lo:mid] = (
            cands.items[rows],
            cands.scores[rows],
            cands.ranks[rows],
        )
        items[mid : offsets[j + 1]] = new
    return Candidates(cands.users, offsets, items, scores, ranks, cands.sources)


def _reserve_cold(
    cands: Candidates, listed: Ranking, column: int, cold: np.ndarray, slots: int, n: int
) -> Candidates:
    """Make sure each user's first ``slots`` cold items of ``listed`` are among their candidates.

    ``listed``: one channel's ranking (rows aligned with ``cands.users``) whose scores and ranks
    fill column ``column`` of the added rows (the other sources are NaN: they did not retrieve
    them). ``cold: bool[n_items]``. Added items go last; when a user would exceed ``n``
    candidates, the merged list loses its tail to them.
    """
    items = listed.items
    valid = items >= 0
    is_cold = np.zeros(items.shape, dtype=bool)
    is_cold[valid] = cold[items[valid]]
    if not is_cold.any():
        return cands
    n_src = len(cands.sources)
    keep_rows: list[np.ndarray] = []
    add_items: list[np.ndarray] = []
    add_pos: list[np.ndarray] = []
    counts = np.zeros(len(cands), dtype=np.int64)
    for j in range(len(cands)):
        sl = cands.of(j)
        pos = np.flatnonzero(is_cold[j])[:slots]
        pos = pos[~np.isin(items[j, pos], cands.items[sl])]
        keep = min(sl.stop - sl.start, n - len(pos))
        keep_rows.append(np.arange(sl.start, sl.start + keep))
        add_items.append(items[j, pos])
        add_pos.append(pos)
        counts[j] = keep + len(pos)
    total = int(counts.sum())
    out_items = np.empty(total, dtype=np.int64)
    out_scores = np.full((total, n_src), np.nan, dtype=np.float32)
    out_ranks = np.full((total, n_src), np.nan, dtype=np.float32)
    offsets = np.zeros(len(cands) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    for j in range(len(cands)):
        lo, kept, pos = int(offsets[j]), keep_rows[j], add_pos[j]
        mid = lo + len(kept)
        out_items[lo:mid] = cands.items[kept]
        out_scores[lo:mid] = cands.scores[kept]
        out_ranks[lo:mid] = cands.ranks[kept]
        out_items[mid : offsets[j + 1]] = add_items[j]
        out_scores[mid : offsets[j + 1], column] = listed.scores[j, pos]
        out_ranks[mid : offsets[j + 1], column] = pos.astype(np.float32)
    return Candidates(cands.users, offsets, out_items, out_scores, out_ranks, cands.sources)


def _first_seen(ds: Dataset) -> np.ndarray:
    out = np.full(ds.n_items, np.inf)
    np.minimum.at(out, ds.item_index, ds.timestamps)
    out[np.isinf(out)] = np.nan
    return out


def _check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise DataError(f"k must be a positive integer, got {k!r}")
    return int(k)


# Times at or beyond this many seconds from 1970 (the year 5138) are refused: they are
# milliseconds or finer (which the file loaders convert by column, but one number cannot say
# which it is), or garbage that would overflow the time-gap features.
_MAX_SECONDS = 1e11


def _check_time(value: object, what: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise DataError(f"{what} must be unix seconds (a number), got {value!r:.80}")
    try:
        v = float(value)
    except OverflowError:  # an int beyond the float range
        v = math.inf
    if not math.isfinite(v):
        raise DataError(f"{what} must be a finite number of unix seconds, got {value!r:.80}")
    if abs(v) >= _MAX_SECONDS:
        raise DataError(
            f"{what} must be unix seconds (below {_MAX_SECONDS:.0e} in magnitude), got {value!r:.80}; "
            "a value this large is milliseconds or finer: divide it to seconds"
        )
    return v


def _events_to_lists(events: Any) -> tuple[list[object], list[object], list[float]]:
    if isinstance(events, pl.DataFrame) or type(events).__module__.startswith("pandas"):
        from driftrank.data._dataset import _to_polars

        frame = _to_polars(events, "events")
        missing = [c for c in ("user_id", "item_id", "timestamp") if c not in frame.columns]
        if missing:
            raise DataError(f"events frame is missing column(s) {missing}; found {frame.columns}")
        users = frame["user_id"].to_list()
        items = frame["item_id"].to_list()
        times = frame["timestamp"].to_list()
    else:
        if isinstance(events, (str, bytes)) or not isinstance(events, Iterable):
            raise DataError(
                f"events must be a frame or an iterable of (user_id, item_id, timestamp), got {type(events).__name__}"
            )
        users, items, times = [], [], []
        for j, e in enumerate(events):
            if not (isinstance(e, (tuple, list)) and len(e) == 3):
                raise DataError(f"event {j} must be a (user_id, item_id, timestamp) tuple, got {e!r}")
            users.append(e[0])
            items.append(e[1])
            times.append(e[2])
    for j, (u, i) in enumerate(zip(users, items, strict=True)):
        if u is None or i is None:
            raise DataError(f"event {j} has a missing user or item id")
    return users, items, [_check_time(t, f"timestamp of event {j}") for j, t in enumerate(times)]
