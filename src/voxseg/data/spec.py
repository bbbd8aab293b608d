"""DatasetSpec: the typed, immutable description of an nnU-Net v2 raw dataset folder.

Users' existing folders work unchanged: ``dataset.json`` + ``imagesTr/CASE_XXXX<ending>`` +
``labelsTr/CASE<label ending>`` (+ ``imagesTs/``, optional ``labelsTr_<NAME>/`` extra label maps for
extra network heads), or an explicit ``"dataset"`` list in dataset.json. Loading checks the schema
and raises one DatasetError naming the key; whether every file exists and agrees is
`voxseg.data.verify`'s job, so that all problems are reported at once.

Cases are found as nnU-Net finds them: a case's image files are every ``CASE_XXXX<ending>`` in
imagesTr/, in channel order; one file may hold several channels (an RGB PNG holds 3), so the files
do not map 1:1 to ``channel_names``. With a ``"dataset"`` mapping only the listed cases exist,
with their paths taken relative to the dataset folder (``$VARS`` expanded), as nnU-Net resolves them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxseg.data.io import (
    SUPPORTED_ENDINGS,
    Geometry,
    check_reader,
    file_ending,
    label_file_ending,
    read_image,
)
from voxseg.data.io.strict_json import load_strict
from voxseg.data.labels import IGNORE
from voxseg.errors import DatasetError, NotFoundError

_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_JPEG = (".jpg", ".jpeg")


@dataclass(frozen=True)
class CaseFiles:
    case_id: str
    images: tuple[Path, ...]  # the case's image files in channel order (verify checks they exist)
    label: Path | None


@dataclass(frozen=True)
class DatasetSpec:
    root: Path
    name: str
    channel_names: tuple[str, ...]
    labels: dict[str, int]  # class name -> value, background included, ignore excluded
    ignore_value: int | None
    regions: dict[str, tuple[int, ...]] | None
    regions_class_order: tuple[int, ...] | None
    file_ending: str
    training: tuple[CaseFiles, ...]
    test: tuple[CaseFiles, ...]
    groups: dict[str, str] | None
    num_training_declared: int | None = None
    reader: str | None = None  # overwrite_image_reader_writer (an nnU-Net reader name), None: by file ending
    listed: bool = False  # cases come from dataset.json's "dataset" mapping, not from imagesTr/
    # Partial labels: case id -> the class (or region) names its label map annotates; cases not
    # listed are fully annotated. None when dataset.json has no "annotated_classes".
    annotated_classes: dict[str, tuple[str, ...]] | None = None

    @property
    def num_classes(self) -> int:
        """Label values 0..K-1 in the label maps (for region datasets too: regions are sets of them)."""
        return max(self.labels.values()) + 1

    @property
    def output_names(self) -> list[str]:
        """One name per network output: the regions, or the classes (background first)."""
        return list(self.regions) if self.regions else self.class_names

    def annotated_outputs(self, case_id: str) -> list[bool] | None:
        """Per network output, whether the case's label map annotates it; None: fully annotated.

        Background is annotated whenever any class is: a voxel labelled 0 is "none of the
        annotated classes", which is what the marginal loss needs.
        """
        names = (self.annotated_classes or {}).get(case_id)
        if names is None:
            return None
        return [n in names or (not self.regions and i == 0) for i, n in enumerate(self.output_names)]

    @property
    def has_ignore(self) -> bool:
        return self.ignore_value is not None

    @property
    def label_ending(self) -> str:
        """Ending of label maps and predictions (.png for a JPEG dataset)."""
        return label_file_ending(self.file_ending)

    @property
    def class_names(self) -> list[str]:
        by_value = {v: k for k, v in self.labels.items()}
        return [by_value.get(i, f"class_{i}") for i in range(self.num_classes)]

    @property
    def extra_label_dirs(self) -> dict[str, Path]:
        return {p.name[len("labelsTr_") :]: p for p in sorted(self.root.glob("labelsTr_*")) if p.is_dir()}

    def extra_label(self, name: str, case_id: str) -> Path:
        """The case's label map in labelsTr_<name>/."""
        return self.root / f"labelsTr_{name}" / f"{case_id}{self.label_ending}"

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.training]

    def case(self, case_id: str) -> CaseFiles:
        for c in self.training:
            if c.case_id == case_id:
                return c
        raise DatasetError(f"unknown case id '{case_id}'", path=self.root, fix="list cases with `voxseg verify`")


