"""Turning an Engine into named (config, arrays) components and back (see ``_persist``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from driftrank.data import IdMap
from driftrank.errors import ModelFileError

if TYPE_CHECKING:
    from driftrank.engine._engine import Engine

STATE_VERSION = 2


def _ids_array(ids: IdMap) -> np.ndarray:
    return ids.ids if ids.is_integer else ids.ids.astype(str)


def engine_components(engine: Engine) -> dict[str, tuple[dict[str, Any], dict[str, np.ndarray]]]:
    """Every part of a fitted engine as ``name -> (JSON config, numpy arrays)``."""
    st = engine._require()
    log_arrays = st.log.to_arrays()
    items = st.items
    genres = ["|".join(g) for g in items["genres"].to_list()]
    tags = ["|".join(g) for g in items["tags"].to_list()]
    years = items["year"].fill_null(-1).to_numpy().astype(np.int32)
    core_cfg = {
        "version": STATE_VERSION,
        "user_ids_integer": st.user_ids.is_integer,
        "item_ids_integer": st.item_ids.is_integer,
        "fit_report": st.fit_report,
        "quota_order": list(engine._quota_order),
        "quotas": engine._quotas.tolist(),
        "n_fit_items": st.n_fit_items,
    }
    core = {
        "user_ids": _ids_array(st.user_ids),
        "item_ids": _ids_array(st.item_ids),
        "titles": np.array(items["title"].to_list(), dtype=str),
        "texts": np.array(items["text"].to_list(), dtype=str),
        "genres": np.array(genres, dtype=str),
        "tags": np.array(tags, dtype=str),
        "years": years,
        "popularity": st.popularity,
        "first_seen": st.first_seen,
        "item_vectors": st.item_vectors,
        **{f"log_{k}": v for k, v in log_arrays.items()},
    }
    out: dict[str, tuple[dict[str, Any], dict[str, np.ndarray]]] = {"core": (core_cfg, core)}
    if engine._merger is not None:
        out["retrieval"] = engine._merger.get_state()
    if engine._interest is not None:
        out["interest"] = engine._interest.get_state()
    if engine._reranker is not None:
        out["reranker"] = engine._reranker.get_state()
    if engine._llm is not None:
        out["llm"] = engine._llm.get_state()
    if engine._fuser is not None:
        out["fusion"] = engine._fuser.get_state()
    return out


def restore_engine(
    cls: type[Engine], manifest: dict[str, Any], components: dict[str, Any], *, llm: Any = None
) -> Engine:
    """Rebuild an engine from :func:`engine_components` output read back from disk (``llm``:
    see :meth:`Engine.load`)."""
    from driftrank.engine._config import EngineConfig
    from driftrank.retrieval._common import EventLog

    config = EngineConfig.from_dict(manifest["config"])
    engine = cls(config)
    if "core" not in components:
        raise ModelFileError("the model has no 'core' component")
    core_cfg, core = components["core"]
    if core_cfg.get("version") != STATE_VERSION:
        raise ModelFileError(
            f"engine state version {core_cfg.get('version')!r} is not supported (expected {STATE_VERSION})"
        )
    expected = {
        "retrieval": config.channel_configs().keys() - {"interest"},
        "interest": config.interest,
        "reranker": config.reranker,
        "fusion": config.fusion != "reranker",
        "llm": config.llm,
    }
    for name, wanted in expected.items():
        if bool(wanted) != (name in components):
            raise ModelFileError(
                f"component {name!r} {'missing from' if wanted else 'unexpected in'} the model for its config"
            )
    _check_core(core, core_cfg)
    try:
        years = core["years"].astype(np.int64)
        items = pl.DataFrame(
            {
                "item": np.arange(len(core["item_ids"]), dtype=np.int32),
                "item_id": core["item_ids"],
                "title": core["titles"].tolist(),
                "text": core["texts"].tolist(),
                "genres": [g.split("|") if g else [] for g in core["genres"].tolist()],
                "year": pl.Series([None if y < 0 else int(y) for y in years], dtype=pl.Int32),
                "tags": [g.split("|") if g else [] for g in core["tags"].tolist()],
            }
        )
        log = EventLog(core["log_indptr"], core["log_items"], core["log_times"])
    except KeyError as exc:
        raise ModelFileError(f"the model's core arrays lack {exc}") from None
    from driftrank.engine._engine import _State

    engine._state = _State(
        user_ids=IdMap(core["user_ids"], "user"),
        item_ids=IdMap(core["item_ids"], "item"),
        items=items,
        log=log,
        popularity=core["popularity"].astype(np.float64),
        first_seen=core["first_seen"].astype(np.float64),
        item_vectors=core["item_vectors"].astype(np.float32),
        fit_report=dict(core_cfg.get("fit_report", {})),
        n_fit_items=int(core_cfg["n_fit_items"]),
    )
    engine._quota_order = tuple(core_cfg["quota_order"])
    engine._quotas = np.asarray(core_cfg["quotas"], dtype=np.float64)
    if "retrieval" in components:
        from driftrank.retrieval import CandidateMerger

        engine._merger = CandidateMerger.from_state(*components["retrieval"])
    if "interest" in components:
        from driftrank.rerank._interest_channel import InterestChannel

        engine._interest = InterestChannel.from_state(*components["interest"], encoder=engine._get_encoder())
    if "reranker" in components:
        from driftrank.rerank._model import SequenceReranker

        engine._reranker = SequenceReranker.from_state(*components["reranker"])
    if "llm" in components:
        from driftrank.engine._llm_stage import LLMStage

        llm_state, llm_arrays = components["llm"]
        engine._llm = LLMStage.from_state(config.llm, llm_state, llm_arrays, llm=llm)
    if "fusion" in components:
        from driftrank.fusion import fuser_from_state

        engine._fuser = fuser_from_state(*components["fusion"])
    return engine


def _check_core(core: dict[str, np.ndarray], core_cfg: dict[str, Any]) -> None:
    """Refuse core arrays whose sizes disagree (a model assembled from parts of different ones)."""
    need = (
        "user_ids",
        "item_ids",
        "titles",
        "texts",
        "genres",
        "tags",
        "years",
        "popularity",
        "first_seen",
        "item_vectors",
        "log_indptr",
        "log_items",
        "log_times",
    )
    missing = [k for k in need if k not in core]
    if missing:
        raise ModelFileError(f"the model's core arrays lack {missing}")
    n_items = len(core["item_ids"])
    for k in ("titles", "texts", "genres", "tags", "years", "popularity", "first_seen", "item_vectors"):
        if core[k].ndim < 1 or core[k].shape[0] != n_items:
            raise ModelFileError(
                f"the model's core array {k!r} has shape {core[k].shape}, expected {n_items} rows (one per item)"
            )
    indptr, items, times = core["log_indptr"], core["log_items"], core["log_times"]
    n_users = len(core["user_ids"])
    if indptr.shape != (n_users + 1,) or indptr.dtype.kind not in "iu" or items.dtype.kind not in "iu":
        raise ModelFileError(
            f"the model's event log has offsets of shape {indptr.shape} ({indptr.dtype}), expected "
            f"({n_users + 1},) integers for {n_users} users"
        )
    if (
        int(indptr[0]) != 0
        or (np.diff(indptr) < 0).any()
        or items.shape != times.shape
        or items.shape != (int(indptr[-1]),)
        or (len(items) and (int(items.min()) < 0 or int(items.max()) >= n_items))
    ):
        raise ModelFileError("the model's event log is inconsistent (offsets, items and times disagree)")
    n_fit = core_cfg.get("n_fit_items")
    if isinstance(n_fit, bool) or not isinstance(n_fit, int) or not 0 <= n_fit <= n_items:
        raise ModelFileError(f"the model's n_fit_items is {n_fit!r}, expected an integer in 0..{n_items}")
