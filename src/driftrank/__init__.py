"""driftrank: a hybrid ranking engine that models how each user's interests evolve over time.

Heavy modules (torch, sentence-transformers, faiss, implicit) are imported only by the parts
that need them; ``import driftrank`` itself loads nothing but this file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from driftrank._lazy import lazy_exports

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
    "Engine": "driftrank.engine",
    "EngineConfig": "driftrank.engine",
}

__all__ = [
    "ColumnMap",
    "Dataset",
    "DriftrankError",
    "Engine",
    "EngineConfig",
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
    from driftrank.engine import Engine, EngineConfig
    from driftrank.errors import DriftrankError
    from driftrank.eval import evaluate, leave_one_out
    from driftrank.types import Ranking


__getattr__, __dir__ = lazy_exports("driftrank", _EXPORTS, globals())
