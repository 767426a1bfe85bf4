"""Re-ranking: item texts → vectors, time-decayed interest, and the trained re-rankers.

Torch, sentence-transformers, faiss and transformers are imported only by the objects that
need them, when they are first used.
"""

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
    "SentenceEncoder",
    "SentenceEncoderConfig",
    "TextEncoder",
    "decay_weights",
    "position_weights",
]