def _fail(root: Path, message: str, fix: str) -> DatasetError:
    return DatasetError(message, path=root / "dataset.json", fix=fix)


def read_dataset_json(root: Path) -> dict:
    """dataset.json of a dataset folder as a dict; DatasetError naming the problem otherwise.

    A key given twice (anywhere) is an error: plain JSON parsing would keep the last one silently.
    """
    if not root.is_dir():
        raise NotFoundError("dataset folder not found", path=root, fix="pass the folder that holds dataset.json and imagesTr/")
    path = root / "dataset.json"
    if not path.is_file():
        raise NotFoundError(
            "dataset.json not found", path=root, fix="create dataset.json as in nnU-Net v2 (channel_names, labels, file_ending)"
        )
    meta = load_strict(path)
    if not isinstance(meta, dict):
        raise _fail(root, "top level must be a JSON object", "see docs/datasets.md for the layout")
    return meta


def parse_labels(root: Path, raw: object) -> tuple[dict[str, int], int | None, dict[str, tuple[int, ...]] | None]:
    if not isinstance(raw, dict) or not raw:
        raise _fail(root, "key 'labels' missing or empty", 'add "labels": {"background": 0, "organ": 1}')
    labels: dict[str, int] = {}
    regions: dict[str, tuple[int, ...]] = {}
    ignore = None
    for name, value in raw.items():
        if name == "ignore":
            if not isinstance(value, int) or isinstance(value, bool):
                raise _fail(root, f"'labels.ignore' must be an integer, got {value!r}", 'e.g. "ignore": 3 or "ignore": -1')
            ignore = value
        elif isinstance(value, int) and not isinstance(value, bool):
            labels[name] = value
        elif isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            regions[name] = tuple(value)
        else:
            raise _fail(
                root, f"'labels.{name}' must be an integer or a list of integers, got {value!r}", "use integer label values"
            )
    if regions:
        # Region datasets list background as 0 and each region as a list of label values.
        values = sorted({v for r in regions.values() for v in r} | set(labels.values()))
        labels = {**labels, **{f"label_{v}": v for v in values if v not in labels.values()}}
    if "background" not in labels or labels["background"] != 0:
        raise _fail(root, "'labels.background' must be 0", 'add "background": 0 to labels')
    values = sorted(labels.values())
    if values != list(range(len(values))):
        raise _fail(
            root,
            f"label values must be consecutive 0..K-1, got {values}",
            "renumber the classes in dataset.json and the label files",
        )
    if ignore is not None and ignore in labels.values():
        name = next(k for k, v in labels.items() if v == ignore)
        raise _fail(
            root, f"ignore value {ignore} collides with class '{name}'", f"use a value no class has, e.g. {max(values) + 1}"
        )
    return labels, ignore, (regions or None)


def parse_file_ending(root: Path, meta: dict) -> str:
    """dataset.json's file_ending; it must be one voxseg reads."""
    ending = meta.get("file_ending")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise _fail(root, "key 'file_ending' missing or not like '.nii.gz'", 'add "file_ending": ".nii.gz"')
    if ending.lower() not in SUPPORTED_ENDINGS:
        raise _fail(
            root,
            f"file_ending '{ending}' is not a supported format",
            f"convert the files to one of {', '.join(SUPPORTED_ENDINGS)}",
        )
    return ending


