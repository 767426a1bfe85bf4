"""The engine: the ranking API that composes retrieval, re-ranking and fusion."""

from driftrank.engine._config import EncoderConfig, EngineConfig
from driftrank.engine._engine import Engine, RankResult
from driftrank.engine._explain import Explanation
from driftrank.engine._export import WriteSummary, write_rankings
from driftrank.engine._llm_stage import LLMStageConfig
from driftrank.engine._malloc import tune_malloc

__all__ = [
    "EncoderConfig",
    "Engine",
    "EngineConfig",
    "Explanation",
    "LLMStageConfig",
    "RankResult",
    "WriteSummary",
    "tune_malloc",
    "write_rankings",
]
