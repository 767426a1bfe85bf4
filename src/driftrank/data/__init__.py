"""Data layer: the :class:`Dataset`, loaders for named and user data sets, and a generator."""

from driftrank.data._dataset import Dataset, Sequences
from driftrank.data._files import ColumnMap, load_interactions, read_table
from driftrank.data._ids import IdMap
from driftrank.data._movielens import load_dataset
from driftrank.data._synthetic import make_drifting

__all__ = [
    "ColumnMap",
    "Dataset",
    "IdMap",
    "Sequences",
    "load_dataset",
    "load_interactions",
    "make_drifting",
    "read_table",
]
