"""Helpers of the benchmark scripts: a busy neighbour process and the machine's matmul rate.

``busy_neighbour()`` starts one process that spins on a core (``while True: pass``) for the
length of a ``with`` block and stops it after, whatever happens inside: the situation of a
dream env beside an SB3 learner, subprocess envs or a browser. ``matmul_gflops()`` measures the
best float32 rate of ``torch.mm`` of square matrices at torch's current thread count: the ceiling
that a batched dream step, mostly matrix products, can approach.
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

import torch

NEIGHBOUR_CODE = "while True: pass"
NEIGHBOUR_SETTLE_SECONDS = 0.5
"""Wait after starting the neighbour, so that it spins before the first timed step."""


@contextlib.contextmanager
def busy_neighbour(active: bool = True) -> Iterator[subprocess.Popen[bytes] | None]:
    """One busy-looping Python process for the body of the block (nothing if not ``active``).

    Yields the process (None when not active); it is terminated (killed if it lingers) when the
    block ends, also on an error or Ctrl-C.
    """
    if not active:
        yield None
        return
    process = subprocess.Popen(
        [sys.executable, "-S", "-c", NEIGHBOUR_CODE],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(NEIGHBOUR_SETTLE_SECONDS)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def matmul_gflops(
    sizes: Sequence[int] = (512, 1024, 2048), repeats: int = 5, dtype: torch.dtype = torch.float32
) -> float:
    """The machine's matmul rate: the best GFLOP/s of ``torch.mm`` of two (n, n) matrices over
    ``sizes`` (each the median of ``repeats`` products after an untimed one), at torch's
    current thread count."""
    best = 0.0
    for size in sizes:
        a = torch.randn(size, size, dtype=dtype)
        b = torch.randn(size, size, dtype=dtype)
        out = torch.empty(size, size, dtype=dtype)
        torch.mm(a, b, out=out)
        times = []
        for _ in range(repeats):
            begin = time.perf_counter()
            torch.mm(a, b, out=out)
            times.append(time.perf_counter() - begin)
        best = max(best, 2 * size**3 / statistics.median(times) / 1e9)
    return best
