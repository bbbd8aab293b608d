"""The GPU kit's wheel folder: fetched and recompressed here, checked and installed offline there.

    python benchmarks/gpu/wheels.py prepare DIR [--python-version 3.12] [--limit-mib 60]
    python benchmarks/gpu/wheels.py install DIR --site SITE

``prepare`` (a machine with registry access) fills ``DIR/wheels`` with what a GPU host that has
Python, a CUDA torch and the usual scientific stack lacks to run voxseg and the reference nnU-Net
2.8.1 -- the list ``setup_reference.sh --download-wheels`` keeps, which covers voxseg's own missing
needs (SimpleITK, nibabel, connected-components-3d) -- for that host's Python, manylinux x86_64.
It then:

- recompresses every wheel over 1 MiB with LZMA inside the zip (SimpleITK's one 259 MiB library
  goes from 50 to 27 MiB; the folder from 67 to about 44 MiB). A wheel is a zip archive; pip and
  Python's zipfile read LZMA members, and RECORD hashes the uncompressed files, so the wheel stays
  valid. Done here with zipfile rather than an external tool so nothing beyond Python is needed;
- checks that every requirement of voxseg (pyproject.toml) and of the wheels is in ``DIR/wheels``,
  in :data:`HOST_PROVIDES`, or in :data:`NOT_NEEDED` with the reason the check can do without it,
  so a dependency added later cannot be forgotten;
- writes ``DIR/MANIFEST.json`` (each wheel's size and sha256) and fails when the folder is over
  ``--limit-mib``: the folder and the project tree must travel together in one 64 MiB transfer.

``install`` (the GPU host, no network) checks each wheel against the manifest (a truncated
transfer is caught here, not as an import error later) and installs them all with
``pip install --no-index --no-deps --target SITE``; callers put SITE first on PYTHONPATH. A target
folder rather than a venv because the host's torch may itself live in a venv, which a nested venv
would not see. Standard library only: this runs before anything else is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import tomllib

BENCH_DIR = Path(__file__).resolve().parents[1]
ROOT = BENCH_DIR.parent
MANIFEST = "MANIFEST.json"
RECOMPRESS_OVER = 1 << 20
LIMIT_MIB = 60.0
# Distributions the GPU host is expected to have (the device image's package list, as read on
# 2026-11-17; only the names voxseg and nnU-Net need). ``check.py``'s env stage imports them there.
HOST_PROVIDES = frozenset(
    {
        "torch",
        "numpy",
        "scipy",
        "tqdm",
        "pyyaml",
        "matplotlib",
        "pillow",
        "tifffile",
        "scikit-image",
        "scikit-learn",
        "pandas",
        "seaborn",
        "requests",
        "einops",
        "timm",
        "threadpoolctl",
        "msgpack",
        "httpx",
        "rich",
        "six",
        "packaging",
        "typing-extensions",
    }
)
# Required by a wheel, absent from the host, and not needed by what the check runs.
NOT_NEEDED = {
    "imagecodecs": "tifffile's codecs for compressed TIFFs (a 28 MB wheel); the check reads NIfTI only",
    "pydantic": "blosc2's CTable schemas only; nnU-Net's blosc2 arrays do not use it",
    "importlib-resources": "Python < 3.12 only",
}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name(path: Path) -> str:
    return normalise(path.name.split("-")[0])


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def recompress(path: Path, out: Path) -> int:
    """Write ``path`` to ``out`` with every member LZMA-compressed; the new size in bytes."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_LZMA) as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info), compress_type=zipfile.ZIP_LZMA)
    return out.stat().st_size


