"""The LLM stage of the engine: a causal LM scores each user's best candidates, one more
signal for the fusion layer (pipeline ``hybrid-llm``).

Per request the stage takes the user's ``top`` candidates by the sequence re-ranker's score
(by the merged retrieval order without a re-ranker), asks the
:class:`~driftrank.rerank.LLMReranker` for their log-lift (one forward pass per window of 20),
and hands the fusion layer a signal ``llm`` that is NaN for the other candidates, so the layer
learns both what the score means and what "not scored" means.

Training never sees the events the fusion layer learns from: the LM is fine-tuned on the last
``train_positions`` events of each user *before* the engine's held-out step, with that step's
history and the engine's own candidates (the target put in when retrieval missed it).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from driftrank.errors import ConfigError, DataError
from driftrank.rerank._llm import LLMRerankerConfig

if TYPE_CHECKING:
    from driftrank.data import Dataset
    from driftrank.engine._engine import Engine
    from driftrank.rerank._llm import LLMExample, LLMQuery
    from driftrank.types import Candidates

log = logging.getLogger(__name__)

__all__ = ["LLMStage", "LLMStageConfig"]


@dataclass(frozen=True)
class LLMStageConfig:
    """The engine's LLM stage (``EngineConfig.llm``; ``None`` there = no LLM).

    Attributes:
        reranker: the :class:`~driftrank.rerank.LLMRerankerConfig` (model, prompt, LoRA,
            device). Its ``interest_dim`` and ``interest_tokens`` are set by the engine from its
            item vectors and interest scales (``interest_dim=None`` keeps the soft token off).
        top: candidates per user the LM scores, taken by the re-ranker's score (at most one
            window of ``reranker.window`` is cheapest; more are scored in windows).
        train_positions: next-item examples per user for fine-tuning, from the end of each
            user's history before the held-out step (0 = no fine-tuning: zero-shot).
        train_users: fine-tune on a seeded sample of this many users (``None`` = all).
        validation_examples: examples kept aside and scored after each epoch (train log only).
        text: item column shown to the LM: ``"title"`` (short) or ``"text"`` (with genres, tags).
    """

    reranker: LLMRerankerConfig = field(default_factory=LLMRerankerConfig)
    top: int = 20
    train_positions: int = 2
    train_users: int | None = None
    validation_examples: int = 128
    text: Literal["title", "text"] = "title"

    def __post_init__(self) -> None:
        if isinstance(self.reranker, dict):
            object.__setattr__(self, "reranker", LLMRerankerConfig.from_dict(self.reranker))
        if not isinstance(self.reranker, LLMRerankerConfig):
            raise ConfigError(
                f"llm.reranker must be an LLMRerankerConfig, got {type(self.reranker).__name__}"
            )
        for name, low in (("top", 2), ("train_positions", 0), ("validation_examples", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"llm.{name} must be an integer >= {low}, got {v!r}")
        if self.train_users is not None and (
            isinstance(self.train_users, bool)
            or not isinstance(self.train_users, int)
            or self.train_users < 1
        ):
            raise ConfigError(f"llm.train_users must be a positive integer or None, got {self.train_users!r}")
        if self.text not in ("title", "text"):
            raise ConfigError(f"llm.text must be 'title' or 'text', got {self.text!r}")


class LLMStage:
    """Builds the LM's queries from the engine's state, fine-tunes it, and scores windows.

    ``llm`` replaces the :class:`~driftrank.rerank.LLMReranker` built from the config: any
    object with ``fit(examples, validation=..., progress=...)``, ``score(queries)`` and, for
    ``save``, ``get_state()`` (a re-ranker around a model you built, say).
    """

    def __init__(self, config: LLMStageConfig, llm: Any = None) -> None:
        self.config = config
        self.llm = llm
        self.train_report_: dict[str, Any] = {}

    # -- wiring --------------------------------------------------------------------------------
    def reranker_config(self, engine: Engine) -> LLMRerankerConfig:
        """The LM config with the interest soft-token shape of ``engine``."""
        cfg = self.config.reranker
        if cfg.interest_dim is None or engine._interest is None:
            return dataclasses.replace(cfg, interest_dim=None)
        model = engine._interest.interest
        return dataclasses.replace(cfg, interest_dim=int(model.dim), interest_tokens=int(model.n_scales))

    def ensure_llm(self, engine: Engine) -> Any:
        """The re-ranker, built from the config on first use; a given one gets the engine's
        interest shape while its model is not loaded yet, and must match it afterwards."""
        from driftrank.rerank._llm import LLMReranker

        if self.llm is None:
            self.llm = LLMReranker(self.reranker_config(engine))
        elif isinstance(self.llm, LLMReranker):
            want = self.reranker_config(engine)
            have = self.llm.config
            shape = ("interest_dim", "interest_tokens")
            if any(getattr(have, f) != getattr(want, f) for f in shape):
                if self.llm._m is not None:
                    raise ConfigError(
                        f"the given LLM re-ranker takes interest {have.interest_tokens}x{have.interest_dim}, "
                        f"the engine makes {want.interest_tokens}x{want.interest_dim}: "
                        "pass a re-ranker whose model is not loaded yet"
                    )
                self.llm.config = dataclasses.replace(
                    have, interest_dim=want.interest_dim, interest_tokens=want.interest_tokens
                )
        return self.llm

    def _texts(self, engine: Engine) -> list[str]:
        st = engine._require()
        if self.config.text == "title":
            return engine._titles(st)
        texts: list[str] = st.items["text"].to_list()
        return texts

    def _uses_interest(self, engine: Engine) -> bool:
        cfg = getattr(self.llm, "config", None)
        dim = getattr(cfg, "interest_dim", self.config.reranker.interest_dim)
        return dim is not None and engine._interest is not None

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, engine: Engine, fit_part: Dataset, *, seed: int, progress: bool = False) -> None:
        """Fine-tune the LM on next-item examples from ``fit_part`` (see the module docstring)."""
        llm = self.ensure_llm(engine)
        cfg = self.config
        if cfg.train_positions == 0:
            self.train_report_ = {"examples": 0, "note": "zero-shot (train_positions=0)"}
            return
        examples = self.examples(engine, fit_part, seed=seed)
        if not examples:
            raise DataError(
                "no user has two events before the held-out step: nothing to fine-tune the LLM on"
            )
        rng = np.random.default_rng([seed, 0x11A])
        n_val = min(cfg.validation_examples, len(examples) // 10)
        order = rng.permutation(len(examples))
        val = [examples[i] for i in order[:n_val]]
        train = [examples[i] for i in sorted(order[n_val:])]
        llm.fit(train, validation=val or None, progress=progress)
        self.train_report_ = {
            "examples": len(train),
            "validation_examples": len(val),
            "log": list(getattr(llm, "train_log_", [])),
        }

    def examples(self, engine: Engine, fit_part: Dataset, *, seed: int) -> list[LLMExample]:
        """Fine-tuning examples: per user, each of the last ``train_positions`` events of
        ``fit_part`` as the target, the events before it as history, and as candidates the
        ``top`` of the engine's candidates by the re-ranker for that history (the target
        replaces a random one: every example has a label)."""
        from driftrank.rerank._llm import LLMExample

        cfg = self.config
        seqs = fit_part.sequences
        users = np.array([u for u in range(fit_part.n_users) if len(seqs.user(u)[0]) >= 2], dtype=np.int64)
        rng = np.random.default_rng([seed, 0x11B])
        if cfg.train_users is not None and len(users) > cfg.train_users:
            users = np.sort(rng.choice(users, cfg.train_users, replace=False))
        if not len(users):
            return []
        n = max(cfg.top * 5, min(100, engine.config.n_candidates))
        cands = engine._candidates(users, None, exclude=fit_part.seen, n=n, reserve_cold=False)
        texts = self._texts(engine)
        interest = engine._interest.interest if self._uses_interest(engine) else None
        out: list[LLMExample] = []
        for j, u in enumerate(users.tolist()):
            items, times = seqs.user(u)
            pool = cands.items[cands.of(j)]
            for p in range(len(items) - 1, max(0, len(items) - 1 - cfg.train_positions), -1):
                target, at = int(items[p]), float(times[p])
                hist_i, hist_t = items[:p], times[:p]
                window = self._window_for_history(engine, pool, hist_i, hist_t, at)
                window = window[window != target]
                if len(window) >= cfg.top:
                    window = window[: cfg.top]
                    window[rng.integers(len(window))] = target
                else:
                    window = np.insert(window, rng.integers(len(window) + 1), target)
                vec = None if interest is None else interest.vector_for_history(hist_i, hist_t, at)
                q = self._query(texts, hist_i, hist_t, at, window, vec, key=u)
                out.append(LLMExample(q, int(np.flatnonzero(window == target)[0])))
        return out

    def _window_for_history(
        self, engine: Engine, pool: np.ndarray, hist_i: np.ndarray, hist_t: np.ndarray, at: float
    ) -> np.ndarray:
        """The ``top`` items of ``pool`` by the re-ranker for a history given explicitly."""
        if engine._reranker is None or not len(pool):
            return pool[: self.config.top].copy()
        s = engine._reranker.score_history(hist_i, hist_t, pool, at)
        order = np.argsort(-s, kind="stable")[: self.config.top]
        return pool[order]

    def _query(
        self,
        texts: list[str],
        hist_i: np.ndarray,
        hist_t: np.ndarray,
        at: float,
        window: np.ndarray,
        interest: np.ndarray | None,
        key: int,
    ) -> LLMQuery:
        from driftrank.rerank._llm import LLMQuery

        h = self.config.reranker.max_history
        hist_i, hist_t = hist_i[-h:], hist_t[-h:]
        return LLMQuery(
            history=[texts[i] for i in hist_i.tolist()],
            history_times=np.minimum(hist_t, at),
            at=at,
            candidates=[texts[i] for i in window.tolist()],
            interest=interest,
            key=key,
        )

    # -- serving -------------------------------------------------------------------------------
    def signal(
        self, engine: Engine, cands: Candidates, at_u: np.ndarray, pre: np.ndarray | None
    ) -> np.ndarray:
        """``float64[m]``: the LM's log-lift of each user's ``top`` candidates by ``pre``
        (the re-ranker's scores; ``None`` = the merged order), NaN for the rest."""
        llm = self.ensure_llm(engine)
        st = engine._require()
        texts = self._texts(engine)
        out = np.full(len(cands.items), np.nan, dtype=np.float64)
        users = cands.users
        vecs = None
        if self._uses_interest(engine) and len(users):
            vecs = engine._interest.interest.vectors(users, at_u)
        queries: list[LLMQuery] = []
        rows: list[np.ndarray] = []
        for j, u in enumerate(users.tolist()):
            sl = cands.of(j)
            if sl.stop - sl.start == 0:
                continue
            if pre is None:
                pick = np.arange(sl.start, min(sl.stop, sl.start + self.config.top))
            else:
                s = pre[sl]
                pick = (
                    sl.start
                    + np.argsort(np.where(np.isfinite(s), -s, np.inf), kind="stable")[: self.config.top]
                )
            if u < st.log.n_users:
                hist_i, hist_t = st.log.user(u)
                keep = hist_t <= at_u[j]
                hist_i, hist_t = hist_i[keep], hist_t[keep]
            else:
                hist_i, hist_t = np.zeros(0, np.int64), np.zeros(0, np.float64)
            v = None
            if vecs is not None and len(hist_i):
                v = vecs[j]
            queries.append(self._query(texts, hist_i, hist_t, float(at_u[j]), cands.items[pick], v, key=u))
            rows.append(pick)
        if queries:
            for pick, s in zip(rows, llm.score(queries), strict=True):
                out[pick] = np.asarray(s, dtype=np.float64)
        return out

    # -- persistence -----------------------------------------------------------------------------
    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(config, arrays)`` of the fine-tuned LM (adapter and projection) and the training
        report; the base LM is reloaded from its name or path."""
        if self.llm is None or not hasattr(self.llm, "get_state"):
            raise ConfigError("the engine's LLM cannot be saved: it has no get_state()")
        cfg, arrays = self.llm.get_state()
        return {"llm": cfg, "train_report": _jsonable(self.train_report_)}, arrays

    @classmethod
    def from_state(
        cls, config: LLMStageConfig, state: dict[str, Any], arrays: dict[str, np.ndarray], llm: Any = None
    ) -> LLMStage:
        """Rebuild from :meth:`get_state` output; ``llm`` (a re-ranker built around a model you
        made) supplies the base model instead of loading ``config.reranker.model``."""
        from driftrank.rerank._llm import LLMReranker

        stage = cls(config)
        model = getattr(llm, "_given", (None, None)) if llm is not None else (None, None)
        stage.llm = LLMReranker.from_state(state["llm"], arrays, model=model[0], tokenizer=model[1])
        stage.train_report_ = dict(state.get("train_report", {}))
        return stage


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "item"):
        return x.item()
    return x
