"""Progress display: live tqdm bars on a terminal, plain log lines everywhere else.

Bars redraw themselves with carriage returns and cursor moves, which turn into ``^M`` and
``[A`` fragments in a log file or a CI transcript. So a bar is only drawn when standard error is
a terminal (``DRIFTRANK_PROGRESS=1`` forces it, ``=0`` turns it off); the durations of long
stages go to the ``driftrank`` loggers at INFO level either way (``driftrank -v``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["FitStages", "bar", "interactive", "stage_summary"]


def interactive() -> bool:
    """Whether progress bars should be drawn: stderr is a terminal, unless overridden."""
    forced = os.environ.get("DRIFTRANK_PROGRESS", "").strip()
    if forced in {"0", "1"}:
        return forced == "1"
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def bar(iterable: Iterable[T] | None = None, *, enabled: bool, **kwargs: Any) -> Any:
    """A tqdm bar over ``iterable``, drawn only when ``enabled`` and :func:`interactive`."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not (enabled and interactive()), dynamic_ncols=True, **kwargs)


class FitStages:
    """The stages of a long fit: one bar (``stage 3/6: re-ranker``, elapsed and ETA by stage
    count) plus one INFO log line per finished stage with its duration.

    ``seconds`` collects each stage's duration, in the order they ran.
    """

    def __init__(self, names: Sequence[str], *, enabled: bool, logger: logging.Logger, what: str) -> None:
        self.seconds: dict[str, float] = {}
        self._names = list(names)
        self._log = logger
        self._what = what
        self._bar = bar(
            total=len(self._names),
            enabled=enabled,
            desc=what,
            unit="stage",
            bar_format="{desc} {n_fmt}/{total_fmt} stages [{elapsed}]",
            leave=False,
        )

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the stage ``name`` (one of the names given at construction)."""
        j = self._names.index(name) if name in self._names else len(self.seconds)
        self._bar.set_description_str(f"{self._what}: {name} ({j + 1}/{len(self._names)})")
        start = time.perf_counter()
        try:
            yield
        finally:
            took = time.perf_counter() - start
            self.seconds[name] = self.seconds.get(name, 0.0) + took
            self._bar.update(1)
            self._log.info("%s: %s took %.1f s", self._what, name, took)

    def close(self) -> None:
        """Remove the bar."""
        self._bar.close()


def stage_summary(seconds: dict[str, float], digits: int = 1) -> str:
    """``"encode 8.0 s, retrieval 10.2 s, ..."`` from a fit report's ``seconds`` (no total)."""
    return ", ".join(f"{k.replace('_', ' ')} {v:.{digits}f} s" for k, v in seconds.items() if k != "total")
