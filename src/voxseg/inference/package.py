"""Model packages: trained runs as one zip file that predicts anywhere (`voxseg export` / `voxseg install`).

The zip, and the folder `install_model` unpacks it to, hold the same tree::

    manifest.json                                  format version, voxseg/torch versions, creation time, the
                                                   models, folds, checkpoint kind, classes, ONNX opset, and the
                                                   sha256 of every other member
    dataset.json                                   the dataset's description (labels, channels) the runs learnt
    models/NAME/fold_N/checkpoint_<kind>.pt        network weights + meta (no optimiser or loader state)
    models/NAME/fold_N/checkpoint_<kind>.onnx      with --onnx: the same network for ONNX Runtime
    models/NAME/postprocessing.json                the run's post-processing rule, when it has one
    models/NAME/code/FILE.py                       a custom trainer (or network) file the network is built by

Every ``models/NAME`` is an ordinary run folder. Its checkpoints carry ``meta["package"]``, and their
references to other files are relative to that folder: a custom builder is ``code/FILE.py:Class``, a
cascade's previous stage (packed as a model of its own) is ``../NAME``. `localize` points them at
wherever the package lies when it is loaded.

`voxseg predict -m MODEL.zip` reads the members from the zip without unpacking it; each read is checked
against the manifest's sha256, so a damaged download is one line, never a wrong prediction. Only a
custom code file is written to a temporary folder while its network is built (Python imports modules
from files); the folder is removed afterwards. ``MODEL.zip/models/NAME`` addresses one model inside
a zip, which is how a cascade's previous stage is loaded from it.

Written by hand on `zipfile` and `hashlib` (standard library): the layout is a handful of members,
and keeping checkpoints as ordinary run folders lets every other command read an installed model.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import io
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from voxseg import __version__
from voxseg.errors import CheckpointError, InputError, NotFoundError
from voxseg.io_utils import atomic_path, check_replaceable, staged_folder

FORMAT = "voxseg-model"
FORMAT_VERSION = 1  # raise when a reader of the previous version would misread a package
MANIFEST = "manifest.json"
DATASET_JSON = "dataset.json"
MODELS = "models"
CODE = "code"
RULE = "postprocessing.json"
EXPORT_CHECKPOINTS = ("final", "best")
_CODE_SPEC = re.compile(r"^(?P<file>.+\.py):(?P<attr>[A-Za-z_][\w.]*)$")
_FIX_DAMAGED = "download the zip again, or export it again with `voxseg export`"


@dataclass
class ExportResult:
    path: Path
    models: list[str]  # models `predict` runs (ensemble members), in order
    previous_stages: list[str] = field(default_factory=list)  # cascade stages packed for them
    folds: dict[str, list[str]] = field(default_factory=dict)
    checkpoint: str = "final"
    onnx_opset: int | None = None
    bytes: int = 0


# ---------------------------------------------------------------------------------------------------
# References a checkpoint makes to other files


def _code_refs(meta: dict) -> Iterator[tuple[dict, str, re.Match]]:
    """(holder, key, parsed spec) of every ``path/file.py:attr`` a checkpoint's network is built from."""
    spec = meta.get("network_spec") or {}
    for holder, key in (
        (meta, "builder"),
        (spec.get("model") or {}, "architecture"),
        (spec.get("network") or {}, "architecture"),
    ):
        m = _CODE_SPEC.match(holder[key]) if isinstance(holder.get(key), str) else None
        if m:
            yield holder, key, m


def localize(meta: Any, run_dir: Path, code_dir: Path) -> None:
    """Point a packaged checkpoint's relative references at where its package lies now (in place).

    Args:
        meta: a checkpoint's meta; left alone unless it came from a package (``meta["package"]``).
        run_dir: where its run folder is: a real folder, or ``MODEL.zip/models/NAME`` inside a zip.
        code_dir: the folder holding its ``code/`` files on disk.
    """
    if not isinstance(meta, dict) or "package" not in meta:
        return
    for holder, key, m in _code_refs(meta):
        if not Path(m["file"]).is_absolute():
            holder[key] = f"{code_dir / m['file']}:{m['attr']}"
    previous = meta.get("previous_stage")
    if isinstance(previous, dict) and not Path(previous["run_dir"]).is_absolute():
        previous["run_dir"] = os.path.normpath(run_dir / previous["run_dir"])


