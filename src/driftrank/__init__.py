"""driftrank: a hybrid ranking engine that models how each user's interests evolve over time.

Heavy modules (torch, sentence-transformers, faiss, implicit) are imported only by the parts
that need them; ``import driftrank`` itself loads nothing but this file.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Dataset": "driftrank.data",
    "ColumnMap": "driftrank.data",
    "load_dataset": "driftrank.data",
    "load_interactions": "driftrank.data",
    "make_drifting": "driftrank.data",
    "leave_one_out": "driftrank.eval",
    "evaluate": "driftrank.eval",
    "Ranking": "driftrank.types",
    "DriftrankError": "driftrank.errors",
}

__all__ = [
    "ColumnMap",
    "Dataset",
    "DriftrankError",
    "Ranking",
    "__version__",
    "evaluate",
    "leave_one_out",
    "load_dataset",
    "load_interactions",
    "make_drifting",
]

if TYPE_CHECKING:
    from driftrank.data import ColumnMap, Dataset, load_dataset, load_interactions, make_drifting
    from driftrank.errors import DriftrankError
    from driftrank.eval import evaluate, leave_one_out
    from driftrank.types import Ranking


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'driftrank' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
