"""Shared fixtures: the real data sets (from DRIFTRANK_DATA_HOME) and a small synthetic one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests run on 2 cores next to other work: keep every library to one thread unless a test says otherwise.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Property tests draw the same examples on every run and machine, so a failure reproduces; set
# HYPOTHESIS_PROFILE=explore to search with fresh randomness.
try:
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
    _hypothesis_settings.register_profile("explore", derandomize=False)
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    pass

DATA_HOME = Path(
    os.environ.get("DRIFTRANK_DATA_HOME", Path(__file__).resolve().parents[2] / "shared" / "data")
)


def _torch_threads() -> None:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.set_num_threads(1)


_torch_threads()


@pytest.fixture(scope="session")
def data_home() -> Path:
    """Folder holding ml-100k/, ml-latest-small/ and obd/ (fails loudly when absent)."""
    if not (DATA_HOME / "ml-100k").is_dir():
        pytest.fail(f"real data sets not found at {DATA_HOME}; set DRIFTRANK_DATA_HOME")
    return DATA_HOME


@pytest.fixture(scope="session")
def ml100k(data_home: Path):
    """MovieLens 100K as shipped in ../shared/data."""
    from driftrank.data import load_dataset

    return load_dataset("ml-100k", data_home, download=False)


@pytest.fixture(scope="session")
def ml_small(data_home: Path):
    """MovieLens latest-small as shipped in ../shared/data."""
    from driftrank.data import load_dataset

    return load_dataset("ml-latest-small", data_home, download=False)


@pytest.fixture(scope="session")
def drifting():
    """The seeded synthetic data set with users switching topic half way (300 users, 400 items)."""
    from driftrank.data import make_drifting

    return make_drifting(seed=0)


@pytest.fixture(scope="session")
def small_drifting():
    """A tiny synthetic data set (60 users, 90 items) for fast model tests."""
    from driftrank.data import make_drifting

    return make_drifting(n_users=60, n_items=90, n_topics=3, events_per_user=(8, 14), seed=1)


def small_engine_config(**changes: object):  # -> driftrank.engine.EngineConfig
    """A fast engine for tests: hashing text encoder, a 1-layer re-ranker trained 2 epochs,
    40 candidates; ``changes`` override any field."""
    from driftrank.engine import EncoderConfig, EngineConfig
    from driftrank.fusion import FusionConfig
    from driftrank.rerank._model import SequenceRerankerConfig

    base: dict[str, object] = {
        "encoder": EncoderConfig(kind="hashing", dim=64),
        "reranker": SequenceRerankerConfig(dim=32, n_layers=1, max_epochs=2, n_hard=8, n_random=16),
        "fusion_config": FusionConfig(max_epochs=15),
        "n_candidates": 40,
    }
    base.update(changes)
    return EngineConfig(**base)  # type: ignore[arg-type]