# ---------------------------------------------------------------------------------------------------
# Reading


def locate(path: Path) -> tuple[Path, str | None] | None:
    """(zip file, model name or None for the zip's own models) when `path` is a model zip or
    ``MODEL.zip/models/NAME``; None for anything else (a folder)."""
    if path.is_file():
        return path, None
    if path.exists():
        return None
    for parent in path.parents:
        if parent.is_file():
            inner = path.relative_to(parent).parts
            if len(inner) != 2 or inner[0] != MODELS:
                raise NotFoundError(
                    f"{'/'.join(inner)} is not a model inside {parent.name}",
                    path=path,
                    fix=f"address a packaged model as {parent}/{MODELS}/NAME",
                )
            return parent, inner[1]
    return None


def _check_manifest(manifest: Any, path: Path) -> dict:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(
            "not a voxseg model package (its manifest.json is not voxseg's)",
            path=path,
            fix="pass a zip written by `voxseg export`",
        )
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"written by voxseg {manifest.get('voxseg', '?')} in model format {version}; this voxseg "
            f"({__version__}) reads format {FORMAT_VERSION} and older",
            path=path,
            fix="upgrade voxseg (pip install -U voxseg), or export the model again with this version",
        )
    return manifest


def installed_runs(folder: Path) -> tuple[list[Path], str] | None:
    """(run folders `predict` uses, checkpoint kind) of a folder `install_model` wrote; None for any other folder."""
    if not (folder / MANIFEST).is_file():
        return None
    try:
        manifest = _check_manifest(json.loads((folder / MANIFEST).read_text()), folder)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"invalid manifest.json ({e.msg})", path=folder / MANIFEST, fix="install the model again") from None
    return [folder / MODELS / name for name in manifest["predict"]], manifest["checkpoint"]


