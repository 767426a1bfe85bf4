"""Factories behind the registered pipeline names (imported only when a pipeline is built)."""

from __future__ import annotations

from typing import Any

from driftrank.errors import ConfigError
from driftrank.retrieval import PopularityConfig, PopularityRanker
from driftrank.types import Ranker


def _config(cls: type, params: dict[str, Any]) -> Any:
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from None


def popularity(params: dict[str, Any], seed: int) -> Ranker:
    """``pop``: most interacted items."""
    return PopularityRanker(_config(PopularityConfig, params))


def popularity_recent(params: dict[str, Any], seed: int) -> Ranker:
    """``pop-recent``: popularity with a 30-day half-life unless ``half_life_days`` is given."""
    return PopularityRanker(_config(PopularityConfig, {"half_life_days": 30.0, **params}))


def _channel(kind: str, params: dict[str, Any], seed: int) -> Ranker:
    from driftrank import retrieval

    classes = {
        "als": (retrieval.ALSChannel, retrieval.ALSConfig),
        "bpr": (retrieval.BPRChannel, retrieval.BPRConfig),
        "lightfm": (retrieval.LightFMChannel, retrieval.LightFMConfig),
        "covisit": (retrieval.CovisitChannel, retrieval.CovisitConfig),
    }
    channel_cls, config_cls = classes[kind]
    import dataclasses

    if "random_state" in {f.name for f in dataclasses.fields(config_cls)}:
        params = {"random_state": seed, **params}
    return channel_cls(_config(config_cls, params))  # type: ignore[no-any-return]


def als(params: dict[str, Any], seed: int) -> Ranker:
    """``als``: implicit ALS with time-decayed confidence."""
    return _channel("als", params, seed)


def bpr(params: dict[str, Any], seed: int) -> Ranker:
    """``bpr``: implicit BPR."""
    return _channel("bpr", params, seed)


def lightfm(params: dict[str, Any], seed: int) -> Ranker:
    """``lightfm``: LightFM WARP with item and user features."""
    return _channel("lightfm", params, seed)


def covisit(params: dict[str, Any], seed: int) -> Ranker:
    """``covisit``: co-visitation of the user's most recent items."""
    return _channel("covisit", params, seed)


def _engine(params: dict[str, Any], seed: int, **overrides: Any) -> Ranker:
    from driftrank.engine._config import EngineConfig
    from driftrank.engine._ranker import EngineRanker

    for key, value in overrides.items():
        if key in params and params[key] != value:
            raise ConfigError(
                f"this pipeline kind sets {key}={value!r}; its params ask for {key}={params[key]!r} "
                "(use the matching pipeline kind instead)"
            )
    data = {"seed": seed, **params, **overrides}
    return EngineRanker(EngineConfig.from_dict(data))


def hybrid(params: dict[str, Any], seed: int) -> Ranker:
    """``hybrid``: retrieval → re-rank → learned gated fusion (the full engine)."""
    return _engine(params, seed)


def hybrid_llm(params: dict[str, Any], seed: int) -> Ranker:
    """``hybrid-llm``: the hybrid plus a causal LM's score of each user's top candidates as a
    fusion signal (``llm`` params: an :class:`~driftrank.engine.LLMStageConfig` table)."""
    return _engine({"llm": {}, **params}, seed)


def hybrid_linear(params: dict[str, Any], seed: int) -> Ranker:
    """``hybrid-linear``: the engine with a logistic linear fusion instead of the gated layer."""
    return _engine(params, seed, fusion="linear")


def hybrid_rrf(params: dict[str, Any], seed: int) -> Ranker:
    """``hybrid-rrf``: the engine's candidates fused by reciprocal rank (no training)."""
    return _engine(params, seed, fusion="rrf")


def rerank(params: dict[str, Any], seed: int) -> Ranker:
    """``rerank``: merged retrieval candidates ordered by the sequence re-ranker alone."""
    return _engine(params, seed, fusion="reranker")


def sasrec(params: dict[str, Any], seed: int) -> Ranker:
    """``sasrec``: the self-attentive sequential recommender (full softmax, full ranking)."""
    from driftrank.rerank._sasrec import SASRec, SASRecConfig

    return SASRec(_config(SASRecConfig, {"seed": seed, **params}))