def load_dataset(root: str | Path) -> DatasetSpec:
    """Parse dataset.json and list the cases; raises DatasetError naming the key or folder."""
    given = Path(os.path.abspath(root))  # nnU-Net joins listed paths onto the folder as named, symlinks kept
    root = given.resolve()
    meta = read_dataset_json(root)
    channels = meta.get("channel_names", meta.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise _fail(root, "key 'channel_names' missing or empty", 'add "channel_names": {"0": "CT"}')
    try:
        order = sorted(channels, key=int)
    except ValueError:
        raise _fail(root, "'channel_names' keys must be channel indices", 'use "0", "1", ...') from None
    if [int(k) for k in order] != list(range(len(order))):
        raise _fail(root, f"'channel_names' keys must be 0..{len(order) - 1}", "number channels consecutively from 0")
    channel_names = tuple(str(channels[k]) for k in order)
    labels, ignore, regions = parse_labels(root, meta.get("labels"))
    ending = parse_file_ending(root, meta)
    reader = check_reader(meta.get("overwrite_image_reader_writer"), ending, source=root / "dataset.json")
    rco = meta.get("regions_class_order")
    if regions and (not isinstance(rco, list) or len(rco) != len(regions)):
        raise _fail(root, "'regions_class_order' must list one label per region", "add regions_class_order as in nnU-Net")
    num_training = meta.get("numTraining")
    if num_training is not None and not isinstance(num_training, int):
        raise _fail(root, "'numTraining' must be an integer", "set it to the number of training cases")
    groups = meta.get("groups")
    if groups is not None and not (isinstance(groups, dict) and all(isinstance(v, str) for v in groups.values())):
        raise _fail(root, "'groups' must map case id -> group id (strings)", 'e.g. "groups": {"case_001": "patient_A"}')

    annotated = _parse_annotated(
        root, meta.get("annotated_classes"), list(regions) if regions else [n for n in labels if labels[n] != 0]
    )
    listed = "dataset" in meta
    if listed:
        training = _listed_cases(root, given, meta["dataset"])
    else:
        if not (root / "imagesTr").is_dir():
            raise NotFoundError("folder imagesTr/ not found", path=root, fix=f"put the images in {root / 'imagesTr'}")
        training = _scan_cases(root / "imagesTr", ending, root / "labelsTr", label_file_ending(ending))
    test = _scan_cases(root / "imagesTs", ending, None, None) if (root / "imagesTs").is_dir() else ()
    return DatasetSpec(
        root=root,
        name=str(meta.get("name", root.name)),
        channel_names=channel_names,
        labels=labels,
        ignore_value=ignore,
        regions=regions,
        regions_class_order=tuple(rco) if regions and isinstance(rco, list) else None,
        file_ending=ending,
        training=training,
        test=test,
        groups=groups,
        num_training_declared=num_training,
        reader=reader,
        listed=listed,
        annotated_classes=annotated,
    )


def _parse_annotated(root: Path, raw: object, names: list[str]) -> dict[str, tuple[str, ...]] | None:
    """`annotated_classes`: {case id: [class or region names]}, names checked against `labels`."""
    if raw is None:
        return None
    fix = 'e.g. "annotated_classes": {"case_012": ["lesion"]} with names from labels'
    if not isinstance(raw, dict):
        raise _fail(root, "'annotated_classes' must map case id -> list of class names", fix)
    out = {}
    for case_id, value in raw.items():
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise _fail(root, f"'annotated_classes.{case_id}' must be a list of class names, got {value!r}", fix)
        unknown = [v for v in value if v not in names]
        if unknown:
            raise _fail(
                root,
                f"'annotated_classes.{case_id}' names {unknown}, which are not foreground {'regions' if names and names[0] else 'classes'} in labels",
                f"use names from {names}",
            )
        out[str(case_id)] = tuple(value)
    return out


def _listed_cases(root: Path, given: Path, listing: object) -> tuple[CaseFiles, ...]:
    """Cases of an explicit "dataset" mapping: {case: {"images": [...], "label": "..."}}."""
    if not isinstance(listing, dict):
        raise _fail(
            root, '\'dataset\' must map case id -> {"images": [...], "label": ...}', "see nnU-Net's dataset.json 'dataset' layout"
        )
    cases = []
    for case_id, entry in listing.items():
        images = entry.get("images") if isinstance(entry, dict) else None
        label = entry.get("label") if isinstance(entry, dict) else None
        if not (isinstance(images, list) and images and all(isinstance(p, str) for p in images)):
            raise _fail(
                root,
                f"'dataset.{case_id}.images' must be a non-empty list of file paths",
                '"images": ["imagesTr/CASE_0000.nii.gz"]',
            )
        if not isinstance(label, str):
            raise _fail(root, f"'dataset.{case_id}.label' must be a file path", '"label": "labelsTr/CASE.nii.gz"')
        cases.append(CaseFiles(case_id, tuple(_listed_path(given, p) for p in images), _listed_path(given, label)))
    return tuple(cases)


def _listed_path(given: Path, entry: str) -> Path:
    """As nnU-Net: expand $VARS; a relative path is joined onto the dataset folder and normalised."""
    expanded = os.path.expandvars(entry)
    return Path(expanded if os.path.isabs(expanded) else os.path.abspath(given / expanded))


def case_id_of(path: Path, ending: str) -> tuple[str, int] | None:
    """Split 'CASE_0003<ending>' into ('CASE', 3); None when the name does not follow the scheme."""
    name = path.name
    if not name.endswith(ending):
        return None
    m = _CHANNEL_RE.match(name[: -len(ending)])
    return (m["case"], int(m["channel"])) if m else None


def scan_case_files(folder: Path, ending: str) -> dict[str, tuple[Path, ...]]:
    """Case id -> its CASE_XXXX<ending> files in `folder`, in channel order (as nnU-Net lists them).

    The files are not expected to be one per channel: one file may hold several (RGB).
    """
    found: dict[str, dict[int, Path]] = {}
    for p in folder.iterdir():
        parsed = case_id_of(p, ending) if p.is_file() and not p.name.startswith(".") else None
        if parsed:
            found.setdefault(parsed[0], {})[parsed[1]] = p
    return {cid: tuple(files[c] for c in sorted(files)) for cid, files in sorted(found.items())}


def _scan_cases(images: Path, ending: str, labels: Path | None, label_ending: str | None) -> tuple[CaseFiles, ...]:
    return tuple(
        CaseFiles(cid, files, (labels / f"{cid}{label_ending}") if labels is not None else None)
        for cid, files in scan_case_files(images, ending).items()
    )


def map_label_values(array: np.ndarray, ignore_value: int | None) -> np.ndarray:
    """Raw label values -> int16 with the dataset's ignore value replaced by IGNORE."""
    out = array.astype(np.int16)
    if ignore_value is not None and ignore_value != IGNORE:
        out[array == ignore_value] = IGNORE
    return out


def refuse_jpeg_label(path: str | Path) -> None:
    """JPEG is lossy: class values smear at every edge, so a JPEG label map is never trusted."""
    if file_ending(path) in _JPEG:
        raise DatasetError(
            "label map is a JPEG: lossy compression changes class values along every edge",
            path=path,
            fix="save label maps as PNG (lossless); for JPEG images labelsTr/ holds CASE.png",
        )


def read_label(path: str | Path, spec: DatasetSpec) -> tuple[np.ndarray, Geometry]:
    """Read a label map as (1, *S) int16 with the ignore value mapped to IGNORE."""
    refuse_jpeg_label(path)
    array, geometry = read_image(path, spec.reader)
    if not np.issubdtype(array.dtype, np.integer):
        rounded = np.rint(array)
        if not np.allclose(rounded, array):
            raise DatasetError("label map holds non-integer values", path=path, fix="save label maps with an integer type")
        array = rounded.astype(np.int32)
    return map_label_values(array, spec.ignore_value)[None], geometry
