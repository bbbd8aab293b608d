"""`voxseg verify`: every problem of a raw dataset, one line each, naming the file and the fix.

Covers nnU-Net's integrity check (schema, every case has its channels and a label, geometry of
images and label agree, label values declared, no NaN) and more: orphan and duplicate files,
wrong file endings, truncated or corrupt files, missing TIFF spacing files, colour or JPEG label
maps, consistent dimensionality, numTraining. A problem of the whole dataset (empty imagesTr/,
wrong file_ending, channel_names not matching the files) is one line, not one per file: the same
message from several files is folded into one line that names the first and counts the rest.
It only reads: nothing is ever written into the dataset folder.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxseg.data.io import (
    SUPPORTED_ENDINGS,
    Geometry,
    count_non_finite,
    file_ending,
    read_channels,
    read_image,
)
from voxseg.data.spec import (
    CaseFiles,
    DatasetSpec,
    case_id_of,
    load_dataset,
    refuse_jpeg_label,
)
from voxseg.errors import DatasetError
from voxseg.parallel import map_cases

_NATURAL = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")


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


@dataclass(frozen=True)
class CaseJob:
    """Everything one worker needs to check one case (picklable, no DatasetSpec)."""

    case: CaseFiles
    n_channels: int
    ending: str
    declared: tuple[int, ...]
    ignore_value: int | None
    reader: str | None
    listed: bool
    extra_labels: tuple[Path, ...]
    partial: bool = False  # `declared` is the case's annotated classes only (annotated_classes)


def _problem(e: DatasetError, path: Path) -> Problem:
    return Problem(e.path or str(path), e.message, e.fix or "re-export the file")


def _check_case(job: CaseJob) -> CaseReport:
    problems: list[Problem] = []
    case = job.case
    ref: tuple[tuple[int, ...], Geometry, str] | None = None
    components: list[int] = []
    for path in case.images:
        if not path.is_file():
            problems.append(
                Problem(
                    str(path),
                    f"image file listed for case '{case.case_id}' is missing",
                    "fix the path in dataset.json or add the file",
                )
            )
            continue
        try:
            array, geom = read_channels(path, job.reader)
        except DatasetError as e:
            problems.append(_problem(e, path))
            continue
        components.append(array.shape[0])
        n = count_non_finite(path, array)
        if n:
            problems.append(
                Problem(str(path), f"{n} NaN/Inf voxels", "replace them (e.g. with the background value) before training")
            )
        if ref is None:
            ref = (array.shape[1:], geom, path.name)
        else:
            problems += _compare(path, array.shape[1:], geom, *ref)
    if len(components) == len(case.images):
        problems += _channel_problems(job, components)
    for path in ((case.label,) if case.label else ()) + job.extra_labels:
        if not path.is_file():
            if path == case.label:
                problems.append(
                    Problem(
                        str(path),
                        f"label file missing for case '{case.case_id}'",
                        "add the label map or remove the case's images",
                    )
                )
            continue
        try:
            refuse_jpeg_label(path)
            array, geom = read_image(path, job.reader)
        except DatasetError as e:
            problems.append(_problem(e, path))
            continue
        if ref is not None:
            problems += _compare(path, array.shape, geom, *ref)
        if path == case.label:
            problems += _label_value_problems(path, array, job)
    return CaseReport(tuple(problems), len(ref[0]) if ref else None)


def _channel_problems(job: CaseJob, components: list[int]) -> list[Problem]:
    """Gaps in a case's file sequence, and a channel count that disagrees with channel_names."""
    case, n, images = job.case, job.n_channels, job.case.images
    missing: list[Path] = []
    if not job.listed:
        present = {parsed[1] for p in images if (parsed := case_id_of(p, job.ending)) is not None}  # scanned: all parse
        # One channel per file: CASE_0000 .. CASE_{n-1} must all exist; multi-channel files: no gaps.
        expected = n if all(c == 1 for c in components) else max(present) + 1
        missing = [images[0].with_name(f"{case.case_id}_{i:04d}{job.ending}") for i in range(expected) if i not in present]
    problems = [
        Problem(str(p), f"channel file missing for case '{case.case_id}'", "add the file or remove the case's other files")
        for p in missing
    ]
    if sum(components) + len(missing) != n:
        counts = " + ".join(map(str, components))
        problems.append(
            Problem(
                str(images[0]),
                f"the case's files hold {counts} channels but channel_names lists {n}",
                "list every channel of the files in channel_names (an RGB file holds 3: R, G, B)",
            )
        )
    return problems


