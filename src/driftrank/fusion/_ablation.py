"""Ablations: fusion with each signal group removed, and each group alone."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from driftrank.errors import ConfigError, DataError
from driftrank.fusion._input import Fuser, FusionInput, candidate_metrics

if TYPE_CHECKING:
    import polars as pl

__all__ = ["ablation", "fuser_from_state"]


def ablation(
    make_fuser: Callable[[], Fuser],
    train: FusionInput,
    train_targets: np.ndarray,
    test: FusionInput,
    test_targets: np.ndarray,
    *,
    groups: Sequence[str] | None = None,
    removed: bool = True,
    alone: bool = True,
    ks: tuple[int, ...] = (10,),
) -> pl.DataFrame:
    """Fit a fresh fuser on ``train`` with signal groups removed or kept alone; score ``test``.

    ``make_fuser()`` returns a new, unfitted fuser (e.g. ``lambda: FusionModel(cfg)``); it is
    fitted on ``train`` with ``train_targets`` (the validation step) and evaluated on ``test``
    with ``test_targets`` (``int[n_users]`` per batch, -1 = none) for each variant:

    * ``all``: every group;
    * ``without``: each group in ``groups`` removed in turn (if ``removed``);
    * ``only``: each candidate-level group in ``groups`` alone (if ``alone``). User groups are
      constant within a user and cannot rank on their own, so they get no ``only`` row.

    Removing a group removes its features, never candidate rows, so the table measures what the
    fuser makes of a signal on a fixed candidate set (the retrieval recall is the same in every
    row, reported as ``recall``). Returns a polars frame with columns ``variant``, ``group``,
    ``n_groups``, then ``NDCG@k``, ``HR@k``, ``MRR@k`` per ``k``, their difference to ``all``
    (``dNDCG@k``, ``dHR@k``), ``recall`` and ``fit_seconds``.
    """
    import polars as pl

    all_groups = train.groups
    if set(all_groups) != set(test.groups):
        raise DataError(
            f"train and test must carry the same signals, got {list(all_groups)} and {list(test.groups)}"
        )
    chosen = list(all_groups) if groups is None else list(groups)
    unknown = [g for g in chosen if g not in all_groups]
    if unknown:
        raise DataError(f"unknown signal groups {unknown}; the input has {list(all_groups)}")
    if not ks or any(not isinstance(k, int) or k <= 0 for k in ks):
        raise ConfigError(f"ks must be positive integers, got {ks!r}")

    variants: list[tuple[str, str, list[str]]] = [("all", "", list(all_groups))]
    if removed:
        variants += [("without", g, [h for h in all_groups if h != g]) for g in chosen]
    if alone:
        variants += [("only", g, [g]) for g in chosen if all_groups[g] != "user"]

    rows: list[dict[str, Any]] = []
    for variant, group, keep in variants:
        if not keep:
            continue
        tr, te = train.keep(keep), test.keep(keep)
        start = time.perf_counter()
        fuser = make_fuser().fit(tr, train_targets)
        fit_s = time.perf_counter() - start
        m = candidate_metrics(te.candidates, fuser.score(te), test_targets, ks)
        row: dict[str, Any] = {"variant": variant, "group": group, "n_groups": len(keep)}
        for k in ks:
            for name in ("NDCG", "HR", "MRR"):
                row[f"{name}@{k}"] = m[f"{name}@{k}"]
        row["recall"] = m["recall"]
        row["fit_seconds"] = fit_s
        rows.append(row)
    frame = pl.DataFrame(rows)
    for k in ks:
        for name in ("NDCG", "HR"):
            col = f"{name}@{k}"
            frame = frame.with_columns((pl.col(col) - rows[0][col]).alias(f"d{col}"))
    order = ["variant", "group", "n_groups"]
    order += [f"{n}@{k}" for k in ks for n in ("NDCG", "HR", "MRR")]
    order += [f"d{n}@{k}" for k in ks for n in ("NDCG", "HR")] + ["recall", "fit_seconds"]
    return frame.select(order)


def fuser_from_state(config: dict[str, Any], arrays: dict[str, np.ndarray]) -> Fuser:
    """Rebuild any fitted fuser from its ``get_state()`` pair, dispatching on ``config["kind"]``."""
    from driftrank.fusion._baselines import LinearFusion, ReciprocalRankFusion
    from driftrank.fusion._gated import FusionModel

    kinds: dict[str, Callable[[dict[str, Any], dict[str, np.ndarray]], Fuser]] = {
        "gated": FusionModel.from_state,
        "linear": LinearFusion.from_state,
        "rrf": ReciprocalRankFusion.from_state,
    }
    kind = config.get("kind") if isinstance(config, dict) else None
    if kind not in kinds:
        raise ConfigError(f"unknown fuser kind {kind!r}; expected one of {sorted(kinds)}")
    return kinds[kind](config, arrays)
