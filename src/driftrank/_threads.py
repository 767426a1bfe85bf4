"""How many threads a long fit should use: the cores that other processes leave idle.

Measured on a 2-core machine (ml-100k, re-ranker epochs, one run each): quiet, two torch
threads ran an epoch in 5.2 s and one thread in 9.2 s; beside one CPU-bound process, two threads
took 19.1 s and one thread 8.4 s. Threads that outnumber the free cores wait on each other at
every parallel step, so the fit slows far more than the lost core explains. The fit therefore
counts the busy cores when it starts (Linux: ``/proc/stat`` over a short window, less this
process's own CPU time) and runs torch, BLAS and OpenMP on the rest.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

__all__ = ["busy_cores", "fit_threads", "limited_threads"]


def _cpu_ticks() -> tuple[int, int] | None:
    """``(busy, total)`` jiffies of all CPUs since boot, or ``None`` where ``/proc/stat`` is missing."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_cores(window: float = 0.25) -> float | None:
    """Cores kept busy by *other* processes over ``window`` seconds (``None`` when unknown)."""
    start = _cpu_ticks()
    own_start = _own_cpu_seconds()
    wall = time.perf_counter()
    time.sleep(window)
    end = _cpu_ticks()
    if start is None or end is None:
        return None
    elapsed = time.perf_counter() - wall
    busy, total = end[0] - start[0], end[1] - start[1]
    if total <= 0:
        return None
    cores = os.cpu_count() or 1
    all_busy = cores * busy / total
    own = (_own_cpu_seconds() - own_start) / max(elapsed, 1e-9)
    return max(0.0, all_busy - own)


def _own_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def fit_threads(requested: int | None, current: int) -> int:
    """The thread count for a fit: ``requested`` when given, else the ``current`` count less
    the cores other processes keep busy (at least one)."""
    if requested is not None:
        return requested
    others = busy_cores()
    if others is None:
        return current
    cores = os.cpu_count() or current
    free = max(1, round(cores - others))
    return max(1, min(current, free))


@contextmanager
def limited_threads(n: int) -> Iterator[None]:
    """Torch, BLAS and OpenMP on ``n`` threads for the block (process-wide; restored after)."""
    import sys

    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    with threadpool_limits(n):
        if torch is not None:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            if torch is not None and before is not None:
                torch.set_num_threads(before)
