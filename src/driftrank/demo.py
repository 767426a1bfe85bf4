"""``driftrank demo``: fit on a real data set and show what the engine does."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def _load(dataset: str, data_home: str | None):  # type: ignore[no-untyped-def]
    from driftrank.data import load_dataset, make_drifting
    from driftrank.errors import DataNotFoundError

    try:
        return load_dataset(dataset, data_home), True
    except DataNotFoundError as exc:
        print(f"NOTE: {exc}")
        print("NOTE: running the demo on driftrank's synthetic drifting-interests data instead.\n")
        return make_drifting(), False


def run_demo(dataset: str = "ml-100k", data_home: str | None = None, *, quick: bool = False) -> int:
    """Fit the baselines on ``dataset`` and print the benchmark table."""
    from driftrank.bench import PipelineSpec, run_benchmark

    data, real = _load(dataset, data_home)
    print(f"data: {data!r}  ({'real' if real else 'synthetic'})")
    result = run_benchmark(
        data,
        [PipelineSpec("pop", "pop"), PipelineSpec("pop-recent", "pop-recent")],
        latency_users=0,
        progress=False,
    )
    print()
    print(result.table())
    return 0
