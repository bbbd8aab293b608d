"""Run one function per case in worker processes, with a progress bar.

Spawned (not forked) workers: the parent may already have run torch/OpenMP code, and forking after
that can deadlock the children. Each worker gets one BLAS/OpenMP thread so `-j N` means N cores.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


@contextmanager
def _single_threaded_children() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: "1" for k in _THREAD_VARS})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def map_cases(fn: Callable[[T], R], items: Sequence[T], workers: int | None, *, desc: str,
              progress: bool = True) -> list[R]:
    """`[fn(x) for x in items]` in input order, over `workers` processes (default: all cores)."""
    workers = default_workers() if workers is None else max(1, workers)
    bar = dict(total=len(items), desc=desc, unit="case", disable=not progress, leave=False)
    if workers == 1 or len(items) <= 1:
        return [fn(x) for x in tqdm(items, **bar)]
    with _single_threaded_children():
        with ProcessPoolExecutor(min(workers, len(items)), mp_context=mp.get_context("spawn")) as pool:
            return list(tqdm(pool.map(fn, items), **bar))