class Package:
    """An opened model zip: its manifest, and members read with their checksum verified.

    Args:
        path: the zip file (`voxseg export` writes it).

    Example:
        >>> with Package(Path("MODEL.zip")) as pkg:   # doctest: +SKIP
        ...     print(pkg.manifest["predict"], pkg.manifest["checkpoint"])
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise NotFoundError("model zip not found", path=self.path, fix="pass a zip written by `voxseg export`")
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as e:
            raise CheckpointError(f"not a voxseg model zip ({e})", path=self.path, fix=_FIX_DAMAGED) from None
        try:
            self.manifest = _check_manifest(json.loads(self._raw(MANIFEST)), self.path)
        except json.JSONDecodeError as e:
            self.close()
            raise CheckpointError(
                f"damaged model zip: manifest.json is not JSON ({e.msg})", path=self.path, fix=_FIX_DAMAGED
            ) from None
        except CheckpointError:
            self.close()
            raise
        unsafe = [m for m in self.manifest["files"] if Path(m).is_absolute() or ".." in Path(m).parts]
        if unsafe:
            self.close()
            raise CheckpointError(
                f"unsafe member name {unsafe[0]!r} in the manifest",
                path=self.path,
                fix="use zips written by `voxseg export` only",
            )
        names = set(self._zip.namelist())
        missing = sorted(set(self.manifest["files"]) - names)
        if missing:
            self.close()
            raise CheckpointError(
                f"damaged model zip: {len(missing)} member(s) missing, e.g. {missing[0]}", path=self.path, fix=_FIX_DAMAGED
            )

    def __enter__(self) -> Package:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()

    def _raw(self, member: str) -> bytes:
        try:
            return self._zip.read(member)
        except KeyError:
            what = (
                "not a voxseg model zip (no manifest.json)" if member == MANIFEST else f"damaged model zip: {member} is missing"
            )
            raise CheckpointError(
                what, path=self.path, fix=_FIX_DAMAGED if member != MANIFEST else "pass a zip written by `voxseg export`"
            ) from None
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:  # CRC error, truncated data
            raise CheckpointError(f"damaged model zip: cannot read {member} ({e})", path=self.path, fix=_FIX_DAMAGED) from None

    def read(self, member: str) -> bytes:
        """A member's bytes; CheckpointError when it is missing or its sha256 differs from the manifest's."""
        expected = self.manifest["files"].get(member)
        if expected is None:
            raise CheckpointError(f"damaged model zip: the manifest does not list {member}", path=self.path, fix=_FIX_DAMAGED)
        data = self._raw(member)
        if hashlib.sha256(data).hexdigest() != expected["sha256"]:
            raise CheckpointError(f"damaged model zip: {member} fails its checksum", path=self.path, fix=_FIX_DAMAGED)
        return data

    def model(self, name: str) -> dict:
        entry = self.manifest["models"].get(name)
        if entry is None:
            raise NotFoundError(
                f"no model {name!r} in the zip (models: {', '.join(self.manifest['models'])})",
                path=self.path,
                fix="use one of the listed names",
            )
        return entry

    def checkpoint_kind(self, requested: str | None) -> str:
        kind = self.manifest["checkpoint"]
        if requested not in (None, kind):
            raise CheckpointError(
                f"the zip holds {kind} checkpoints, not {requested}",
                path=self.path,
                fix=f"pass --checkpoint {kind} (or leave it out), or export the run again with --checkpoint {requested}",
            )
        return kind

    @contextmanager
    def code_folder(self, name: str) -> Iterator[Path]:
        """A folder holding the model's ``code/`` files (a temporary one, removed on exit; empty when none)."""
        members = self.model(name).get("code", [])
        with tempfile.TemporaryDirectory(prefix="voxseg-code-") as tmp:
            prefix = f"{MODELS}/{name}/"
            for member in members:
                target = Path(tmp) / member[len(prefix) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(self.read(member))
            yield Path(tmp)


def _select_folds(available: Sequence[str], folds: Sequence[str] | None, where: Path) -> list[str]:
    if folds is None:
        return list(available)
    missing = [f for f in folds if f not in available]
    if missing:
        raise CheckpointError(
            f"fold(s) {missing} are not in the package (it holds {', '.join(available)})",
            path=where,
            fix="pass --folds with packaged folds only, or leave it out",
        )
    return list(folds)


def package_checkpoints(
    path: Path, folds: Sequence[str] | None, checkpoint: str | None, onnx: bool
) -> Iterator[tuple[Path, dict, bytes | None]]:
    """(where, checkpoint dict with localized meta, ONNX bytes when `onnx`) for each fold of the models
    a zip predicts with (or of the one model ``MODEL.zip/models/NAME`` names)."""
    zip_path, only = locate(path) or (path, None)
    with Package(zip_path) as pkg:
        kind = pkg.checkpoint_kind(checkpoint)
        for name in [only] if only else pkg.manifest["predict"]:
            entry = pkg.model(name)
            with pkg.code_folder(name) as code_dir:
                for fold in _select_folds(entry["folds"], folds, pkg.path):
                    member = f"{MODELS}/{name}/fold_{fold}/checkpoint_{kind}.pt"
                    ckpt = torch.load(io.BytesIO(pkg.read(member)), map_location="cpu", weights_only=False)
                    localize(ckpt.get("meta"), zip_path / MODELS / name, code_dir)
                    onnx_bytes = None
                    if onnx:
                        if not entry.get("onnx"):
                            raise CheckpointError(
                                "the zip holds no ONNX networks",
                                path=pkg.path,
                                fix="export the runs again with `voxseg export ... --onnx`, or predict with --backend torch",
                            )
                        onnx_bytes = pkg.read(member[: -len(".pt")] + ".onnx")
                    yield zip_path / member, ckpt, onnx_bytes


def package_postprocessing(path: Path) -> dict | None:
    """The post-processing rule of a zip that predicts with a single model (as for a single run folder)."""
    zip_path, only = locate(path) or (path, None)
    with Package(zip_path) as pkg:
        names = [only] if only else pkg.manifest["predict"]
        if len(names) != 1 or not pkg.model(names[0]).get("postprocessing"):
            return None
        return json.loads(pkg.read(f"{MODELS}/{names[0]}/{RULE}"))


# ---------------------------------------------------------------------------------------------------
# Writing


@dataclass
class _Builder:
    """Members of the zip being written, and its models."""

    checkpoint: str
    onnx_opset: int | None
    members: dict[str, bytes] = field(default_factory=dict)
    models: dict[str, dict] = field(default_factory=dict)
    by_source: dict[Path, str] = field(default_factory=dict)  # resolved run folder -> model name
    plans: dict[str, dict] = field(default_factory=dict)  # model name -> its plan (json)
    dataset_json: bytes = b""
    onnx_max_diff: float = 0.0

    def unique_name(self, base: str) -> str:
        name, i = base, 2
        while name in self.models:
            name, i = f"{base}_{i}", i + 1
        return name


def _fold_dirs(run_dir: Path, folds: Sequence[str] | None) -> list[Path]:
    from voxseg.inference.models import fold_dirs

    return fold_dirs(run_dir, folds)


def _load(path: Path) -> dict:
    from voxseg.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    meta = ckpt.get("meta")
    if not isinstance(meta, dict) or "plan" not in meta or "network" not in (ckpt.get("trainer") or {}):
        raise CheckpointError(
            "not a voxseg checkpoint (no meta or network weights)",
            path=path,
            fix="export run folders written by `voxseg train` or `voxseg import-nnunet`",
        )
    localize(meta, path.parent.parent, path.parent.parent)  # an installed package's run exports again
    return ckpt


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _add_run(b: _Builder, run_dir: Path, folds: Sequence[str] | None) -> str:
    """Pack one run (and, for a cascade, its previous stage first); returns its model name."""
    dirs = _fold_dirs(run_dir, folds)
    root = dirs[0].parent.resolve()
    if root in b.by_source:
        return b.by_source[root]
    name = b.unique_name(root.name)
    b.by_source[root] = name
    entry: dict[str, Any] = {
        "source": str(root),
        "folds": [],
        "code": [],
        "previous_stage": None,
        "postprocessing": False,
        "onnx": b.onnx_opset is not None,
    }
    b.models[name] = entry
    code: dict[Path, str] = {}  # source file -> its path in the run folder (code/FILE.py)
    prefix = f"{MODELS}/{name}"
    for fold_dir in dirs:
        path = fold_dir / f"checkpoint_{b.checkpoint}.pt"
        ckpt = _load(path)
        meta = ckpt["meta"]
        packed = copy.deepcopy(meta)
        packed["package"] = {"format_version": FORMAT_VERSION, "model": name}
        for holder, key, m in _code_refs(packed):
            source = Path(m["file"]).resolve()
            if not source.is_file():
                raise NotFoundError(
                    f"the network is built by {holder[key]}, whose file is missing",
                    path=path,
                    fix="restore that file (it is packed into the zip), or run export from the folder training ran in",
                )
            if source not in code:
                inner, i = f"{CODE}/{source.name}", 2
                while inner in code.values():  # two files of the same name from different folders
                    inner, i = f"{CODE}/{source.stem}_{i}.py", i + 1
                code[source] = inner
                b.members[f"{prefix}/{inner}"] = source.read_bytes()
            holder[key] = f"{code[source]}:{m['attr']}"
        previous = meta.get("previous_stage")
        if isinstance(previous, dict):
            prev_name = _add_run(b, Path(previous["run_dir"]), None)
            packed["previous_stage"] = {**previous, "run_dir": f"../{prev_name}"}
            entry["previous_stage"] = prev_name
        fold = fold_dir.name.removeprefix("fold_")
        member = f"{prefix}/fold_{fold}/checkpoint_{b.checkpoint}.pt"
        b.members[member] = _torch_bytes({"trainer": {"network": ckpt["trainer"]["network"]}, "meta": packed})
        if b.onnx_opset is not None:
            from voxseg.inference.onnx_backend import export_onnx

            data, diff = export_onnx(meta, ckpt["trainer"]["network"], opset=b.onnx_opset, source=path)
            b.members[member[: -len(".pt")] + ".onnx"] = data
            b.onnx_max_diff = max(b.onnx_max_diff, diff)
        entry["folds"].append(fold)
    entry.update(
        config=meta["config_name"],
        trainer=meta.get("trainer"),
        code=sorted(f"{prefix}/{c}" for c in code.values()),
        network=(meta.get("network_spec") or {}).get("network", {}).get("architecture"),
        inference="nnunet" if (meta.get("inference") or {}).get("export") == "nnunet" else "voxseg",
    )
    b.plans[name] = meta["plan"]
    if not b.dataset_json:
        b.dataset_json = _dataset_json(root, meta)
    rule = root / RULE
    if rule.is_file():
        b.members[f"{prefix}/{RULE}"] = rule.read_bytes()
        entry["postprocessing"] = True
    return name


def _dataset_json(run_root: Path, meta: dict) -> bytes:
    """The dataset.json the run learnt from (the import's copy, the work folder's copy, or the raw
    dataset's); written from the plan when none is found."""
    candidates = [run_root / "nnunet" / DATASET_JSON]
    for run_json in sorted(run_root.glob("fold_*/run.json"))[:1]:
        work = json.loads(run_json.read_text()).get("work_dir")
        if work:
            candidates.append(Path(work) / DATASET_JSON)
    if meta["plan"].get("dataset_path"):
        candidates.append(Path(meta["plan"]["dataset_path"]) / DATASET_JSON)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.read_bytes()
    plan = meta["plan"]
    names = plan.get("class_names") or [str(i) for i in range(plan["num_classes"])]
    labels: dict[str, Any] = {n: i for i, n in enumerate(names)}
    description: dict[str, Any] = {
        "name": plan["dataset_name"],
        "channel_names": {str(i): c for i, c in enumerate(plan["channel_names"])},
    }
    if plan.get("regions"):
        labels = {"background": 0, **dict(zip(plan.get("region_names") or map(str, plan["regions"]), plan["regions"]))}
        description["regions_class_order"] = plan["regions_class_order"]
    return (json.dumps({**description, "labels": labels}, indent=2) + "\n").encode()


def _classes(meta_plan: dict) -> dict:
    names = meta_plan.get("class_names") or [str(i) for i in range(meta_plan["num_classes"])]
    out: dict[str, Any] = {"labels": {n: i for i, n in enumerate(names)}, "channel_names": meta_plan["channel_names"]}
    if meta_plan.get("regions"):
        out["regions"] = dict(zip(meta_plan.get("region_names") or map(str, meta_plan["regions"]), meta_plan["regions"]))
        out["regions_class_order"] = meta_plan["regions_class_order"]
    return out


def export_model(
    run_dirs: Sequence[str | Path],
    output: str | Path,
    *,
    folds: Sequence[str] | None = None,
    checkpoint: str = "final",
    onnx: bool = False,
    opset: int | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Write one zip with everything prediction needs from trained run folders (`voxseg export`).

    Args:
        run_dirs: run folders (``WORK/runs/NAME``, or an imported nnU-Net model); several are an
            ensemble, as with ``voxseg predict -m A B``. A cascade's previous stage is packed with it.
        output: the zip to write (atomically).
        folds: fold names to pack, e.g. ``["0", "1"]`` (None: every trained fold).
        checkpoint: ``"final"`` or ``"best"``: the one checkpoint kind the zip holds.
        onnx: also store each fold's network as ONNX (needs ``pip install 'voxseg[onnx]'``); each
            is checked against torch on a random input before it is written.
        opset: ONNX opset (None: `voxseg.inference.onnx_backend.OPSET`).
        overwrite: replace an existing `output`.

    Example:
        >>> from voxseg.inference.package import export_model
        >>> result = export_model([run], tmp / "model.zip")
        >>> result.models == [run.name], result.checkpoint
        (True, 'final')
    """
    output = Path(output)
    if checkpoint not in EXPORT_CHECKPOINTS:
        raise InputError(f"cannot export the {checkpoint!r} checkpoint", fix=f"use one of {', '.join(EXPORT_CHECKPOINTS)}")
    if output.exists() and not overwrite:
        raise InputError("output file exists", path=output, fix="pass --overwrite, or another -o file")
    if output.is_dir():
        raise InputError("output is a folder", path=output, fix="pass a file name such as MODEL.zip")
    if not run_dirs:
        raise InputError("no run folders to export", fix="pass at least one run folder")
    if onnx:
        from voxseg.inference.onnx_backend import OPSET

        opset = opset or OPSET
    b = _Builder(checkpoint, opset if onnx else None)
    predict = list(dict.fromkeys(_add_run(b, Path(r), folds) for r in run_dirs))
    first = b.plans[predict[0]]
    for name in predict[1:]:
        if _classes(b.plans[name]) != _classes(first):
            raise InputError(
                f"{name} predicts other classes or regions than {predict[0]}",
                path=b.models[name]["source"],
                fix="export an ensemble of models of the same dataset only",
            )
    b.members[DATASET_JSON] = b.dataset_json
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "voxseg": __version__,
        "torch": torch.__version__,
        "created": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "checkpoint": checkpoint,
        "predict": predict,
        "configurations": sorted({b.models[n]["config"] for n in b.models}),
        "dataset": first["dataset_name"],
        "classes": _classes(first),
        "onnx": None
        if not onnx
        else {
            "opset": opset,
            "inputs": "image (batch, channels, *spatial), dynamic batch and spatial axes",
            "outputs": "full-resolution logits per head, 'seg' first",
            "max_abs_logit_difference_vs_torch": b.onnx_max_diff,
        },
        "models": b.models,
        "files": {m: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)} for m, d in sorted(b.members.items())},
    }
    with atomic_path(output) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for member, data in b.members.items():
            # float weights barely deflate (~7% for a 125 MB network, at ~4 s): stored as they are, read without inflating
            zf.writestr(member, data, compress_type=zipfile.ZIP_STORED if member.endswith((".pt", ".onnx")) else None)
        zf.writestr(MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return ExportResult(
        output,
        predict,
        [n for n in b.models if n not in predict],
        {n: list(e["folds"]) for n, e in b.models.items()},
        checkpoint,
        opset if onnx else None,
        output.stat().st_size,
    )


def install_model(package: str | Path, output_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Unpack a model zip into a folder (`voxseg install`), every member checked against its sha256.

    The folder holds manifest.json, dataset.json and ``models/NAME/`` run folders; ``voxseg predict
    -m DIR`` predicts with it as with the zip. It is assembled beside `output_dir` and renamed into place.

    Args:
        package: the zip `export_model` wrote.
        output_dir: the folder to create (an empty folder, or an earlier install with `overwrite`).
        overwrite: replace an earlier install at `output_dir` (never a folder that is not one).

    Example:
        >>> from voxseg.inference.package import install_model
        >>> folder = install_model(tmp / "model.zip", tmp / "installed")
        >>> (folder / "manifest.json").is_file()
        True
    """
    output_dir = Path(output_dir)
    check_replaceable(output_dir, MANIFEST, "an installed model", overwrite)
    with Package(Path(package)) as pkg, staged_folder(output_dir) as staging:
        for member in pkg.manifest["files"]:
            target = staging / member
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(pkg.read(member))
        (staging / MANIFEST).write_text(json.dumps(pkg.manifest, indent=2) + "\n")
    return output_dir
