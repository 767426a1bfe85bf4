"""Re-ranking: item texts → vectors, time-decayed interest, and the trained re-rankers.

Names load lazily, on first access: ``import driftrank.rerank`` pulls in none of torch,
sentence-transformers, faiss, transformers or polars, so the LLM re-ranker can be used where
only torch and transformers are installed (a GPU scoring box).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from driftrank._lazy import lazy_exports

_EXPORTS = {
    "CachedEncoder": "driftrank.rerank._encoder",
    "EmbeddingCache": "driftrank.rerank._encoder",
    "HashingEncoder": "driftrank.rerank._encoder",
    "HashingEncoderConfig": "driftrank.rerank._encoder",
    "SentenceEncoder": "driftrank.rerank._encoder",
    "SentenceEncoderConfig": "driftrank.rerank._encoder",
    "TextEncoder": "driftrank.rerank._encoder",
    "ItemIndex": "driftrank.rerank._index",
    "ItemIndexConfig": "driftrank.rerank._index",
    "InterestConfig": "driftrank.rerank._interest",
    "InterestModel": "driftrank.rerank._interest",
    "decay_weights": "driftrank.rerank._interest",
    "position_weights": "driftrank.rerank._interest",
    "InterestChannel": "driftrank.rerank._interest_channel",
    "InterestChannelConfig": "driftrank.rerank._interest_channel",
    "SequenceReranker": "driftrank.rerank._model",
    "SequenceRerankerConfig": "driftrank.rerank._model",
    "SASRec": "driftrank.rerank._sasrec",
    "SASRecConfig": "driftrank.rerank._sasrec",
    "LLMExample": "driftrank.rerank._llm",
    "LLMQuery": "driftrank.rerank._llm",
    "LLMReranker": "driftrank.rerank._llm",
    "LLMRerankerConfig": "driftrank.rerank._llm",
    "build_llm_examples": "driftrank.rerank._llm",
    "build_llm_queries": "driftrank.rerank._llm",
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


__getattr__, __dir__ = lazy_exports("driftrank.rerank", _EXPORTS, globals())
