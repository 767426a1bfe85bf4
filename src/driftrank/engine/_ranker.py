"""The engine behind the index-level protocols the benchmark and the replay tool use."""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from driftrank.data import Dataset
from driftrank.engine._config import EngineConfig
from driftrank.engine._engine import Engine
from driftrank.types import Candidates, Ranking

__all__ = ["EngineRanker"]


class EngineRanker:
    """An :class:`Engine` as a :class:`~driftrank.types.Ranker` over item indices.

    Also exposes ``candidates`` (for candidate recall), ``observe`` (for chronological replay),
    ``channel_recall`` and ``report`` (what the benchmark records).
    """

    def __init__(self, config: EngineConfig | None = None, *, llm: Any = None) -> None:
        """``llm``: passed to :class:`Engine` (a re-ranker object for ``config.llm``)."""
        self.config = config or EngineConfig()
        self.llm = llm
        self.engine: Engine | None = None

    def _e(self) -> Engine:
        if self.engine is None:
            from driftrank.errors import NotFittedError

            raise NotFittedError("EngineRanker used before fit")
        return self.engine

    def fit(self, dataset: Dataset) -> Self:
        """Fit a fresh engine on ``dataset``."""
        self.engine = Engine(self.config, llm=self.llm).fit(dataset)
        return self

    def derive(self, config: EngineConfig) -> EngineRanker | None:
        """A fitted ranker for ``config`` that reuses this fitted engine, or ``None``.

        Possible when ``config`` equals this one except ``fusion="reranker"`` (the re-ranker's
        score alone, pipeline ``rerank``): fitting is deterministic for a seed and the fusion
        step runs after every component is fitted and changes none of them, so the components
        are exactly those a fresh fit of ``config`` would produce. The engine is shallow-copied
        with the fuser removed; it shares the components, so neither may ``observe`` afterwards.
        """
        import copy
        import dataclasses

        if (
            self.engine is None
            or not isinstance(config, EngineConfig)  # another pipeline kind (a CF channel, SASRec)
            or config.fusion != "reranker"
            or self.config.fusion == "reranker"
        ):
            return None
        # Equal but for ``fusion``; EngineConfig refuses fusion="reranker" without a re-ranker.
        if dataclasses.replace(config, fusion=self.config.fusion) != self.config:
            return None
        view = copy.copy(self.engine)
        view.config = config
        view._fuser = None
        view._fusion_data = None
        out = EngineRanker(config)
        out.engine = view
        return out

    def rank(
        self, users: np.ndarray, k: int, *, exclude: sp.csr_matrix | None = None, at: np.ndarray | None = None
    ) -> Ranking:
        """Top-``k`` item indices for user indices ``users`` (fused scores)."""
        e = self._e()
        with e._lock.read():
            return e._rank_indices(np.asarray(users, dtype=np.int64), k, at, exclude)[0]

    def candidates(
        self, users: np.ndarray, n: int, *, exclude: sp.csr_matrix | None = None, at: np.ndarray | None = None
    ) -> Candidates:
        """The merged retrieval candidates (before re-ranking)."""
        e = self._e()
        with e._lock.read():
            return e._candidates(np.asarray(users, dtype=np.int64), at, exclude=exclude, n=n)

    def signals(
        self,
        users: np.ndarray,
        n: int | None = None,
        *,
        exclude: sp.csr_matrix | None = None,
        at: np.ndarray | None = None,
    ) -> Any:
        """The :class:`~driftrank.fusion.FusionInput` the engine scores for ``users``: merged
        candidates (``n``, default the configured number) with every signal the fuser reads."""
        e = self._e()
        with e._lock.read():
            users = np.asarray(users, dtype=np.int64)
            return e._fusion_input(e._candidates(users, at, exclude=exclude, n=n), at)

    def fusion_training_data(self) -> tuple[Any, np.ndarray]:
        """``(FusionInput, targets int64[n_users])`` the fusion layer was trained on in ``fit``
        (each user's held-out last event); not available for a loaded engine."""
        from driftrank.errors import NotFittedError

        data = self._e()._fusion_data
        if data is None:
            raise NotFittedError("no fusion training data: the engine was loaded, or has no trained fuser")
        return data

    def channel_recall(
        self,
        users: np.ndarray,
        targets: np.ndarray,
        exclude: sp.csr_matrix | None,
        at: np.ndarray | None,
        ns: tuple[int, ...] = (50, 100, 200),
    ) -> dict[str, dict[str, float]]:
        """Candidate recall of each channel alone at each N."""
        e = self._e()
        out: dict[str, dict[str, float]] = {}
        users = np.asarray(users, dtype=np.int64)
        channels: list[Any] = list(e._merger.channels) if e._merger is not None else []
        if e._interest is not None:
            channels.append(e._interest)
        with e._lock.read():
            for ch in channels:
                r = ch.candidates(users, max(ns), exclude=exclude, at=at)
                out[ch.name] = {
                    str(n): float((r.items[:, :n] == targets[:, None]).any(axis=1).mean()) for n in ns
                }
        return out

    def observe(self, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray) -> None:
        """Take events given as indices (new user indices must come in order)."""
        e = self._e()
        with e._lock.write():
            st = e._require()
            users = np.asarray(users, dtype=np.int64)
            if len(users) and users.max() >= len(st.user_ids):
                new = np.arange(len(st.user_ids), int(users.max()) + 1)
                st.user_ids = st.user_ids.extend(
                    [f"~user{u}" for u in new] if not st.user_ids.is_integer else [int(-1 - u) for u in new]
                )
            e._observe_indices(
                users, np.asarray(items, dtype=np.int64), np.asarray(timestamps, dtype=np.float64)
            )

    def report(self) -> dict[str, Any]:
        """The engine's fit report (seconds per stage, held-out recall, fusion training)."""
        return self._e().fit_report
