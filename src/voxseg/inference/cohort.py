"""Predicting cohorts: discovery, shards, resuming, background reading/preprocessing and writing.

- Reading/preprocessing of the next cases and writing of finished ones run beside the network:
  in two background threads by default (numpy, torch and SimpleITK release the GIL in their heavy
  parts), or with ``io_workers=N`` in N reading and N writing processes (nnU-Net's -npp/-nps), for
  cohorts whose preprocessing or export outweighs the network. At most ``N + 1`` cases are read
  ahead and ``N + 1`` writes are pending, so memory stays bounded on cohorts of any size.
- ``part=(i, n)`` takes every n-th case starting at i of the sorted case list (nnU-Net's
  ``-part_id/-num_parts``), so n processes or machines share a cohort without coordination; under
  ``torchrun`` the rank and world size choose the part (`predict` below).
- ``skip_existing`` (``--continue``) skips cases whose outputs all exist: every output is written
  atomically, so an existing file is a complete one, and nothing finished is written again.
- A case that cannot be read is reported with its reason and skipped; the others go on.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voxseg.data.io import Geometry, file_ending, label_file_ending, read_case_images, write_image
from voxseg.data.spec import case_id_of, scan_case_files
from voxseg.device import resolve_device
from voxseg.distributed import init_distributed, shutdown_distributed
from voxseg.errors import InputError, NotFoundError, VoxsegError
from voxseg.inference import ensemble
from voxseg.inference.models import load_models, load_postprocessing
from voxseg.inference.predictor import CasePrediction, Predictor
from voxseg.io_utils import remove_temp_files
from voxseg.parallel import process_pool
from voxseg.plans import Plan
from voxseg.preprocessing.preprocess import preprocess_case
from voxseg.progress import Progress


@dataclass
class CaseInput:
    case_id: str
    files: list[Path]


@dataclass
class CohortResult:
    """What a cohort prediction did; `summary()` is the line `voxseg predict` ends with."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # complete outputs already there (--continue)
    failed: dict[str, str] = field(default_factory=dict)  # case id -> reason
    seconds: float = 0.0

    def summary(self) -> str:
        text = f"{len(self.written)} case(s) predicted"
        if self.skipped:
            text += f", {len(self.skipped)} already done"
        if self.failed:
            text += f", {len(self.failed)} failed ({'; '.join(f'{c}: {r}' for c, r in self.failed.items())})"
        return text + f" in {self.seconds:.1f} s"


