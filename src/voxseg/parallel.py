"""Run one function per case in worker processes, with a progress bar; child processes die with
their parent.

Spawned (not forked) workers: the parent may already have run torch/OpenMP code, and forking after
that can deadlock the children. Each worker gets one BLAS/OpenMP thread so `-j N` means N cores.

`die_with_parent` is called first thing in every child voxseg starts (these pool workers and the
training loader's workers): a parent killed with SIGKILL (out-of-memory killer, a scheduler's
time limit, ``kill -9``) otherwise leaves its children running, holding memory and shared-memory
segments. Once the children are gone, multiprocessing's resource tracker sees its pipe close,
unlinks the shared memory the dead parent had registered, and exits too.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from voxseg.progress import track

T = TypeVar("T")
R = TypeVar("R")
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>
_PARENT_POLL_S = 1.0


def _set_parent_death_signal() -> bool:
    """Ask Linux to SIGKILL this process when its parent dies; False where that is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(_PARENT_POLL_S)
    os._exit(1)


def die_with_parent(parent_pid: int) -> None:
    """End this child process as soon as `parent_pid` (its parent at start) is gone.

    Call it first thing in the child, with the parent's pid taken before the child started. Linux:
    the parent-death signal, then one check that the parent is still `parent_pid` (it may have died
    before the signal was armed). Elsewhere a daemon thread polls the parent every second. The Linux
    signal fires when the parent *thread* that started the child exits: start children from a thread
    that lives as long as they do (voxseg starts them from the main thread).

    Args:
        parent_pid: ``os.getpid()`` of the parent, read before starting the child.

    Example:
        >>> ProcessPoolExecutor(2, initializer=die_with_parent, initargs=(os.getpid(),))  # doctest: +SKIP
    """
    armed = _set_parent_death_signal()
    if os.getppid() != parent_pid:
        os._exit(1)
    if not armed:
        threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), name="voxseg-parent-watch", daemon=True).start()


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


@contextmanager
def process_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A pool of `workers` spawned, single-threaded processes that die with this one.

    The pool starts its processes lazily (on submit), so the one-thread environment stays set for
    as long as the pool is open.
    """
    with (
        _single_threaded_children(),
        ProcessPoolExecutor(
            workers, mp_context=mp.get_context("spawn"), initializer=die_with_parent, initargs=(os.getpid(),)
        ) as pool,
    ):
        yield pool


def map_cases(fn: Callable[[T], R], items: Sequence[T], workers: int | None, *, desc: str, progress: bool = True) -> list[R]:
    """`[fn(x) for x in items]` in input order, over `workers` processes (default: all cores)."""
    workers = default_workers() if workers is None else max(1, workers)
    if workers == 1 or len(items) <= 1:
        return [fn(x) for x in track(items, desc, total=len(items), unit="case", enabled=progress)]
    with process_pool(min(workers, len(items))) as pool:
        return list(track(pool.map(fn, items), desc, total=len(items), unit="case", enabled=progress))
