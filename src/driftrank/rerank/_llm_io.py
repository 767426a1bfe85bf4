"""LLM queries and examples in one ``.npz`` file (no pickle), to score them on another machine.

The engine builds the LLM's inputs from everything it has fitted; the LLM only needs texts,
times and interest vectors. Writing those out lets a GPU box with nothing but torch and
transformers fine-tune and score them (``benchmarks/bench_llm_gpu.py``), and the scores come
back keyed by :func:`query_key`. Importing this module loads numpy only.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from driftrank._atomic import atomic_path
from driftrank.errors import DataError, ModelFileError
from driftrank.rerank._llm import LLMExample, LLMQuery

__all__ = ["LLMRecorder", "LLMScoreTable", "load_llm_batch", "query_key", "save_llm_batch"]

FORMAT = "driftrank-llm-batch"
VERSION = 1


def query_key(q: LLMQuery) -> str:
    """A content hash of what the LLM sees in ``q`` (history, times, candidates, interest)."""
    h = hashlib.sha256()
    head = [q.key, repr(q.at), list(q.history), [repr(float(t)) for t in q.history_times], list(q.candidates)]
    h.update(json.dumps(head, ensure_ascii=False).encode("utf-8"))
    if q.interest is not None:
        h.update(np.ascontiguousarray(q.interest, dtype=np.float32).tobytes())
    return h.hexdigest()[:32]


def _pack(queries: Sequence[LLMQuery], prefix: str) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    meta: list[dict[str, Any]] = []
    vecs: list[np.ndarray] = []
    for q in queries:
        meta.append(
            {
                "history": list(q.history),
                "history_times": [float(t) for t in q.history_times],
                "at": q.at,
                "candidates": list(q.candidates),
                "key": q.key,
                "interest": None if q.interest is None else len(vecs),
            }
        )
        if q.interest is not None:
            vecs.append(np.asarray(q.interest, dtype=np.float32))
    shapes = {v.shape for v in vecs}
    if len(shapes) > 1:
        raise DataError(f"interest vectors of one batch must share a shape, got {sorted(shapes)}")
    arr = np.stack(vecs) if vecs else np.zeros((0, 1, 1), np.float32)
    return meta, {f"{prefix}_interest": arr}


def _unpack(meta: list[dict[str, Any]], vecs: np.ndarray) -> list[LLMQuery]:
    return [
        LLMQuery(
            history=m["history"],
            history_times=np.asarray(m["history_times"], dtype=np.float64),
            at=m["at"],
            candidates=m["candidates"],
            interest=None if m["interest"] is None else vecs[int(m["interest"])],
            key=m["key"],
        )
        for m in meta
    ]


def save_llm_batch(
    path: str | os.PathLike[str],
    *,
    queries: Sequence[LLMQuery] = (),
    examples: Sequence[LLMExample] = (),
    info: dict[str, Any] | None = None,
) -> Path:
    """Write ``queries`` and ``examples`` (and a JSON-able ``info`` dict) to ``path`` atomically."""
    qmeta, arrays = _pack(queries, "q")
    emeta, earr = _pack([e.query for e in examples], "e")
    for m, e in zip(emeta, examples, strict=True):
        m["target"] = e.target
    arrays.update(earr)
    doc = {"format": FORMAT, "version": VERSION, "queries": qmeta, "examples": emeta, "info": info or {}}
    arrays["meta"] = np.array(json.dumps(doc, ensure_ascii=False))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
    return Path(path)


def load_llm_batch(path: str | os.PathLike[str]) -> tuple[list[LLMQuery], list[LLMExample], dict[str, Any]]:
    """Read a file of :func:`save_llm_batch`: ``(queries, examples, info)``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            doc = json.loads(str(z["meta"]))
            qv, ev = z["q_interest"], z["e_interest"]
    except (OSError, KeyError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a driftrank LLM batch ({exc})") from None
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ModelFileError(
            f"{path}: format {doc.get('format')!r} v{doc.get('version')}, expected {FORMAT} v{VERSION}"
        )
    queries = _unpack(doc["queries"], qv)
    eq = _unpack(doc["examples"], ev)
    examples = [LLMExample(q, int(m["target"])) for q, m in zip(eq, doc["examples"], strict=True)]
    return queries, examples, doc.get("info", {})


class LLMRecorder:
    """Stands in for the LM while the engine fits and ranks: keeps every fine-tuning example
    (validation ones last, ``n_validation`` of them) and every distinct query it is asked,
    and scores every candidate 0. What it holds goes to :func:`save_llm_batch`."""

    def __init__(self, config: Any = None) -> None:
        self.config = config
        self.train_log_: list[dict[str, float]] = []
        self.examples: list[LLMExample] = []
        self.n_validation = 0
        self.queries: dict[str, LLMQuery] = {}

    def fit(
        self, examples: Sequence[LLMExample], validation: Sequence[LLMExample] | None = None, **kwargs: Any
    ) -> LLMRecorder:
        """Keep the examples, the validation ones last."""
        self.examples = list(examples) + list(validation or [])
        self.n_validation = len(validation or [])
        return self

    def score(self, queries: Sequence[LLMQuery], **kwargs: Any) -> list[np.ndarray]:
        """Keep each query (by :func:`query_key`); zeros as scores."""
        for q in queries:
            self.queries.setdefault(query_key(q), q)
        return [np.zeros(len(q.candidates), np.float32) for q in queries]


class LLMScoreTable:
    """Scores computed elsewhere, served by query content: an object with the ``score`` and
    ``fit`` of an LLM re-ranker for the engine's LLM stage (``fit`` does nothing; the scores
    are of a model fine-tuned on the recorded examples). A query not in the table is an error."""

    def __init__(self, scores: dict[str, np.ndarray], config: Any = None) -> None:
        self.scores = scores
        self.config = config
        self.train_log_: list[dict[str, float]] = []
        self.fitted_ = True

    def fit(self, examples: Sequence[LLMExample], **kwargs: Any) -> LLMScoreTable:
        """Nothing to train: the scores come from a model fine-tuned elsewhere."""
        return self

    def score(self, queries: Sequence[LLMQuery], **kwargs: Any) -> list[np.ndarray]:
        """The stored ``float32[len(q.candidates)]`` of each query (``DataError`` when missing)."""
        out = []
        for q in queries:
            k = query_key(q)
            if k not in self.scores:
                raise DataError(f"no stored LLM score for the query of user key {q.key} at {q.at:.0f}")
            s = self.scores[k]
            if len(s) != len(q.candidates):
                raise DataError(
                    f"stored scores for user key {q.key} have {len(s)} entries, the query {len(q.candidates)}"
                )
            out.append(s)
        return out

    @staticmethod
    def save(path: str | os.PathLike[str], keys: Sequence[str], scores: Sequence[np.ndarray]) -> Path:
        """Write ``keys`` with their score arrays to an ``.npz`` (no pickle), atomically."""
        lens = np.array([len(s) for s in scores], dtype=np.int64)
        flat = (
            np.concatenate([np.asarray(s, np.float32) for s in scores])
            if len(scores)
            else np.zeros(0, np.float32)
        )
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, keys=np.array(list(keys), dtype=str), lengths=lens, scores=flat)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], config: Any = None) -> LLMScoreTable:
        """Read a file of :meth:`save` (``ModelFileError`` when it is not one)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                keys, lens, flat = z["keys"].tolist(), z["lengths"], z["scores"]
        except (OSError, KeyError, ValueError) as exc:
            raise ModelFileError(f"{path}: not an LLM score file ({exc})") from None
        if int(lens.sum()) != len(flat) or len(keys) != len(lens):
            raise ModelFileError(f"{path}: lengths do not add up to the stored scores")
        parts = np.split(flat, np.cumsum(lens)[:-1]) if len(lens) else []
        return cls(dict(zip(keys, parts, strict=True)), config)
