"""DatasetSpec: the typed, immutable description of an nnU-Net v2 raw dataset folder.

Users' existing folders work unchanged: ``dataset.json`` + ``imagesTr/CASE_XXXX<ending>`` +
``labelsTr/CASE<ending>`` (+ ``imagesTs/``, optional ``labelsTr_<NAME>/`` extra label maps for
extra network heads). Loading checks the schema and raises one DatasetError naming the key; whether
every file exists and agrees is `voxseg.data.verify`'s job, so that all problems are reported at once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxseg.data.io import Geometry, read_image
from voxseg.data.labels import IGNORE
from voxseg.errors import DatasetError, NotFoundError

_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class CaseFiles:
    case_id: str
    images: tuple[Path, ...]  # expected paths, one per channel (verify checks they exist)
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

    @property
    def num_classes(self) -> int:
        if self.regions:
            return len(self.regions) + 1
        return max(self.labels.values()) + 1

    @property
    def has_ignore(self) -> bool:
        return self.ignore_value is not None

    @property
    def class_names(self) -> list[str]:
        by_value = {v: k for k, v in self.labels.items()}
        return [by_value.get(i, f"class_{i}") for i in range(self.num_classes)]

    @property
    def extra_label_dirs(self) -> dict[str, Path]:
        return {p.name[len("labelsTr_"):]: p for p in sorted(self.root.glob("labelsTr_*")) if p.is_dir()}

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
    """dataset.json of a dataset folder as a dict; DatasetError naming the problem otherwise."""
    if not root.is_dir():
        raise NotFoundError("dataset folder not found", path=root, fix="pass the folder that holds dataset.json and imagesTr/")
    path = root / "dataset.json"
    if not path.is_file():
        raise NotFoundError("dataset.json not found", path=root, fix="create dataset.json as in nnU-Net v2 (channel_names, labels, file_ending)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise _fail(root, f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}", "fix the JSON syntax") from None
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
            raise _fail(root, f"'labels.{name}' must be an integer or a list of integers, got {value!r}", "use integer label values")
    if regions:
        # Region datasets list background as 0 and each region as a list of label values.
        values = sorted({v for r in regions.values() for v in r} | set(labels.values()))
        labels = {**labels, **{f"label_{v}": v for v in values if v not in labels.values()}}
    if "background" not in labels or labels["background"] != 0:
        raise _fail(root, "'labels.background' must be 0", 'add "background": 0 to labels')
    values = sorted(labels.values())
    if values != list(range(len(values))):
        raise _fail(root, f"label values must be consecutive 0..K-1, got {values}", "renumber the classes in dataset.json and the label files")
    if ignore is not None and ignore in labels.values():
        name = next(k for k, v in labels.items() if v == ignore)
        raise _fail(root, f"ignore value {ignore} collides with class '{name}'", f"use a value no class has, e.g. {max(values) + 1}")
    return labels, ignore, (regions or None)


def load_dataset(root: str | Path) -> DatasetSpec:
    """Parse dataset.json and list the cases; raises DatasetError naming the key or folder."""
    root = Path(root).resolve()
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
    ending = meta.get("file_ending")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise _fail(root, "key 'file_ending' missing or not like '.nii.gz'", 'add "file_ending": ".nii.gz"')
    rco = meta.get("regions_class_order")
    if regions and (not isinstance(rco, list) or len(rco) != len(regions)):
        raise _fail(root, "'regions_class_order' must list one label per region", "add regions_class_order as in nnU-Net")
    num_training = meta.get("numTraining")
    if num_training is not None and not isinstance(num_training, int):
        raise _fail(root, "'numTraining' must be an integer", "set it to the number of training cases")
    groups = meta.get("groups")
    if groups is not None and not (isinstance(groups, dict) and all(isinstance(v, str) for v in groups.values())):
        raise _fail(root, "'groups' must map case id -> group id (strings)", 'e.g. "groups": {"case_001": "patient_A"}')

    if isinstance(meta.get("dataset"), dict):
        training = _explicit_cases(root, meta["dataset"])
    else:
        training = _scan_cases(root, "imagesTr", "labelsTr", ending, len(channel_names))
    test = _scan_cases(root, "imagesTs", None, ending, len(channel_names)) if (root / "imagesTs").is_dir() else ()
    return DatasetSpec(
        root=root,
        name=str(meta.get("name", root.name)),
        channel_names=channel_names,
        labels=labels,
        ignore_value=ignore,
        regions=regions,
        regions_class_order=tuple(rco) if regions else None,
        file_ending=ending,
        training=training,
        test=test,
        groups=groups,
        num_training_declared=num_training,
    )


def _explicit_cases(root: Path, listing: dict) -> tuple[CaseFiles, ...]:
    cases = []
    for case_id, entry in listing.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("images"), list):
            raise _fail(root, f"'dataset.{case_id}' must hold 'images' (list) and 'label'", "see nnU-Net's dataset.json 'dataset' layout")
        label = entry.get("label")
        cases.append(CaseFiles(case_id, tuple(root / p for p in entry["images"]), root / label if label else None))
    return tuple(cases)


def case_id_of(path: Path, ending: str) -> tuple[str, int] | None:
    """Split 'CASE_0003<ending>' into ('CASE', 3); None when the name does not follow the scheme."""
    name = path.name
    if not name.endswith(ending):
        return None
    m = _CHANNEL_RE.match(name[: -len(ending)])
    return (m["case"], int(m["channel"])) if m else None


def _scan_cases(root: Path, images_dir: str, labels_dir: str | None, ending: str, n_channels: int) -> tuple[CaseFiles, ...]:
    images = root / images_dir
    if not images.is_dir():
        raise NotFoundError(f"folder {images_dir}/ not found", path=root, fix=f"put the images in {root / images_dir}")
    ids = {parsed[0] for p in images.iterdir() if (parsed := case_id_of(p, ending))}
    if labels_dir and (root / labels_dir).is_dir():
        ids |= {p.name[: -len(ending)] for p in (root / labels_dir).iterdir() if p.name.endswith(ending)}
    return tuple(
        CaseFiles(
            cid,
            tuple(images / f"{cid}_{c:04d}{ending}" for c in range(n_channels)),
            (root / labels_dir / f"{cid}{ending}") if labels_dir else None,
        )
        for cid in sorted(ids)
    )


def map_label_values(array: np.ndarray, ignore_value: int | None) -> np.ndarray:
    """Raw label values -> int16 with the dataset's ignore value replaced by IGNORE."""
    out = array.astype(np.int16)
    if ignore_value is not None and ignore_value != IGNORE:
        out[array == ignore_value] = IGNORE
    return out


def read_label(path: str | Path, spec: DatasetSpec) -> tuple[np.ndarray, Geometry]:
    """Read a label map as (1, *S) int16 with the ignore value mapped to IGNORE."""
    array, geometry = read_image(path)
    if not np.issubdtype(array.dtype, np.integer):
        rounded = np.rint(array)
        if not np.allclose(rounded, array):
            raise DatasetError("label map holds non-integer values", path=path, fix="save label maps with an integer type")
        array = rounded.astype(np.int32)
    return map_label_values(array, spec.ignore_value)[None], geometry
