"""`voxseg verify`: every problem of a raw dataset, one line each, naming the file and the fix.

Covers nnU-Net's integrity check (schema, every case has every channel and a label, geometry of
images and label agree, label values declared, no NaN) and more: orphan and duplicate files,
wrong file endings, consistent dimensionality, numTraining, unreadable files. It only reads:
nothing is ever written into the dataset folder.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxseg.data.io import SUPPORTED_ENDINGS, count_non_finite, file_ending, read_image
from voxseg.data.spec import CaseFiles, DatasetSpec, case_id_of, load_dataset
from voxseg.errors import DatasetError
from voxseg.parallel import map_cases


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message} (fix: {self.fix})"


@dataclass(frozen=True)
class CaseReport:
    problems: tuple[Problem, ...]
    ndim: int | None


def _check_case(case: CaseFiles, declared: tuple[int, ...], ignore_value: int | None, extra_labels: tuple[Path, ...]) -> CaseReport:
    problems: list[Problem] = []
    ref_shape = ref_geom = None
    ref_name = ""
    ndim = None
    for path in case.images:
        if not path.is_file():
            problems.append(Problem(str(path), f"channel file missing for case '{case.case_id}'", "add the file or remove the case's other files"))
            continue
        try:
            array, geom = read_image(path)
        except DatasetError as e:
            problems.append(Problem(str(path), e.message, e.fix or "re-export the file"))
            continue
        n = count_non_finite(path, array)
        if n:
            problems.append(Problem(str(path), f"{n} NaN/Inf voxels", "replace them (e.g. with the background value) before training"))
        if ref_shape is None:
            ref_shape, ref_geom, ref_name, ndim = array.shape, geom, path.name, array.ndim
        else:
            problems += _compare(path, array.shape, geom, ref_shape, ref_geom, ref_name)
    for path in ((case.label,) if case.label else ()) + extra_labels:
        if not path.is_file():
            if path == case.label:
                problems.append(Problem(str(path), f"label file missing for case '{case.case_id}'", "add the label map or remove the case's images"))
            continue
        try:
            array, geom = read_image(path)
        except DatasetError as e:
            problems.append(Problem(str(path), e.message, e.fix or "re-export the file"))
            continue
        if ref_shape is not None:
            problems += _compare(path, array.shape, geom, ref_shape, ref_geom, ref_name)
        if path == case.label:
            values = set(np.unique(array).tolist())
            allowed = set(declared) | ({ignore_value} if ignore_value is not None else set())
            undeclared = sorted(v for v in values if v not in allowed)
            if undeclared:
                problems.append(Problem(str(path), f"label values {undeclared} are not declared in dataset.json", "declare them under 'labels' or fix the label map"))
    return CaseReport(tuple(problems), ndim)


def _check_job(job: tuple) -> CaseReport:
    return _check_case(*job)


def _compare(path: Path, shape, geom, ref_shape, ref_geom, ref_name: str) -> list[Problem]:
    if shape != ref_shape:
        return [Problem(str(path), f"shape {shape} differs from {ref_name} {ref_shape}", "resample it onto the image grid")]
    bad = geom.differs_from(ref_geom)
    if bad:
        return [Problem(str(path), f"{', '.join(bad)} differ from {ref_name}", "copy the image's geometry onto it (e.g. SimpleITK CopyInformation) if the voxels align, else resample")]
    return []


def _folder_problems(spec: DatasetSpec) -> list[Problem]:
    """Files that belong to no case, or to one case twice, and the wrong file endings."""
    problems = []
    ending = spec.file_ending
    with_images = {c.label for c in spec.training if c.label and any(p.is_file() for p in c.images)}
    for folder in ("imagesTr", "labelsTr", *(f"labelsTr_{n}" for n in spec.extra_label_dirs)):
        d = spec.root / folder
        if not d.is_dir():
            continue
        stems = Counter()
        for p in sorted(d.iterdir()):
            if p.name.startswith("."):
                continue
            found = file_ending(p)
            if not p.name.endswith(ending):
                if found in SUPPORTED_ENDINGS:
                    problems.append(Problem(str(p), f"file ending '{found}' but dataset.json says '{ending}'", f"convert it to {ending} or change file_ending"))
                else:
                    problems.append(Problem(str(p), "unexpected file", f"remove it from {folder}/"))
                stems[p.name[: -len(found)] if found else p.name] += 1
                continue
            stems[p.name[: -len(ending)]] += 1
            if folder == "imagesTr":
                parsed = case_id_of(p, ending)
                if parsed is None:
                    problems.append(Problem(str(p), "name does not follow CASE_XXXX" + ending, f"rename to <case>_0000{ending}"))
                elif parsed[1] >= len(spec.channel_names):
                    problems.append(Problem(str(p), f"channel {parsed[1]} not in channel_names", "declare the channel or remove the file"))
            elif folder == "labelsTr" and p not in with_images:
                problems.append(Problem(str(p), "label has no images", f"add imagesTr/{p.name[: -len(ending)]}_0000{ending} or remove it"))
        for stem, n in stems.items():
            if n > 1:
                problems.append(Problem(str(d / stem), f"{n} files for the same name with different endings", "keep one file per case/channel"))
    return problems


def verify_dataset(root: str | Path, workers: int | None = None, progress: bool = True) -> list[Problem]:
    """All problems of the dataset at `root`; an empty list means it is clean."""
    try:
        spec = load_dataset(root)
    except DatasetError as e:
        return [Problem(e.path or str(root), e.message, e.fix or "")]
    problems = _folder_problems(spec)
    if not spec.training:
        problems.append(Problem(str(spec.root / "imagesTr"), "no training cases found", f"add images named CASE_0000{spec.file_ending}"))
        return problems
    if spec.num_training_declared is not None and spec.num_training_declared != len(spec.training):
        problems.append(Problem(str(spec.root / "dataset.json"), f"numTraining is {spec.num_training_declared} but {len(spec.training)} cases were found", f"set numTraining to {len(spec.training)}"))
    if spec.groups is not None:
        missing = sorted(set(spec.case_ids) - set(spec.groups))
        if missing:
            problems.append(Problem(str(spec.root / "dataset.json"), f"'groups' lacks cases {missing[:5]}{'...' if len(missing) > 5 else ''}", "give every case a group"))
    declared = tuple(sorted(spec.labels.values()))
    extra_dirs = spec.extra_label_dirs
    # Cases with a label but no image at all are reported once, as orphan labels, above.
    cases = [c for c in spec.training if any(p.is_file() for p in c.images)]
    jobs = [
        (case, declared, spec.ignore_value, tuple(d / f"{case.case_id}{spec.file_ending}" for d in extra_dirs.values()))
        for case in cases
    ]
    reports = map_cases(_check_job, jobs, workers, desc="verify", progress=progress)
    for rep in reports:
        problems += rep.problems
    dims = Counter(r.ndim for r in reports if r.ndim is not None)
    if len(dims) > 1:
        majority = dims.most_common(1)[0][0]
        for case, rep in zip(cases, reports):
            if rep.ndim is not None and rep.ndim != majority:
                problems.append(Problem(str(case.images[0]), f"{rep.ndim}D image in a dataset of {majority}D images", "all cases must have the same dimensionality"))
    return problems
