"""Thread counts for fits: the cores other processes leave idle."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from driftrank import _threads
from driftrank.engine import EngineConfig
from driftrank.errors import ConfigError


def test_busy_cores_sees_another_process_and_not_this_one() -> None:
    if _threads.busy_cores(0.05) is None:  # pragma: no cover - /proc/stat exists on Linux CI
        pytest.fail("/proc/stat is not readable here")
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert _threads.busy_cores(0.5) >= 0.6  # one spinning process: about one core
    finally:
        spin.kill()
        spin.wait()


def test_fit_threads_takes_the_idle_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_threads.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(_threads, "busy_cores", lambda window=0.25: 1.1)
    assert _threads.fit_threads(None, 2) == 1  # one core taken by someone else
    monkeypatch.setattr(_threads, "busy_cores", lambda window=0.25: 0.1)
    assert _threads.fit_threads(None, 2) == 2
    assert _threads.fit_threads(None, 1) == 1  # never more than the current setting
    monkeypatch.setattr(_threads, "busy_cores", lambda window=0.25: 3.5)
    assert _threads.fit_threads(None, 2) == 1  # at least one
    monkeypatch.setattr(_threads, "busy_cores", lambda window=0.25: None)
    assert _threads.fit_threads(None, 2) == 2  # unknown: as configured
    assert _threads.fit_threads(3, 2) == 3  # asked for: as asked


def test_limited_threads_restores_the_caller_setting() -> None:
    import torch

    before = torch.get_num_threads()
    with _threads.limited_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_fit_threads_setting_is_checked() -> None:
    assert EngineConfig(fit_threads=2).fit_threads == 2
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ConfigError, match="fit_threads must be a positive integer"):
            EngineConfig(fit_threads=bad)  # type: ignore[arg-type]
    assert EngineConfig.from_dict(EngineConfig(fit_threads=1).to_dict()).fit_threads == 1
