"""The serving path's matrix products (torch) against numpy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from driftrank._linalg import _SMALL, matmul_t


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [7, 100])  # a small product (numpy) and a large one (torch)
def test_matmul_t_equals_numpy_and_keeps_the_precision(dtype: type, n: int) -> None:
    import torch  # noqa: F401  (the large product goes to torch only once it is imported)

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, 5 * n // 7)).astype(dtype)
    b = rng.standard_normal((3 * n // 7, 5 * n // 7)).astype(dtype)
    assert (a.shape[0] * b.shape[0] * a.shape[1] > _SMALL) == (n > 7)
    out = matmul_t(a, b)
    assert out.dtype == dtype and out.shape == (n, 3 * n // 7)
    np.testing.assert_allclose(
        out, a @ b.T, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-4 if dtype == np.float32 else 1e-12
    )
    # Mixed inputs compute in float64; a non-contiguous view works.
    mixed = matmul_t(a.astype(np.float32), b.astype(np.float64)[:, ::-1][:, ::-1])
    assert mixed.dtype == np.float64


def test_read_only_inputs_are_used_without_a_warning() -> None:
    b = np.arange(12, dtype=np.float32).reshape(4, 3)
    b.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = matmul_t(np.ones((2, 3), dtype=np.float32), b)
    np.testing.assert_array_equal(out, np.ones((2, 3), dtype=np.float32) @ b.T)
    assert not b.flags.writeable


def test_numpy_computes_them_in_a_process_without_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from driftrank._linalg import _SMALL, matmul_t\n"
        "a = np.arange(6000, dtype=np.float32).reshape(100, 60) / 6000\n"
        "assert 100 * 100 * 60 > _SMALL  # a product torch would compute, were it imported\n"
        "out = matmul_t(a, a)\n"
        "assert 'torch' not in sys.modules\n"
        "assert out.dtype == np.float32 and np.array_equal(out, a @ a.T)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
