"""Named pipelines: how the benchmark and the replay tool build a ranker from a name + params."""

from __future__ import annotations

import importlib
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driftrank.errors import ConfigError
from driftrank.types import Ranker

__all__ = ["PIPELINES", "PipelineSpec", "build_pipeline", "describe", "register_pipeline"]

Factory = Callable[[dict[str, Any], int], Ranker]


@dataclass(frozen=True)
class PipelineSpec:
    """A pipeline to benchmark: a display ``name``, the registered ``kind``, and its ``params``.

    Read from TOML::

        name = "als-64"
        kind = "als"
        [params]
        factors = 64
    """

    name: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> PipelineSpec:
        """A registered name (``"als"``) or the path of a TOML file."""
        p = Path(text)
        if p.suffix == ".toml" or p.is_file():
            return cls.from_toml(p)
        return cls(text, text, {})

    @classmethod
    def from_toml(cls, path: str | Path) -> PipelineSpec:
        """Load a pipeline spec from a TOML file (keys ``name``, ``kind``, table ``params``)."""
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{p}: cannot read pipeline config ({exc})") from None
        if "kind" not in data:
            raise ConfigError(f"{p}: a pipeline config needs a 'kind' (one of {sorted(PIPELINES)})")
        unknown = set(data) - {"name", "kind", "params"}
        if unknown:
            raise ConfigError(f"{p}: unknown key(s) {sorted(unknown)}; expected name, kind, [params]")
        return cls(str(data.get("name", data["kind"])), str(data["kind"]), dict(data.get("params", {})))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, recorded in results."""
        return {"name": self.name, "kind": self.kind, "params": self.params}


# kind -> "module:function"; the function takes (params, seed) and returns an unfitted Ranker.
# Imports are deferred so that listing pipelines stays cheap.
PIPELINES: dict[str, str] = {
    "pop": "driftrank.bench._factories:popularity",
    "pop-recent": "driftrank.bench._factories:popularity_recent",
    "als": "driftrank.bench._factories:als",
    "bpr": "driftrank.bench._factories:bpr",
    "lightfm": "driftrank.bench._factories:lightfm",
    "covisit": "driftrank.bench._factories:covisit",
    "hybrid": "driftrank.bench._factories:hybrid",
    "hybrid-llm": "driftrank.bench._factories:hybrid_llm",
    "hybrid-linear": "driftrank.bench._factories:hybrid_linear",
    "hybrid-rrf": "driftrank.bench._factories:hybrid_rrf",
    "rerank": "driftrank.bench._factories:rerank",
    "sasrec": "driftrank.bench._factories:sasrec",
}


def register_pipeline(kind: str, target: str | Factory) -> None:
    """Register a pipeline kind: a ``"module:function"`` path or a factory ``(params, seed) -> Ranker``."""
    if isinstance(target, str) and ":" not in target:
        raise ConfigError(f"pipeline target must be 'module:function', got {target!r}")
    _CUSTOM[kind] = target


_CUSTOM: dict[str, str | Factory] = {}


def available() -> list[str]:
    """Every registered pipeline kind."""
    return sorted({*PIPELINES, *_CUSTOM})


def describe(kind: str) -> str:
    """One line on what the pipeline ``kind`` is (its factory's docstring, without the name)."""
    target = _target(kind)
    doc = (target.__doc__ or "").strip()
    first = " ".join(doc.split("\n\n", 1)[0].split())
    # Factory docstrings start with ``kind``:, and may hold reST roles and literals.
    if first.startswith("``") and ": " in first:
        first = first.split(": ", 1)[1]
    first = re.sub(r":\w+:`~?(?:[\w.]+\.)?(\w+)`", r"\1", first)
    return first.replace("``", "")


def _target(kind: str) -> Factory:
    target: str | Factory | None = _CUSTOM.get(kind) or PIPELINES.get(kind)
    if target is None:
        raise ConfigError(f"unknown pipeline {kind!r}; expected one of {available()}")
    if isinstance(target, str):
        mod, _, fn = target.partition(":")
        target = getattr(importlib.import_module(mod), fn)
    assert callable(target)
    return target


def build_pipeline(spec: PipelineSpec, seed: int = 0) -> Ranker:
    """Instantiate the (unfitted) ranker of ``spec``."""
    return _target(spec.kind)(dict(spec.params), seed)
