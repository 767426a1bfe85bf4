"""Rank every user of a saved engine on Ray: the batch job beyond one process or one machine.

:func:`rank_all` runs :func:`driftrank.engine.write_rankings`' job as a Ray Data pipeline:
chunks of user ids go in, a pool of actors (each loads the saved model once, with one torch
and BLAS thread per CPU it holds) ranks one chunk per call, and Parquet parts come out. Without
an ``address`` it starts a local Ray with ``workers + 1`` CPUs (one per actor, one for Ray Data's
reading and writing); with one (``"auto"``,
``"ray://host:10001"``) it joins that cluster, whose every node must read the model folder and
write the output folder (a shared path).

The output holds the same rows as ``write_rankings`` with the same ``chunk_size``: each actor
ranks exactly the chunks the single process would, on one thread, so items, ranks and scores
agree; only the order of the part files differs (read them with
``pl.read_parquet(out / "*.parquet")`` and sort by user and rank). Ray retries a chunk whose
actor died; a chunk's rows are written once, by the task that completed it.

Ray is an optional dependency: ``pip install "driftrank[ray]"``. ``import driftrank`` does not
load it.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from driftrank.engine._export import (
    MARKER,
    WriteSummary,
    check_known_users,
    check_replaceable,
    replace_output,
    side_path,
)
from driftrank.errors import ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = ["RankChunks", "rank_all"]


class RankChunks:
    """The Ray Data actor: loads the model once, then ranks one chunk of users per batch.

    Batches are pyarrow tables with a ``users`` list column (one row per chunk); the result is
    the chunk's rankings table (``user_id``, ``rank``, ``item_id``, ``title``, ``score``, and
    the ``+signal`` columns with ``contributions``).
    """

    def __init__(self, model: str, k: int, contributions: bool, threads: int = 1) -> None:
        import torch
        from threadpoolctl import threadpool_limits

        from driftrank.engine import Engine

        torch.set_num_threads(threads)
        self._limits = threadpool_limits(threads)  # kept for the actor's life
        self.engine = Engine.load(model)
        self.k = k
        self.contributions = contributions

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        from driftrank.engine._result import results_table

        tables = []
        times = batch.column("at").to_pylist() if "at" in batch.column_names else None
        for j, users in enumerate(batch.column("users").to_pylist()):
            results = self.engine.rank_batch(users, self.k, at=None if times is None else times[j])
            tables.append(results_table(results, contributions=self.contributions).to_arrow())
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def rank_all(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    users: Sequence[object] | None = None,
    *,
    k: int = 100,
    workers: int = 2,
    chunk_size: int = 4096,
    contributions: bool = False,
    address: str | None = None,
    at: Sequence[float | None] | None = None,
    actor: type = RankChunks,
) -> WriteSummary:
    """Rank ``users`` (default: every user of the model) on Ray into a folder of Parquet parts.

    ``workers``: actors ranking in parallel, one CPU each. ``chunk_size``: users per actor
    call. ``address``: a running Ray cluster to join (``None`` or ``"local"``: start one here);
    the model and ``out`` must then be on a path every node shares. ``at``: one ranking time per user
    (unix s; ``None`` for the default), as for ``rank_batch``. The model is checked (loaded
    once in this process) before any Ray work starts. ``actor`` is the class Ray Data runs (tests pass
    one that fails on purpose).
    """
    for name, value in (("k", k), ("workers", workers), ("chunk_size", chunk_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"{name} must be a positive integer, got {value!r}")
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
        import ray
        import ray.data
    except ImportError:
        raise ConfigError('rank_all needs Ray Data: pip install "driftrank[ray]"') from None
    from driftrank.engine import Engine

    model_path = Path(model).resolve()
    engine = Engine.load(model_path)  # a bad model fails here, before Ray starts
    if users is None:
        users = engine.known_users()
    else:
        check_known_users(users, engine.known_users())
    del engine
    target = Path(out).resolve()
    check_replaceable(target, as_csv=False)
    if at is not None and len(at) != len(users):
        raise DataError(f"at must have one time per user ({len(users)}), got {len(at)}")
    chunks = [list(users[s : s + chunk_size]) for s in range(0, len(users), chunk_size)]
    # Ranking times travel as a nullable float list column (None: the default time).
    times = None if at is None else [list(at[s : s + chunk_size]) for s in range(0, len(users), chunk_size)]

    if address == "local":
        address = None
    start = time.perf_counter()
    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": "WARNING",
        }
        if address is None:
            # One CPU per actor, plus one for Ray Data's own read and write tasks: without it
            # they wait for the actors' CPUs, and a step that cannot start hangs the job.
            kwargs["num_cpus"] = workers + 1
        ray.init(address=address, **kwargs)
    # Ray Data reports each run at INFO level (ray.init sets that up); callers asked for rankings.
    data_log = logging.getLogger("ray.data")
    data_level = data_log.level
    data_log.setLevel(max(data_level, logging.WARNING))
    tmp = side_path(target, "tmp")
    try:
        # One block per chunk, so that the actors share the chunks without a repartition step
        # (whose task would wait forever for a CPU that the actors hold).
        ds = ray.data.from_arrow(
            [
                pa.table({"users": [c]} if times is None else {"users": [c], "at": [times[j]]})
                for j, c in enumerate(chunks)
            ]
        )
        ranked = ds.map_batches(
            actor,
            fn_constructor_kwargs={"model": str(model_path), "k": k, "contributions": contributions},
            batch_size=1,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
        )
        ranked.write_parquet(str(tmp))
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / MARKER).write_text("rankings written by driftrank on Ray\n", encoding="utf-8")
        part_files = sorted(tmp.glob("*.parquet"))
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in part_files)
        parts = len(part_files)
        replace_output(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        data_log.setLevel(data_level)
        if started_here:
            ray.shutdown()
    seconds = time.perf_counter() - start
    log.info("ranked %d users on Ray into %d rows in %.1f s (%s)", len(users), rows, seconds, target)
    return WriteSummary(len(users), rows, seconds, target, parts)
