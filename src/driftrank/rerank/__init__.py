"""Re-ranking: item texts → vectors, time-decayed interest, and the trained re-rankers.

Names load lazily, on first access: ``import driftrank.rerank`` pulls in none of torch,
sentence-transformers, faiss, transformers or polars, so the LLM re-ranker can be used where
only torch and transformers are installed (a GPU scoring box).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CachedEncoder": "_encoder",
    "EmbeddingCache": "_encoder",
    "HashingEncoder": "_encoder",
    "HashingEncoderConfig": "_encoder",
    "SentenceEncoder": "_encoder",
    "SentenceEncoderConfig": "_encoder",
    "TextEncoder": "_encoder",
    "ItemIndex": "_index",
    "ItemIndexConfig": "_index",
    "InterestConfig": "_interest",
    "InterestModel": "_interest",
    "decay_weights": "_interest",
    "position_weights": "_interest",
    "InterestChannel": "_interest_channel",
    "InterestChannelConfig": "_interest_channel",
    "SequenceReranker": "_model",
    "SequenceRerankerConfig": "_model",
    "SASRec": "_sasrec",
    "SASRecConfig": "_sasrec",
    "LLMExample": "_llm",
    "LLMQuery": "_llm",
    "LLMReranker": "_llm",
    "LLMRerankerConfig": "_llm",
    "build_llm_examples": "_llm",
    "build_llm_queries": "_llm",
}

__all__ = [
    "CachedEncoder",
    "EmbeddingCache",
    "HashingEncoder",
    "HashingEncoderConfig",
    "InterestChannel",
    "InterestChannelConfig",
    "InterestConfig",
    "InterestModel",
    "ItemIndex",
    "ItemIndexConfig",
    "LLMExample",
    "LLMQuery",
    "LLMReranker",
    "LLMRerankerConfig",
    "SASRec",
    "SASRecConfig",
    "SentenceEncoder",
    "SentenceEncoderConfig",
    "SequenceReranker",
    "SequenceRerankerConfig",
    "TextEncoder",
    "build_llm_examples",
    "build_llm_queries",
    "decay_weights",
    "position_weights",
]

if TYPE_CHECKING:
    from driftrank.rerank._encoder import (
        CachedEncoder,
        EmbeddingCache,
        HashingEncoder,
        HashingEncoderConfig,
        SentenceEncoder,
        SentenceEncoderConfig,
        TextEncoder,
    )
    from driftrank.rerank._index import ItemIndex, ItemIndexConfig
    from driftrank.rerank._interest import InterestConfig, InterestModel, decay_weights, position_weights
    from driftrank.rerank._interest_channel import InterestChannel, InterestChannelConfig
    from driftrank.rerank._llm import (
        LLMExample,
        LLMQuery,
        LLMReranker,
        LLMRerankerConfig,
        build_llm_examples,
        build_llm_queries,
    )
    from driftrank.rerank._model import SequenceReranker, SequenceRerankerConfig
    from driftrank.rerank._sasrec import SASRec, SASRecConfig


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"driftrank.rerank.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'driftrank.rerank' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