def discover_cases(input_dir: Path) -> tuple[list[CaseInput], str]:
    """The cases of a folder of CASE_XXXX<ending> images (a case's files in channel order; one
    file may hold several channels, e.g. RGB) and their file ending."""
    if not input_dir.is_dir():
        raise NotFoundError("input folder not found", path=input_dir, fix="pass a folder of CASE_0000<ending> images")
    files = sorted(p for p in input_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    endings = {file_ending(p) for p in files if case_id_of(p, file_ending(p))}
    if not endings:
        raise InputError(
            "no images named CASE_0000<ending> found", path=input_dir, fix="name images like nnU-Net: CASE_0000.nii.gz"
        )
    if len(endings) > 1:
        raise InputError(f"mixed file endings {sorted(endings)}", path=input_dir, fix="keep one format per folder")
    ending = endings.pop()
    return [CaseInput(cid, list(files)) for cid, files in scan_case_files(input_dir, ending).items()], ending


def select_part(cases: Sequence[CaseInput], part: tuple[int, int] | None) -> list[CaseInput]:
    """Shard `part` = (i, n) of the cases: every n-th case of the sorted list, starting at i."""
    if part is None:
        return list(cases)
    i, n = part
    if n < 1 or not 0 <= i < n:
        raise InputError(f"part {i}/{n} does not exist", fix="use --part I/N with 0 <= I < N, e.g. --part 0/4")
    return sorted(cases, key=lambda c: c.case_id)[i::n]


def output_files(output_dir: Path, case_id: str, ending: str, *, probabilities: bool, heads: Sequence[str] = ()) -> list[Path]:
    """Every file a case's prediction writes (the segmentation first)."""
    files = [output_dir / f"{case_id}{ending}"]
    if probabilities:
        files.append(output_dir / f"{case_id}.npz")
    files += [output_dir / f"{case_id}_{name}{ending}" for name in heads]
    return files


def _load(case: CaseInput, preprocessing: list[tuple[Plan, str]]) -> tuple[list[tuple[np.ndarray, dict]], Geometry]:
    """Read and preprocess one case for every model group (runs in a reader thread or process)."""
    plan = preprocessing[0][0]
    images, geometry = read_case_images(case.files, plan.image_reader, n_channels=len(plan.channel_names))
    try:
        return [preprocess_case(images, geometry, plan, config)[::2] for plan, config in preprocessing], geometry
    except VoxsegError as e:  # e.g. values a normalisation refuses: name the case's file
        raise type(e)(e.message, path=e.path or case.files[0], fix=e.fix) from None


def _write(files: list[Path], pred: CasePrediction, geometry: Geometry, regions_class_order: Sequence[int] | None) -> None:
    """Write one case's outputs (runs in a writer thread or process); each file atomically."""
    write_image(files[0], pred.segmentation, geometry)
    rest = iter(files[1:])
    if pred.probabilities is not None:
        ensemble.save_probabilities(next(rest), pred.probabilities, geometry, regions_class_order=regions_class_order)
    for hseg, path in zip(pred.heads.values(), rest):
        write_image(path, hseg, geometry)


def predict_cases(
    predictor: Predictor,
    cases: list[CaseInput],
    ending: str,
    output_dir: Path,
    *,
    save_probabilities: bool = False,
    heads: bool = False,
    progress: bool = True,
    io_workers: int = 0,
    skip_existing: bool = False,
) -> CohortResult:
    """Predict every case into `output_dir` (see the module docstring); returns what happened.

    `ending` is the images' file ending; segmentations are written in the same format (PNG for
    JPEG images, which cannot hold label maps).
    """
    start = time.perf_counter()
    ending = label_file_ending(ending)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    head_names = predictor.groups[0].head_names if heads else []
    result = CohortResult()
    todo = []
    for case in cases:
        files = output_files(output_dir, case.case_id, ending, probabilities=save_probabilities, heads=head_names)
        if skip_existing and all(f.is_file() for f in files):
            result.skipped.append(case.case_id)
        else:
            remove_temp_files(output_dir, f"{case.case_id}.")  # left by a killed run; other shards' cases untouched
            todo.append((case, files))
    preprocessing = predictor.preprocessing()
    order = predictor.outputs.regions_class_order or None
    predictor.expected_cases = max(1, len(todo))
    with ExitStack() as stack, Progress(len(todo), "predict", unit="case", enabled=progress) as bar:
        if io_workers > 0:
            reader: Executor = stack.enter_context(process_pool(io_workers))
            writer: Executor = stack.enter_context(process_pool(io_workers))
        else:
            reader = stack.enter_context(ThreadPoolExecutor(max_workers=1))
            writer = stack.enter_context(ThreadPoolExecutor(max_workers=1))
        ahead = max(io_workers, 1) + 1
        loads: deque[Future] = deque(reader.submit(_load, case, preprocessing) for case, _ in todo[:ahead])
        writes: deque[tuple[str, Future]] = deque()
        for i, (case, files) in enumerate(todo):
            current = loads.popleft()
            if i + ahead < len(todo):
                loads.append(reader.submit(_load, todo[i + ahead][0], preprocessing))
            try:
                prepared, geometry = current.result()
            except VoxsegError as e:
                print(f"skipped {case.case_id}: {e.one_line()}", file=sys.stderr)
                result.failed[case.case_id] = e.message
                bar.update()
                continue
            with bar.sub(predictor.tile_count(prepared, heads), unit="tile") as tiles:
                predictor.on_tiles = tiles.update
                try:
                    pred = predictor.predict_prepared(prepared, probabilities=save_probabilities, heads=heads)
                finally:
                    predictor.on_tiles = None
            while len(writes) >= ahead:
                _finish(writes.popleft(), result)
            writes.append((case.case_id, writer.submit(_write, files, pred, geometry, order)))
            bar.update()
        while writes:
            _finish(writes.popleft(), result)
    result.seconds = time.perf_counter() - start
    return result


def _finish(pending: tuple[str, Future], result: CohortResult) -> None:
    case_id, future = pending
    future.result()  # a failed write (disk full, ...) is an error of the whole run, not of one case
    result.written.append(case_id)


def predict(
    run_dirs: Iterable[str | Path],
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    folds: Sequence[str] | None = None,
    checkpoint: str | None = None,
    backend: str = "torch",
    tta: bool = True,
    step: float = 0.5,
    tile_batch: int | None = None,
    device: str = "auto",
    save_probabilities: bool = False,
    heads: bool = False,
    progress: bool = True,
    io_workers: int = 0,
    skip_existing: bool = False,
    part: tuple[int, int] | None = None,
    precision: str = "auto",
    compile: str = "auto",
) -> CohortResult:
    """`voxseg predict`: the cases of `input_dir` (or their `part`) into `output_dir`.

    Under torchrun each process takes the shard of its rank (of `part`, when given too) and, on
    CUDA, the GPU of its local rank; every rank returns the merged result of all ranks.

    Args:
        run_dirs: run folders, model zips (`voxseg export`) or installed models; several = an ensemble.
        input_dir: a folder of CASE_0000<ending> images (one file per channel).
        output_dir: where CASE<ending> segmentations (and CASE.npz probabilities) are written.
        folds: fold names to use (None: every fold there is).
        checkpoint: "final", "best" or "latest" (None: final; a zip's own kind).
        backend: "torch", or "onnx" for the ONNX networks of a zip exported with ``--onnx``.
        tta, step, tile_batch: mirroring, tile step (fraction of the patch), tiles per forward pass.
        device: "auto", "cuda", "mps" or "cpu".
        save_probabilities, heads: also write CASE.npz / the extra heads.
        progress, io_workers, skip_existing, part: see the module docstring.
        precision: "auto" (bf16 where the hardware computes it natively, see `voxseg.device`), "fp32", "bf16", "fp16".
        compile: "auto" (torch.compile on the CPU when the cohort's network work pays for it), "on" or "off".

    Example:
        >>> import voxseg
        >>> result = voxseg.predict([run], images, tmp / "predictions", device="cpu", progress=False)
        >>> result.failed
        {}
    """
    runs = [Path(r) for r in run_dirs]
    dev = resolve_device(device, local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    dist = init_distributed(dev.type)
    try:
        groups = load_models(runs, folds, checkpoint, dev, backend)
        predictor = Predictor(
            groups,
            dev,
            tta=tta,
            step=step,
            tile_batch=tile_batch,
            postprocessing=load_postprocessing(runs),
            precision=precision,
            compile=compile,
        )
        cases, ending = discover_cases(Path(input_dir))
        cases = select_part(select_part(cases, part), (dist.rank, dist.world_size) if dist.world_size > 1 else None)
        result = predict_cases(
            predictor,
            cases,
            ending,
            Path(output_dir),
            save_probabilities=save_probabilities,
            heads=heads,
            progress=progress and dist.is_main,
            io_workers=io_workers,
            skip_existing=skip_existing,
        )
        return merge_results(dist.gather(result))
    finally:
        shutdown_distributed()


def merge_results(results: list[CohortResult]) -> CohortResult:
    merged = CohortResult(seconds=max(r.seconds for r in results))
    for r in results:
        merged.written += r.written
        merged.skipped += r.skipped
        merged.failed.update(r.failed)
    return merged
