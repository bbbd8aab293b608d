"""The training loader: an infinite, reproducible stream of `Batch`es cut from the store.

Division of work. The main process decides *what* each batch holds: for batch index k it draws the
case ids (from the case sampler's current probabilities) and the forced-foreground flags with the
generator `default_rng([seed, rank, k, 0])`. Workers only decide *where* (patch positions, with
`default_rng([seed, rank, k, 1])`), crop and collate. So a batch depends only on (seed, rank, k) and
the probabilities in force when it is served -- not on the worker count or on scheduling -- and an
adaptive probability change is seen at once: prefetched batches drawn with older probabilities are
dropped and redrawn (a few batches per epoch).

Why hand-written rather than torch's DataLoader: its workers pickle every batch into a freshly
allocated shared-memory segment and own the sampling order. Here a fixed set of shared-memory
batch slots is allocated once; workers write patches straight into a slot and send back only the
slot number and a few class ids. RAM is bounded by construction (workers * prefetch slots, plus
slots the caller still holds), workers never import CUDA, and each slot can be pinned once
(cudaHostRegister) instead of copying every batch into pinned memory. A returned `Batch` views its
slot; the slot is reused only after every tensor of that batch has been garbage collected.

Augmentation in the loader (the CPU fallback). Given an `Augmenter`, each worker crops the enlarged
patch into a private buffer, augments it with one thread and writes the final patch into the slot,
so augmentation runs in as many processes as there are workers. Its random stream is re-seeded
per batch from (seed, rank, k, 2), which keeps a batch independent of the worker count.

Workers end with the main process even when it is killed with SIGKILL
(`voxseg.parallel.die_with_parent`); the resource tracker then unlinks the slots (named
``voxseg_<pid>_<random>`` in /dev/shm) and exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import multiprocessing as mp
import os
import queue
import secrets
import threading
import traceback
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory

import numpy as np
import torch

from voxseg.augment.pipeline import Augmenter
from voxseg.errors import VoxsegError
from voxseg.parallel import die_with_parent
from voxseg.preprocessing.store import Store, StoredCase
from voxseg.sampling.batch import Batch
from voxseg.sampling.case_sampler import CaseSampler
from voxseg.sampling.config import SamplingSettings
from voxseg.sampling.patch_sampler import PatchSampler, forced_flags
from voxseg.sampling.stats import SamplingStats

_WORKER_POLL_S = 5.0
SHM_PREFIX = "voxseg_"


@dataclass(frozen=True)
class _Layout:
    """Shapes of one batch; every slot holds exactly one batch in one contiguous buffer."""

    batch_size: int
    channels: int
    input_size: tuple[int, ...]
    extra: tuple[str, ...]

    def arrays(self, buf) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        b, s = self.batch_size, self.input_size
        n = int(np.prod(s))
        image = np.ndarray((b, self.channels, *s), np.float32, buffer=buf)
        offset = image.nbytes
        labels = []
        for _ in range(1 + len(self.extra)):
            labels.append(np.ndarray((b, 1, *s), np.int16, buffer=buf, offset=offset))
            offset += b * n * 2
        return image, labels[0], dict(zip(self.extra, labels[1:]))

    @property
    def nbytes(self) -> int:
        n = self.batch_size * int(np.prod(self.input_size))
        return n * (4 * self.channels + 2 * (1 + len(self.extra)))


@dataclass(frozen=True)
class _Job:
    job_id: int
    batch_index: int
    slot: int
    slot_name: str | None
    case_ids: tuple[str, ...]
    forced: tuple[bool, ...]


class _Filler:
    """Crops (and, with an augmenter, augments) one batch into a slot; lives in a worker (or
    in-process) and caches opened cases."""

    def __init__(
        self, store: Store, sampler: PatchSampler, layout: _Layout, seed: int, rank: int, augmenter: Augmenter | None = None
    ):
        self.store = store
        self.sampler, self.layout, self.seed, self.rank = sampler, layout, seed, rank
        self.augmenter = augmenter
        self.crop_layout = dataclasses.replace(layout, input_size=sampler.input_size)
        self._crop_buf: bytearray | None = None
        self.cases: dict[str, StoredCase] = {}

    def case(self, case_id: str) -> StoredCase:
        if case_id not in self.cases:
            self.cases[case_id] = self.store.open(case_id)
        return self.cases[case_id]

    def fill(self, job: _Job, image: np.ndarray, seg: np.ndarray, extra: dict[str, np.ndarray]) -> list[list[int]]:
        if self.augmenter is None:
            return self._crop(job, image, seg, extra)
        if self._crop_buf is None:
            self._crop_buf = bytearray(self.crop_layout.nbytes)
        crop_image, crop_seg, crop_extra = self.crop_layout.arrays(self._crop_buf)
        classes = self._crop(job, crop_image, crop_seg, crop_extra)
        self.augmenter.generator.manual_seed(
            int(np.random.default_rng([self.seed, self.rank, job.batch_index, 2]).integers(2**62))
        )
        # Both layouts list the extra maps in the same (sorted) order.
        out_image, out_labels = self.augmenter(
            torch.from_numpy(crop_image), [torch.from_numpy(a) for a in [crop_seg, *crop_extra.values()]]
        )
        image[...] = out_image.numpy()
        for target, label in zip([seg, *extra.values()], out_labels):
            target[...] = label.numpy()
        return classes

    def _crop(self, job: _Job, image: np.ndarray, seg: np.ndarray, extra: dict[str, np.ndarray]) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.rank, job.batch_index, 1])
        classes = []
        for i, (case_id, forced) in enumerate(zip(job.case_ids, job.forced)):
            case = self.case(case_id)
            choice = self.sampler.choose(case, forced, rng)
            self.sampler.crop(case, choice, image[i], seg[i], {n: a[i] for n, a in extra.items()})
            classes.append(self.sampler.classes_in_patch(case, choice))
        return classes


def _worker_main(filler: _Filler, jobs: mp.Queue, results: mp.Queue, parent_pid: int) -> None:
    die_with_parent(parent_pid)
    torch.set_num_threads(1)
    attached: dict[str, shared_memory.SharedMemory] = {}
    while True:
        job = jobs.get()
        if job is None:
            break
        try:
            if job.slot_name not in attached:
                # Workers share the main process's resource tracker (see PatchLoader.__init__), a
                # set of names: attaching re-registers the slot harmlessly, main's unlink removes it.
                attached[job.slot_name] = shared_memory.SharedMemory(name=job.slot_name)
            arrays = filler.layout.arrays(attached[job.slot_name].buf)
            results.put((job.job_id, filler.fill(job, *arrays), None))
        except VoxsegError as e:  # e.g. a damaged store file: the main process shows its one line
            results.put((job.job_id, None, e))
        except Exception:
            results.put((job.job_id, None, traceback.format_exc()))
    for shm in attached.values():
        shm.close()


def _slot_name() -> str:
    """``voxseg_<pid>_<random>``: after a crash, what is left in /dev/shm says whose it was."""
    return f"{SHM_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"


class _Slot:
    def __init__(self, layout: _Layout, shared: bool, pin: bool):
        self.shm = shared_memory.SharedMemory(_slot_name(), create=True, size=max(layout.nbytes, 1)) if shared else None
        self.buf = self.shm.buf if self.shm is not None else bytearray(layout.nbytes)
        self.pinned = False
        image, seg, extra = layout.arrays(self.buf)
        self.tensors = (torch.from_numpy(image), torch.from_numpy(seg), {k: torch.from_numpy(v) for k, v in extra.items()})
        if pin:
            try:
                status = torch.cuda.cudart().cudaHostRegister(self.tensors[0].data_ptr(), layout.nbytes, 0)
            except (RuntimeError, AttributeError):  # no usable CUDA runtime: pageable copies still work
                status = -1
            self.pinned = int(status) == 0

    def close(self) -> None:
        if self.pinned:
            torch.cuda.cudart().cudaHostUnregister(self.tensors[0].data_ptr())
        del self.tensors  # the slot's memory can go once the last batch view is gone
        if self.shm is not None:
            self.shm.unlink()
            # BufferError: the caller still holds a batch of this slot; the mapping goes with it
            with contextlib.suppress(BufferError):
                self.shm.close()


class PatchLoader:
    """Infinite iterator of `Batch`es; `state_dict()` / `load_state_dict()` resume the same stream.

    Batches are views of reusable slots: keep a batch (or its tensors) as long as you need it, the
    slot is recycled when all of its tensors are gone. `close()` (or `with`) stops the workers.
    """

    def __init__(
        self,
        store: Store,
        case_sampler: CaseSampler,
        *,
        patch_size: Sequence[int],
        batch_size: int,
        input_size: Sequence[int] | None = None,
        has_ignore: bool = False,
        settings: SamplingSettings | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool | None = None,
        patch_sampler: PatchSampler | None = None,
        augmenter: Augmenter | None = None,
    ):
        """`patch_sampler` replaces the one built from settings (e.g. a subclass with its own `choose`).

        With `augmenter`, the loader crops `augmenter.input_size()` and delivers augmented batches
        of `augmenter.patch_size` (`Batch.augmented`); `input_size` is then taken from it.
        """
        settings = settings or SamplingSettings()
        if augmenter is not None:
            input_size = augmenter.input_size()
        self.case_sampler = case_sampler
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        self.correct_bias = settings.correct_bias
        self.forced = forced_flags(batch_size, settings.oversample_foreground, rank=rank, world_size=world_size)
        sampler = patch_sampler or PatchSampler(
            patch_size,
            input_size,
            has_ignore=has_ignore,
            center_jitter=settings.center_jitter,
            class_probabilities=settings.class_probabilities,
        )
        self.annotated = annotated_outputs(store, case_sampler.case_ids)
        first = store.open(case_sampler.case_ids[0])
        delivered = augmenter.patch_size if augmenter is not None else sampler.input_size
        self.augmented = augmenter is not None
        self.layout = _Layout(batch_size, first.image.shape[0], tuple(delivered), tuple(sorted(first.extra)))
        self._filler = _Filler(store, sampler, self.layout, seed, rank, augmenter)
        self.workers = settings.resolved_workers()
        self._depth = self.workers * settings.prefetch
        self._pin = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.stats = SamplingStats()
        self._served = 0
        self._slots: list[_Slot] = []
        self._free: deque[int] = deque()
        self._job_ids = itertools.count()
        self._pending: dict[int, tuple[int, int]] = {}  # batch index -> (job id, case-sampler version)
        self._jobs_meta: dict[int, _Job] = {}
        self._done: dict[int, list[list[int]]] = {}
        self._lock = threading.Lock()
        self._procs: list[mp.process.BaseProcess] = []
        if self.workers > 0:
            # One resource tracker for the main process and its workers: started after the fork,
            # each worker would get its own tracker, which unlinks the slots it attached at exit.
            resource_tracker.ensure_running()
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
            self._jobs, self._results = ctx.Queue(), ctx.Queue()
            for _ in range(self.workers):
                p = ctx.Process(target=_worker_main, args=(self._filler, self._jobs, self._results, os.getpid()), daemon=True)
                p.start()
                self._procs.append(p)
        self._finalizer = weakref.finalize(self, PatchLoader._shutdown, self._procs, self._slots, getattr(self, "_jobs", None))

    # -- iteration ---------------------------------------------------------------------------------
    def __iter__(self) -> PatchLoader:
        return self

    def __next__(self) -> Batch:
        k = self._served
        if self.workers == 0:
            job = self._make_job(k)
            del self._jobs_meta[job.job_id]
            image, seg, extra = self.layout.arrays(self._slots[job.slot].buf)
            classes = self._filler.fill(job, image, seg, extra)
        else:
            self._drop_stale()
            self._submit_ahead()
            job, classes = self._wait_for(k)
        self._served += 1
        if self.workers > 0:
            self._submit_ahead()
        self.stats.record(job.case_ids, job.forced, classes)
        return self._batch(job)

    def _make_job(self, k: int) -> _Job:
        rng = np.random.default_rng([self.seed, self.rank, k, 0])
        idx = self.case_sampler.draw(self.batch_size, rng)
        slot = self._take_slot()
        shm = self._slots[slot].shm
        name = shm.name if shm is not None else None
        job = _Job(
            next(self._job_ids),
            k,
            slot,
            name,
            tuple(self.case_sampler.case_ids[i] for i in idx),
            tuple(bool(f) for f in self.forced),
        )
        self._jobs_meta[job.job_id] = job
        return job

    def _take_slot(self) -> int:
        with self._lock:
            if self._free:
                return self._free.popleft()
        self._slots.append(_Slot(self.layout, shared=self.workers > 0, pin=self._pin))
        return len(self._slots) - 1

    def _release(self, slot: int) -> None:
        with self._lock:
            self._free.append(slot)

    def _submit_ahead(self) -> None:
        for k in range(self._served, self._served + self._depth):
            if k not in self._pending:
                job = self._make_job(k)
                self._pending[k] = (job.job_id, self.case_sampler.version)
                self._jobs.put(job)

    def _drop_stale(self) -> None:
        """Forget prefetched batches drawn with older case probabilities (their slots free on arrival)."""
        version = self.case_sampler.version
        for k in [k for k, (_, v) in self._pending.items() if v != version]:
            job_id, _ = self._pending.pop(k)
            if job_id in self._done:
                self._done.pop(job_id)
                self._release(self._jobs_meta.pop(job_id).slot)

    def _wait_for(self, k: int) -> tuple[_Job, list[list[int]]]:
        job_id, _ = self._pending[k]
        while job_id not in self._done:
            try:
                got_id, classes, error = self._results.get(timeout=_WORKER_POLL_S)
            except queue.Empty:
                dead = [p.exitcode for p in self._procs if not p.is_alive()]
                if dead:
                    raise RuntimeError(
                        f"a loader worker died (exit codes {dead}); out of memory? try fewer sampling.workers"
                    ) from None
                continue
            if isinstance(error, VoxsegError):
                raise error
            if error is not None:
                raise RuntimeError(f"loader worker failed:\n{error}")
            if got_id in self._jobs_meta and any(j == got_id for j, _ in self._pending.values()):
                self._done[got_id] = classes
            else:  # result of a dropped stale job
                self._release(self._jobs_meta.pop(got_id).slot)
        del self._pending[k]
        return self._jobs_meta.pop(job_id), self._done.pop(job_id)

    def _batch(self, job: _Job) -> Batch:
        image, seg, extra = self._slots[job.slot].tensors
        views = [image[:], seg[:]] + [v[:] for v in extra.values()]
        # Release the slot once the caller has dropped every tensor of this batch.
        remaining = [len(views)]

        def one_gone(slot: int = job.slot) -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                self._release(slot)

        for v in views:
            weakref.finalize(v, one_gone)
        weights = (
            self.case_sampler.importance_weights(job.case_ids) if self.correct_bias else np.ones(len(job.case_ids), np.float32)
        )
        return Batch(
            image=views[0],
            seg=views[1],
            extra=dict(zip(extra, views[2:])),
            case_ids=list(job.case_ids),
            forced=torch.tensor(job.forced, dtype=torch.bool),
            weights=torch.from_numpy(np.asarray(weights, np.float32)),
            augmented=self.augmented,
            annotated=None if self.annotated is None else torch.from_numpy(np.stack([self.annotated[c] for c in job.case_ids])),
        )

    # -- state -------------------------------------------------------------------------------------
    def current_stats(self) -> SamplingStats:
        self.stats.probabilities = self.case_sampler.probabilities_by_case()
        self.stats.schedule = list(self.case_sampler.schedule)
        return self.stats

    def write_stats(self, path) -> None:
        from voxseg.io_utils import atomic_write_json

        atomic_write_json(path, self.current_stats().to_json())

    def state_dict(self) -> dict:
        return {"served": self._served, "case_sampler": self.case_sampler.state_dict(), "stats": self.stats.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.case_sampler.load_state_dict(state["case_sampler"])
        self.stats.load_state_dict(state["stats"])
        self._served = int(state["served"])
        # Prefetched batches were for the old position; results still in flight free their slot on arrival.
        for job_id, _ in self._pending.values():
            if job_id in self._done:
                self._done.pop(job_id)
                self._release(self._jobs_meta.pop(job_id).slot)
        self._pending.clear()

    # -- shutdown ----------------------------------------------------------------------------------
    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> PatchLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _shutdown(procs: list, slots: list[_Slot], jobs) -> None:
        for _ in procs:
            jobs.put(None)
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
        for s in slots:
            s.close()
        slots.clear()


def annotated_outputs(store: Store, case_ids: Sequence[str]) -> dict[str, np.ndarray] | None:
    """Per case, which outputs its label map annotates (bool per output channel, from the store's
    ``annotated_outputs``); None when every case is fully annotated (the common case: no masks)."""
    props = {c: store.properties(c) for c in case_ids}
    if not any(p.get("annotated_outputs") is not None for p in props.values()):
        return None
    channels = next(len(p["annotated_outputs"]) for p in props.values() if p.get("annotated_outputs") is not None)
    return {c: np.asarray(p.get("annotated_outputs") or [True] * channels, dtype=bool) for c, p in props.items()}


def build_loader(
    store_root: str | os.PathLike,
    case_ids: Sequence[str],
    settings: SamplingSettings,
    *,
    patch_size: Sequence[int],
    batch_size: int,
    input_size: Sequence[int] | None = None,
    has_ignore: bool = False,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    augmenter: Augmenter | None = None,
) -> PatchLoader:
    """The default wiring: a case sampler from `settings` and a loader around it."""
    store = Store(store_root)
    sampler = CaseSampler.from_settings(settings, store, case_ids)
    return PatchLoader(
        store,
        sampler,
        patch_size=patch_size,
        batch_size=batch_size,
        input_size=input_size,
        has_ignore=has_ignore,
        settings=settings,
        seed=seed,
        rank=rank,
        world_size=world_size,
        augmenter=augmenter,
    )