def _label_value_problems(path: Path, array: np.ndarray, job: CaseJob) -> list[Problem]:
    values = set(np.unique(array).tolist())
    allowed = set(job.declared) | ({job.ignore_value} if job.ignore_value is not None else set())
    undeclared = sorted(v for v in values if v not in allowed)
    if not undeclared:
        return []
    if job.partial:
        return [
            Problem(
                str(path),
                f"label values {undeclared} belong to classes that 'annotated_classes' says this case does not annotate",
                "add those classes to the case's annotated_classes in dataset.json, or remove them from the label map",
            )
        ]
    fix = "declare them under 'labels' or fix the label map"
    if 255 in undeclared and file_ending(path) in _NATURAL:
        fix = "image editors save masks as 0/255: map 255 to the class value (e.g. 1), or declare it under 'labels'"
    return [Problem(str(path), f"label values {undeclared} are not declared in dataset.json", fix)]


def _annotated_values(spec: DatasetSpec, case_id: str) -> tuple[int, ...] | None:
    """Label values a partially annotated case may hold: background and its annotated classes
    (for regions: the values of its annotated regions); None when fully annotated."""
    names = (spec.annotated_classes or {}).get(case_id)
    if names is None:
        return None
    if spec.regions:
        return tuple(sorted({0} | {v for n in names for v in spec.regions[n]}))
    return tuple(sorted({0} | {spec.labels[n] for n in names}))


def _compare(path: Path, shape, geom: Geometry, ref_shape, ref_geom: Geometry, ref_name: str) -> list[Problem]:
    if shape != ref_shape:
        return [Problem(str(path), f"shape {shape} differs from {ref_name} {ref_shape}", "resample it onto the image grid")]
    bad = geom.differs_from(ref_geom)
    if bad:
        return [
            Problem(
                str(path),
                f"{', '.join(bad)} differ from {ref_name}",
                "copy the image's geometry onto it (e.g. SimpleITK CopyInformation) if the voxels align, else resample",
            )
        ]
    return []


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def _empty_folder(spec: DatasetSpec, folder: str, ending: str) -> Problem | None:
    """One line for a folder with nothing to read: missing, empty, or only other endings."""
    d = spec.root / folder
    if not d.is_dir():
        return Problem(
            str(d),
            f"folder {folder}/ not found",
            f"put the files CASE{ending if folder != 'imagesTr' else '_0000' + ending} in {d}",
        )
    files = [p for p in _files(d) if p.is_file()]
    if any(p.name.endswith(ending) for p in files):
        return None
    others = Counter(file_ending(p) for p in files if file_ending(p) in SUPPORTED_ENDINGS)
    if others:
        other, count = others.most_common(1)[0]
        return Problem(
            str(d),
            f"no files ending in '{ending}' but {count} ending in '{other}'",
            f"set file_ending to '{other}' in dataset.json, or convert the files to {ending}",
        )
    return Problem(
        str(d), f"no files ending in '{ending}'", f"add the files (CASE{'_0000' if folder == 'imagesTr' else ''}{ending})"
    )


def _folder_problems(spec: DatasetSpec) -> tuple[list[Problem], bool]:
    """Dataset-level folder problems, then files that belong to no case, to one case twice, or have
    the wrong ending. The flag says whether label files can be checked case by case."""
    image_ending, label_ending = spec.file_ending, spec.label_ending
    empty = _empty_folder(spec, "imagesTr", image_ending)
    if empty:
        return [empty], False
    problems = []
    labels_empty = _empty_folder(spec, "labelsTr", label_ending)
    if labels_empty:
        problems.append(labels_empty)
    with_images = {c.case_id for c in spec.training}
    folders = [("imagesTr", image_ending)] + ([] if labels_empty else [("labelsTr", label_ending)])
    folders += [(f"labelsTr_{n}", label_ending) for n in spec.extra_label_dirs]
    for folder, ending in folders:
        d = spec.root / folder
        stems: Counter[str] = Counter()
        for p in _files(d):
            found = file_ending(p)
            if found == ".json" and image_ending.lower() in (".tif", ".tiff"):
                continue  # spacing sidecars of 3D TIFFs
            if not p.name.endswith(ending):
                if folder != "imagesTr" and found in (".jpg", ".jpeg"):
                    problems.append(
                        Problem(
                            str(p),
                            "label map is a JPEG: lossy compression changes class values along every edge",
                            f"save it as {p.name[: -len(found)]}{ending} (PNG is lossless)",
                        )
                    )
                elif found in SUPPORTED_ENDINGS:
                    problems.append(
                        Problem(
                            str(p),
                            f"file ending '{found}' but dataset.json says '{ending}'",
                            f"convert it to {ending} or change file_ending",
                        )
                    )
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
                    problems.append(
                        Problem(str(p), f"channel {parsed[1]} not in channel_names", "declare the channel or remove the file")
                    )
            elif folder == "labelsTr" and p.name[: -len(ending)] not in with_images:
                problems.append(
                    Problem(
                        str(p), "label has no images", f"add imagesTr/{p.name[: -len(ending)]}_0000{image_ending} or remove it"
                    )
                )
        for stem, n in stems.items():
            if n > 1:
                problems.append(
                    Problem(
                        str(d / stem), f"{n} files for the same name with different endings", "keep one file per case/channel"
                    )
                )
    return problems, not labels_empty


