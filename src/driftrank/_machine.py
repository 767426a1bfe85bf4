"""What a benchmark records about the machine it ran on (needs the standard library only, so
a GPU box without the rest of driftrank's stack can call it)."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Sequence
from importlib import metadata
from typing import Any

__all__ = ["machine_info", "package_versions"]


def package_versions(names: Sequence[str]) -> dict[str, str | None]:
    """Installed version of each distribution in ``names`` (``None`` when it is not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine_info() -> dict[str, Any]:
    """Machine, library versions and git commit, for the record."""
    versions = package_versions(
        (
            "driftrank",
            "numpy",
            "scipy",
            "polars",
            "torch",
            "implicit",
            "rectools-lightfm",
            "faiss-cpu",
            "sentence-transformers",
            "transformers",
            "peft",
            "gguf",
        )
    )
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
            ).stdout.strip()
            or None
        )
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout.strip()
        )
    except OSError:
        commit, dirty = None, False
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "gpu": _gpu_name(),
        "versions": versions,
        "git_commit": commit,
        "git_dirty": dirty,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _gpu_name() -> str | None:
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return str(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else None
    except Exception:
        return None
