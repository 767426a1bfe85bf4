"""Leave-one-out splits by time and k-core filtering."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from driftrank.data import Dataset

__all__ = ["Split", "Targets", "kcore", "leave_one_out"]


@dataclass(frozen=True)
class Targets:
    """One held-out event per user: ``users``, ``items`` (``int64[n]``), ``timestamps`` (``float64[n]``)."""

    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray

    def __len__(self) -> int:
        return len(self.users)


@dataclass(frozen=True)
class Split:
    """A leave-one-out split.

    ``train`` holds every event but each user's last two; ``validation`` the second to last;
    ``train_valid`` = train + validation (what models are fitted on before the test);
    ``test`` the last event. All share the vocabularies of the source data set.
    """

    train: Dataset
    validation: Targets
    train_valid: Dataset
    test: Targets


def leave_one_out(dataset: Dataset) -> Split:
    """Per user, in time order (ties by source row): last event = test, the one before = validation.

    Users with two events give one to train and one to test (no validation target); users with
    one event keep it in train and get no target. Nothing else is filtered.
    """
    indptr = dataset.sequences.indptr
    n = dataset.n_interactions
    lengths = np.diff(indptr)
    last = indptr[1:] - 1
    has_test = lengths >= 2
    has_valid = lengths >= 3
    test_rows = last[has_test]
    valid_rows = (last - 1)[has_valid]
    train_mask = np.ones(n, dtype=bool)
    train_mask[test_rows] = False
    train_mask[valid_rows] = False
    tv_mask = train_mask.copy()
    tv_mask[valid_rows] = True
    users = dataset.user_index
    items = dataset.item_index
    ts = dataset.timestamps

    def targets(rows: np.ndarray) -> Targets:
        return Targets(
            users[rows].astype(np.int64), items[rows].astype(np.int64), ts[rows].astype(np.float64)
        )

    return Split(
        train=dataset.filter_rows(train_mask, name=f"{dataset.name}/train"),
        validation=targets(valid_rows),
        train_valid=dataset.filter_rows(tv_mask, name=f"{dataset.name}/train+valid"),
        test=targets(test_rows),
    )


def kcore(dataset: Dataset, min_user: int = 5, min_item: int = 5) -> Dataset:
    """Drop users with fewer than ``min_user`` and items with fewer than ``min_item`` events, repeatedly.

    Counts are over interaction rows. The result has fresh, compact vocabularies (a new data set).
    """
    if min_user < 1 or min_item < 1:
        raise ValueError(f"min_user and min_item must be >= 1, got {min_user} and {min_item}")
    keep = np.ones(dataset.n_interactions, dtype=bool)
    u, i = dataset.user_index, dataset.item_index
    while True:
        uc = np.bincount(u[keep], minlength=dataset.n_users)
        ic = np.bincount(i[keep], minlength=dataset.n_items)
        new = keep & (uc[u] >= min_user) & (ic[i] >= min_item)
        if new.sum() == keep.sum():
            break
        keep = new
    return reindex(dataset.filter_rows(keep), name=f"{dataset.name}/{min_user},{min_item}-core")


def reindex(dataset: Dataset, name: str | None = None) -> Dataset:
    """A copy with vocabularies restricted to the users and items that still have events."""
    import polars as pl

    inter = dataset.interactions.sort("row")
    raw = pl.DataFrame(
        {
            "user_id": dataset.user_ids.ids[inter["user"].to_numpy()],
            "item_id": dataset.item_ids.ids[inter["item"].to_numpy()],
            "timestamp": inter["timestamp"],
            "rating": inter["rating"],
            "weight": inter["weight"],
        }
    )
    items = dataset.items.drop("item")
    users = dataset.users.drop("user") if dataset.users is not None else None
    out = Dataset.from_frames(raw, items, users, name=name or dataset.name, missing_items="keep")
    out.meta.update(dataset.meta)
    return out
