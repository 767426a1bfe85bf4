"""A cold-start split: items and users the model never saw in training, plus warm reference targets."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from driftrank.data import Dataset, IdMap, Sequences
from driftrank.errors import ConfigError, DataError
from driftrank.eval._split import Targets, reindex

log = logging.getLogger(__name__)

__all__ = ["ColdStartSplit", "NewUsers", "cold_start_split"]


@dataclass(frozen=True)
class NewUsers:
    """Users held out of training entirely, each with a short history and one target.

    Attributes:
        user_ids: raw user ids (``[n]``) of the source data set; none is in the training data.
        history: each user's first events, oldest first (:class:`~driftrank.data.Sequences`:
            ``indptr: int64[n+1]``, ``items: int64[m]`` catalog indices, ``timestamps:
            float64[m]`` unix seconds).
        targets: the event right after the history; ``users`` are ``train.n_users + j``
            (the index the ``j``-th new user gets when appended to the training vocabulary),
            ``items`` catalog indices, ``timestamps`` unix seconds.
    """

    user_ids: np.ndarray
    history: Sequences
    targets: Targets

    def __len__(self) -> int:
        return len(self.user_ids)


@dataclass(frozen=True)
class ColdStartSplit:
    """What :func:`cold_start_split` returns.

    Item indices of every field are *catalog* indices: ``0 .. train.n_items - 1`` are the
    training items (the training vocabulary), ``train.n_items + j`` is row ``j`` of
    ``new_items`` — exactly the indices an engine fitted on ``train`` gives the items after
    ``add_items(new_items)``. ``catalog`` holds the raw ids in that order; it covers every item
    of the source data set.

    Attributes:
        train: the training data, re-indexed: warm users only, items with training events only
            (nothing in it names a new item or a new user).
        new_items: the item-table rows (``item_id``, ``title``, ``text``, ``genres``, ``year``,
            ``tags``) of every source item without a training event: the held-out share first,
            then items that lost all their events to held-out users or targets.
        catalog: ``train.item_ids`` extended by ``new_items["item_id"]``.
        held_out_items: ``int64[k]`` catalog indices of the sampled held-out items (the first
            ``k`` rows of ``new_items``).
        new_item_targets: per warm user with an event on a held-out item, the earliest such
            event (``users`` are ``train`` user indices).
        new_users: the held-out users with their histories and targets.
        warm_targets: per warm user with at least two events on training items, the last of
            them (removed from ``train``), for reference.
        info: counts and the arguments, for reports.
    """

    train: Dataset
    new_items: pl.DataFrame
    catalog: IdMap
    held_out_items: np.ndarray
    new_item_targets: Targets
    new_users: NewUsers
    warm_targets: Targets
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_train_items(self) -> int:
        """Items of the training vocabulary (catalog indices below this are warm)."""
        return self.train.n_items

    def is_new_item(self, items: np.ndarray) -> np.ndarray:
        """``bool`` array: which catalog indices in ``items`` have no training event (-1 is not)."""
        a = np.asarray(items)
        return a >= self.train.n_items


def _check_share(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and 0.0 <= v < 1.0):
        raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
    return v


def cold_start_split(
    dataset: Dataset,
    item_share: float = 0.1,
    user_share: float = 0.1,
    new_user_history: int = 3,
    seed: int = 0,
) -> ColdStartSplit:
    """Hold out new items and new users; the same ``seed`` gives the same split.

    What is held out, in this order:

    1. **New items**: ``round(item_share * n)`` items drawn uniformly at random (without
       replacement) among the ``n`` items with at least one event. *All* their events leave
       the training data; their catalog rows (title, text, genres) stay known, since metadata
       arrives with an item. A uniform draw gives held-out items with the catalog's own mix of
       popular and tail items (most are tail items).
    2. **New users**: ``round(user_share * m)`` users drawn uniformly at random among the ``m``
       users with more than ``new_user_history`` events. All their events leave the training
       data. Each keeps their first ``new_user_history`` events (by time, ties by source row)
       as the history and their next event as the target, so every history event is at or
       before the target time. Their sequences are not filtered: a history or target may name
       a new item (the catalog at test time holds every item).
    3. **Warm targets** (reference): for every other user, their last event on a non-held-out
       item leaves the training data, if they have at least two such events.
    4. **New-item targets**: for every warm user with an event on a held-out item, the
       earliest such event. The user's history at test time is their training events; no
       training event names a held-out item. (Users are not split in time: training may hold
       a user's events later than this target, as in the leave-one-out protocol.)

    Users left with no training event (every event on a held-out item) are dropped and counted
    in ``info["dropped_users"]``. Items left with no training event that were not drawn (their
    only events were the new users' or warm targets) join ``new_items`` after the drawn ones:
    they are cold for the model too, but produce no new-item target.

    Raises:
        DataError: ``dataset`` is not a :class:`~driftrank.data.Dataset`, or too small for the
            requested shares.
        ConfigError: a share outside ``[0, 1)``, ``new_user_history`` not a positive integer,
            or ``seed`` not a non-negative integer.
    """
    if not isinstance(dataset, Dataset):
        raise DataError(f"cold_start_split takes a driftrank Dataset, got {type(dataset).__name__}")
    item_share = _check_share("item_share", item_share)
    user_share = _check_share("user_share", user_share)
    if isinstance(new_user_history, bool) or not isinstance(new_user_history, (int, np.integer)):
        raise ConfigError(f"new_user_history must be a positive integer, got {new_user_history!r}")
    if new_user_history < 1:
        raise ConfigError(f"new_user_history must be a positive integer, got {new_user_history!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    h = int(new_user_history)
    if dataset.n_interactions == 0:
        raise DataError(f"cannot split {dataset.name!r}: it has no interactions")

    n_ev = dataset.n_interactions
    u_idx = dataset.user_index.astype(np.int64)
    i_idx = dataset.item_index.astype(np.int64)
    ts = dataset.timestamps
    indptr = dataset.sequences.indptr  # interactions are stored by user, then time, then row

    # 1. new items. Separate generator streams, so changing one share leaves the other draw alone.
    with_events = np.flatnonzero(dataset.item_popularity > 0)
    n_hold = _count(item_share, len(with_events), "item", "items with events")
    held = np.sort(np.random.default_rng([seed, 1]).choice(with_events, n_hold, replace=False))
    is_held_item = np.zeros(dataset.n_items, dtype=bool)
    is_held_item[held] = True

    # 2. new users
    lengths = np.diff(indptr)
    eligible = np.flatnonzero(lengths > h)
    n_new_users = _count(user_share, len(eligible), "user", f"users with more than {h} events")
    new_users = np.sort(np.random.default_rng([seed, 2]).choice(eligible, n_new_users, replace=False))
    is_new_user = np.zeros(dataset.n_users, dtype=bool)
    is_new_user[new_users] = True

    # 3. warm targets: last event on a non-held-out item of each other user (>= 2 such events)
    candidate = ~is_new_user[u_idx] & ~is_held_item[i_idx]
    rows = np.flatnonzero(candidate)
    counts = np.bincount(u_idx[rows], minlength=dataset.n_users)
    last_row = np.full(dataset.n_users, -1, dtype=np.int64)
    last_row[u_idx[rows]] = rows  # rows ascend within a user, so the last write is the last event
    warm_target_rows = last_row[(counts >= 2) & (last_row >= 0)]
    train_mask = candidate.copy()
    train_mask[warm_target_rows] = False

    # 4. new-item targets: earliest held-out-item event of each user still in training
    has_train = np.bincount(u_idx[train_mask], minlength=dataset.n_users) > 0
    cand_rows = np.flatnonzero(is_held_item[i_idx] & ~is_new_user[u_idx] & has_train[u_idx])
    first_row = np.full(dataset.n_users, n_ev, dtype=np.int64)
    np.minimum.at(first_row, u_idx[cand_rows], cand_rows)
    new_item_rows = np.sort(first_row[first_row < n_ev])

    dropped = np.flatnonzero(~is_new_user & ~has_train & (lengths > 0))
    if not train_mask.any():
        raise DataError(f"cold_start_split left no training events in {dataset.name!r}")
    train = reindex(dataset.filter_rows(train_mask), name=f"{dataset.name}/cold-train")

    # The catalog: training items, then the held-out items, then the other items without events.
    in_train = np.zeros(dataset.n_items, dtype=bool)
    in_train[i_idx[train_mask]] = True
    incidental = np.flatnonzero(~in_train & ~is_held_item)
    cold_src = np.concatenate([held, incidental])
    src_ids = dataset.item_ids.ids
    catalog = train.item_ids.extend(src_ids[cold_src].tolist())
    # Source item index -> catalog index (every source item is in the catalog).
    to_cat = catalog.indices(src_ids.tolist())
    new_items = _item_rows(dataset, cold_src)

    # Source user index -> training user index (-1 for users not in training).
    to_train_user = train.user_ids.indices(dataset.user_ids.ids.tolist(), missing=-1)

    def targets(rows: np.ndarray, users: np.ndarray) -> Targets:
        return Targets(
            users.astype(np.int64), to_cat[i_idx[rows]].astype(np.int64), ts[rows].astype(np.float64)
        )

    warm_target_rows = np.sort(warm_target_rows)
    warm_t = targets(warm_target_rows, to_train_user[u_idx[warm_target_rows]])
    new_item_t = targets(new_item_rows, to_train_user[u_idx[new_item_rows]])
    if (warm_t.users < 0).any() or (new_item_t.users < 0).any():  # pragma: no cover - invariant
        raise AssertionError("a target user is missing from the training vocabulary")

    # New users: the first h events of each, then the next one.
    starts = indptr[new_users]
    hist_rows = (starts[:, None] + np.arange(h)[None, :]).reshape(-1)
    target_rows = starts + h
    hist = Sequences(
        np.arange(0, h * (n_new_users + 1), h, dtype=np.int64),
        to_cat[i_idx[hist_rows]].astype(np.int64),
        ts[hist_rows].astype(np.float64),
    )
    new_user_t = targets(target_rows, train.n_users + np.arange(n_new_users, dtype=np.int64))
    nu = NewUsers(dataset.user_ids.ids[new_users], hist, new_user_t)

    info: dict[str, Any] = {
        "source": dataset.name,
        "item_share": item_share,
        "user_share": user_share,
        "new_user_history": h,
        "seed": int(seed),
        "n_source_users": dataset.n_users,
        "n_source_items": dataset.n_items,
        "n_source_interactions": n_ev,
        "n_train_users": train.n_users,
        "n_train_items": train.n_items,
        "n_train_interactions": train.n_interactions,
        "n_held_out_items": int(n_hold),
        "n_incidental_new_items": len(incidental),
        "n_new_item_targets": len(new_item_t),
        "n_new_users": int(n_new_users),
        "n_new_user_targets_on_new_items": int((new_user_t.items >= train.n_items).sum()),
        "n_warm_targets": len(warm_t),
        "dropped_users": len(dropped),
    }
    log.info("cold-start split of %s: %s", dataset.name, info)
    return ColdStartSplit(
        train=train,
        new_items=new_items,
        catalog=catalog,
        held_out_items=np.arange(train.n_items, train.n_items + n_hold, dtype=np.int64),
        new_item_targets=new_item_t,
        new_users=nu,
        warm_targets=warm_t,
        info=info,
    )


def _count(share: float, n: int, what: str, pool: str) -> int:
    """How many of ``n`` to hold out for ``share``: at least one when ``share > 0``, never all."""
    if share == 0.0:
        return 0
    if n == 0:
        raise DataError(f"{what}_share={share} but there are no {pool} to hold out")
    k = max(1, round(share * n))
    if k >= n:
        raise DataError(
            f"{what}_share={share} would hold out {k} of the {n} {pool}, leaving none to train on"
        )
    return k


def _item_rows(dataset: Dataset, src_items: np.ndarray) -> pl.DataFrame:
    """The item-table rows of ``src_items`` (source indices), in that order, without ``item``."""
    order = pl.DataFrame({"item": src_items.astype(np.int32), "__pos": np.arange(len(src_items))})
    rows = dataset.items.join(order, on="item", how="inner").sort("__pos")
    return rows.drop("item", "__pos")
