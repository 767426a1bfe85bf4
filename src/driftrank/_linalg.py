"""Matrix products on the serving path, run by torch.

The re-ranker runs on torch's thread pool; a numpy product runs on OpenBLAS's, whose threads
keep spinning for a while after each call. On a machine with as many cores as threads (the
2-core reference machine) the two pools then take the cores from each other: measured, a
one-user request with two threads went from 9.6 to 16 ms at p50 (and 80 ms at p90) when the
exact item search and the interest similarity used numpy products, and its p99 from 11.6 to
17.7 ms with the factor channels' and the fusion layer's products in numpy too. Products
that serve requests go here, and the large ones run in torch, which only reads the arrays.
In a process that has not imported torch (a retrieval channel used alone) there is no second
pool, and numpy computes them all.

Small products go to numpy. Between two requests the caches are cold, and then
torch's dispatch costs more than such a product: a ``[1, 4] @ [4, 16]`` took 98 µs by torch
and 17 µs by numpy after a 48 MB sweep (11 and 1.5 µs warm). OpenBLAS runs them on the
calling thread: measured with two threads, every product up to 430,000 multiply-adds kept
one thread busy, and products from 512,000 up used both. With products of at most 2^18
multiply-adds in numpy, a one-user request took 12% less time at p50 and 21% less at p99
(medians over eight rounds of 300 users, alternating with all products in torch); with
2^20, which moves the exact item search (646,000) to OpenBLAS's threads, twice as long.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import numpy as np

_readonly_seen = False
_SMALL = 1 << 18  # multiply-adds up to which numpy computes the product


def _tensor(a: np.ndarray) -> Any:
    import torch

    global _readonly_seen
    if a.flags.writeable or _readonly_seen:
        return torch.from_numpy(a)
    # torch warns once per process that it cannot mark the tensor read-only; it is only read.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        out = torch.from_numpy(a)
    _readonly_seen = True
    return out


def matmul_t(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b.T`` for ``a: [n, d]`` and ``b: [m, d]``, in float64 when either is float64,
    else float32: by torch when the process has imported it and the product is larger than
    ``_SMALL`` multiply-adds, else by numpy (the same values up to float rounding)."""
    a, b = np.asarray(a), np.asarray(b)
    dtype = np.float64 if np.float64 in (a.dtype, b.dtype) else np.float32
    if "torch" not in sys.modules or a.shape[0] * b.shape[0] * a.shape[1] <= _SMALL:
        return np.matmul(a.astype(dtype, copy=False), b.astype(dtype, copy=False).T)
    import torch

    x = _tensor(np.ascontiguousarray(a, dtype=dtype))
    y = _tensor(np.ascontiguousarray(b, dtype=dtype))
    with torch.inference_mode():
        return (x @ y.T).numpy()  # type: ignore[no-any-return]
