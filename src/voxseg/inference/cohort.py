"""Predicting folders of cases: discovery, background reading/preprocessing and writing, failures.

Reading/preprocessing of the next case and writing of the previous one run in background threads
while the device works on the current case (numpy, torch and SimpleITK release the GIL in their
heavy parts). A case that cannot be read is reported and skipped; every output is written
atomically.
"""

from __future__ import annotations

import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from tqdm import tqdm

from voxseg.data.io import Geometry, file_ending, read_case_images, write_image
from voxseg.data.spec import case_id_of
from voxseg.device import resolve_device
from voxseg.errors import InputError, NotFoundError, VoxsegError
from voxseg.inference import ensemble
from voxseg.inference.models import load_models, load_postprocessing
from voxseg.inference.predictor import CasePrediction, Predictor


@dataclass
class CaseInput:
    case_id: str
    files: list[Path]


def discover_cases(input_dir: Path, n_channels: int) -> tuple[list[CaseInput], str]:
    if not input_dir.is_dir():
        raise NotFoundError("input folder not found", path=input_dir, fix="pass a folder of CASE_0000<ending> images")
    files = sorted(p for p in input_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    endings = {file_ending(p) for p in files if case_id_of(p, file_ending(p))}
    if not endings:
        raise InputError("no images named CASE_0000<ending> found", path=input_dir, fix="name images like nnU-Net: CASE_0000.nii.gz")
    if len(endings) > 1:
        raise InputError(f"mixed file endings {sorted(endings)}", path=input_dir, fix="keep one format per folder")
    ending = endings.pop()
    by_case: dict[str, dict[int, Path]] = {}
    for p in files:
        parsed = case_id_of(p, ending)
        if parsed:
            by_case.setdefault(parsed[0], {})[parsed[1]] = p
    cases = [CaseInput(cid, [ch.get(c, input_dir / f"{cid}_{c:04d}{ending}") for c in range(n_channels)]) for cid, ch in sorted(by_case.items())]
    return cases, ending


def predict_cases(
    predictor: Predictor,
    cases: list[CaseInput],
    ending: str,
    output_dir: Path,
    *,
    save_probabilities: bool = False,
    heads: bool = False,
    progress: bool = True,
) -> list[str]:
    """Predict every case; a case that fails to read is reported and skipped. Returns failures."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []

    def load(case: CaseInput):
        images, geometry = read_case_images(case.files)
        try:
            return predictor.preprocess(images, geometry), geometry
        except VoxsegError as e:  # e.g. values a normalisation refuses: name the case's file
            raise type(e)(e.message, path=e.path or case.files[0], fix=e.fix) from None

    def write(case_id: str, pred: CasePrediction, geometry: Geometry) -> None:
        write_image(output_dir / f"{case_id}{ending}", pred.segmentation, geometry)
        if pred.probabilities is not None:
            ensemble.save_probabilities(output_dir / f"{case_id}.npz", pred.probabilities, geometry,
                                        regions_class_order=predictor.outputs.regions_class_order or None)
        for name, hseg in pred.heads.items():
            write_image(output_dir / f"{case_id}_{name}{ending}", hseg, geometry)

    with ThreadPoolExecutor(max_workers=1) as reader, ThreadPoolExecutor(max_workers=1) as writer:
        pending: Future | None = reader.submit(load, cases[0]) if cases else None
        writes: list[Future] = []
        for i, case in enumerate(tqdm(cases, desc="predict", unit="case", disable=not progress)):
            current = pending
            pending = reader.submit(load, cases[i + 1]) if i + 1 < len(cases) else None
            try:
                prepared, geometry = current.result()
            except VoxsegError as e:
                print(f"skipped {case.case_id}: {e.one_line()}", file=sys.stderr)
                failed.append(case.case_id)
                continue
            pred = predictor.predict_prepared(prepared, probabilities=save_probabilities, heads=heads)
            writes.append(writer.submit(write, case.case_id, pred, geometry))
        for w in writes:
            w.result()
    return failed


def predict(
    run_dirs: Iterable[str | Path],
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    folds: Sequence[str] | None = None,
    checkpoint: str = "final",
    tta: bool = True,
    step: float = 0.5,
    tile_batch: int | None = None,
    device: str = "auto",
    save_probabilities: bool = False,
    heads: bool = False,
    progress: bool = True,
) -> list[str]:
    """`voxseg predict`: every case of `input_dir` into `output_dir`; returns the failed case ids."""
    run_dirs = [Path(r) for r in run_dirs]
    dev = resolve_device(device)
    groups = load_models(run_dirs, folds, checkpoint, dev)
    predictor = Predictor(groups, dev, tta=tta, step=step, tile_batch=tile_batch, postprocessing=load_postprocessing(run_dirs))
    cases, ending = discover_cases(Path(input_dir), predictor.n_channels)
    return predict_cases(predictor, cases, ending, Path(output_dir), save_probabilities=save_probabilities, heads=heads, progress=progress)