def _fold_repeats(problems: list[Problem]) -> list[Problem]:
    """One line per distinct (message, fix): a dataset-wide problem is stated once, with a count."""
    groups: dict[tuple[str, str], list[Problem]] = {}
    for p in problems:
        groups.setdefault((p.message, p.fix), []).append(p)
    folded = []
    for (message, fix), same in groups.items():
        if len(same) > 1:
            message = f"{message} (also {len(same) - 1} more: {', '.join(Path(p.path).name for p in same[1:4])}{', ...' if len(same) > 4 else ''})"
        folded.append(Problem(same[0].path, message, fix))
    return folded


def verify_dataset(root: str | Path, workers: int | None = None, progress: bool = True) -> list[Problem]:
    """All problems of the dataset at `root`; an empty list means it is clean."""
    try:
        spec = load_dataset(root)
    except DatasetError as e:
        return [Problem(e.path or str(root), e.message, e.fix or "")]
    dataset_json = str(spec.root / "dataset.json")
    problems: list[Problem]
    if spec.listed:
        problems, check_labels = [], True  # only the listed files matter; others in the folders are ignored
        if not spec.training:
            return [
                Problem(dataset_json, "'dataset' lists no cases", "list the training cases or remove the key to use imagesTr/")
            ]
    else:
        problems, check_labels = _folder_problems(spec)
        if not spec.training:
            return problems
    if spec.num_training_declared is not None and spec.num_training_declared != len(spec.training):
        problems.append(
            Problem(
                dataset_json,
                f"numTraining is {spec.num_training_declared} but {len(spec.training)} cases were found",
                f"set numTraining to {len(spec.training)}",
            )
        )
    if spec.annotated_classes is not None:
        unknown = sorted(set(spec.annotated_classes) - set(spec.case_ids))
        if unknown:
            problems.append(
                Problem(
                    dataset_json,
                    f"'annotated_classes' names unknown cases {unknown[:5]}{'...' if len(unknown) > 5 else ''}",
                    "use training case ids (a case not listed is fully annotated)",
                )
            )
    if spec.groups is not None:
        missing = sorted(set(spec.case_ids) - set(spec.groups))
        if missing:
            problems.append(
                Problem(
                    dataset_json,
                    f"'groups' lacks cases {missing[:5]}{'...' if len(missing) > 5 else ''}",
                    "give every case a group",
                )
            )
    declared = tuple(sorted(spec.labels.values()))
    jobs = [
        CaseJob(
            case=case if check_labels else CaseFiles(case.case_id, case.images, None),
            n_channels=len(spec.channel_names),
            ending=spec.file_ending,
            declared=_annotated_values(spec, case.case_id) or declared,
            ignore_value=spec.ignore_value,
            reader=spec.reader,
            listed=spec.listed,
            extra_labels=tuple(spec.extra_label(name, case.case_id) for name in spec.extra_label_dirs),
            partial=_annotated_values(spec, case.case_id) is not None,
        )
        for case in spec.training
    ]
    reports = map_cases(_check_case, jobs, workers, desc="verify", progress=progress)
    case_problems = [p for rep in reports for p in rep.problems]
    dims = Counter(r.ndim for r in reports if r.ndim is not None)
    if len(dims) > 1:
        majority = dims.most_common(1)[0][0]
        for case, rep in zip(spec.training, reports):
            if rep.ndim is not None and rep.ndim != majority:
                case_problems.append(
                    Problem(
                        str(case.images[0]),
                        f"{rep.ndim}D image in a dataset of {majority}D images",
                        "all cases must have the same dimensionality",
                    )
                )
    return problems + _fold_repeats(case_problems)