def _requirements(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    reqs = []
    for line in lines:
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            reqs.append(normalise(re.split(r"[\s;<>=!~\[(]", line.split(":", 1)[1].strip())[0]))
    return reqs


def coverage(wheels: list[Path]) -> dict[str, str]:
    """{requirement of voxseg (pyproject.toml) or of a wheel that neither the wheels nor the host
    provide: why it is not needed, or "?"}."""
    have = {wheel_name(w) for w in wheels} | HOST_PROVIDES
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {normalise(re.split(r"[\s;<>=!~\[(]", d.strip())[0]) for d in project}
    wanted |= {r for w in wheels for r in _requirements(w)}
    return {r: NOT_NEEDED.get(r, "?") for r in sorted(wanted - have)}


def _recompress_one(args: tuple[str, str]) -> tuple[str, int, int]:
    src, dst = Path(args[0]), Path(args[1])
    before = src.stat().st_size
    tmp = dst.with_name(f".{dst.name}.tmp")
    after = recompress(src, tmp)
    if after < 0.95 * before:
        os.replace(tmp, dst)
    else:
        tmp.unlink()
        os.replace(src, dst)
        after = before
    return dst.name, before, after


def prepare(folder: Path, python_version: str, limit_mib: float) -> dict:
    """Fill ``folder`` (see the module docs); the manifest it writes."""
    wheels_dir = folder / "wheels"
    wheels_dir.mkdir(parents=True, exist_ok=True)
    for leftover in wheels_dir.glob(".*.tmp"):  # of an interrupted recompression
        leftover.unlink()
    old = _load_manifest(folder)
    old_sources = {w["name"]: w.get("source_sha256") for w in old.get("wheels", [])}
    with tempfile.TemporaryDirectory(prefix="gpukit_download_") as tmp:
        download = Path(tmp)
        subprocess.run(
            [
                "bash",
                str(BENCH_DIR / "setup_reference.sh"),
                "--download-wheels",
                str(download),
                "--python-version",
                python_version,
            ],
            check=True,
        )
        fetched = sorted(download.glob("*.whl"))
        sources = {w.name: sha256(w) for w in fetched}
        todo = []
        for w in fetched:
            if (wheels_dir / w.name).is_file() and old_sources.get(w.name) == sources[w.name]:
                continue  # recompressed from this very file before
            if w.stat().st_size > RECOMPRESS_OVER:
                todo.append((str(w), str(wheels_dir / w.name)))
            else:
                os.replace(w, wheels_dir / w.name)
        for stale in {p.name for p in wheels_dir.glob("*.whl")} - set(sources):
            (wheels_dir / stale).unlink()  # one version of each: two would stop the install
        if todo:
            print(f"[gpu kit] recompressing {len(todo)} wheel(s) with LZMA (a few minutes for SimpleITK)", flush=True)
            with ProcessPoolExecutor(min(len(todo), os.cpu_count() or 1)) as pool:
                for name, before, after in pool.map(_recompress_one, todo):
                    print(f"[gpu kit]   {name}: {before / 2**20:.1f} -> {after / 2**20:.1f} MiB", flush=True)
    wheels = sorted(wheels_dir.glob("*.whl"))
    missing = coverage(wheels)
    manifest = write_manifest(folder, python_version, sources, not_carried=missing)
    total = folder_bytes(folder)
    print(f"[gpu kit] {folder}: {len(wheels)} wheels, {total / 2**20:.1f} MiB in all (limit {limit_mib:g} MiB)")
    for req, why in missing.items():
        print(f"[gpu kit] required but not carried: {req} ({why})")
    unknown = [r for r, why in missing.items() if why == "?"]
    if unknown:
        raise SystemExit(
            f"[gpu kit] {', '.join(unknown)}: required by voxseg or a wheel, and neither carried nor on the "
            "GPU host (fix: add to setup_reference.sh's --download-wheels list, or to NOT_NEEDED in "
            "benchmarks/gpu/wheels.py with the reason)"
        )
    if total > limit_mib * 2**20:
        raise SystemExit(
            f"[gpu kit] {total / 2**20:.1f} MiB is over the {limit_mib:g} MiB limit (fix: leave out or "
            "recompress the largest wheels)"
        )
    return manifest


def write_manifest(
    folder: Path, python_version: str, sources: dict[str, str], *, not_carried: dict[str, str] | None = None
) -> dict:
    """Write ``folder/MANIFEST.json`` for the wheels in ``folder/wheels``: name, bytes, sha256 (what
    ``install`` checks), the downloaded file's sha256 (``sources``: lets ``prepare`` skip an unchanged
    wheel), whether it is LZMA-recompressed; and the requirements not carried, with why.

    Example:
        >>> write_manifest(Path(".gpukit"), "3.12", {})["python_version"]  # doctest: +SKIP
        '3.12'
    """
    entries = [
        {
            "name": w.name,
            "bytes": w.stat().st_size,
            "sha256": sha256(w),
            "source_sha256": sources.get(w.name),
            "lzma": _is_lzma(w),
        }
        for w in sorted((folder / "wheels").glob("*.whl"))
    ]
    manifest = {
        "python_version": python_version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wheels": entries,
        "not_carried": not_carried or {},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _is_lzma(path: Path) -> bool:
    with zipfile.ZipFile(path) as z:
        return all(i.compress_type == zipfile.ZIP_LZMA for i in z.infolist() if i.file_size)


def _load_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def install(folder: Path, site: Path, python: str = sys.executable) -> dict:
    """Check the wheels against the manifest, then install them into ``site``; what was installed."""
    manifest = _load_manifest(folder)
    if not manifest:
        raise SystemExit(f"{folder / MANIFEST}: missing (fix: make the folder with gpu_check.sh --prepare)")
    want = f"{sys.version_info.major}.{sys.version_info.minor}"
    if manifest["python_version"] != want:
        raise SystemExit(
            f"wheels are for Python {manifest['python_version']}, this is {want} "
            f"(fix: gpu_check.sh --prepare DIR --python-version {want})"
        )
    bad = [
        w["name"]
        for w in manifest["wheels"]
        if not (folder / "wheels" / w["name"]).is_file() or sha256(folder / "wheels" / w["name"]) != w["sha256"]
    ]
    if bad:
        raise SystemExit(f"missing or damaged in transfer: {', '.join(bad)} (fix: copy {folder} again)")
    import lzma  # noqa: F401  (the recompressed wheels need it; a Python built without it says so here)

    paths = [str(folder / "wheels" / w["name"]) for w in manifest["wheels"]]
    subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--upgrade",
            "--target",
            str(site),
            *paths,
        ],
        check=True,
    )
    return {"wheels": len(paths), "bytes": folder_bytes(folder), "site": str(site)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("folder", type=Path)
    p.add_argument("--python-version", default="3.12")
    p.add_argument("--limit-mib", type=float, default=LIMIT_MIB)
    p = sub.add_parser("install")
    p.add_argument("folder", type=Path)
    p.add_argument("--site", type=Path, required=True)
    a = ap.parse_args()
    if a.cmd == "prepare":
        prepare(a.folder, a.python_version, a.limit_mib)
    else:
        print(json.dumps(install(a.folder, a.site)))


if __name__ == "__main__":
    main()
