"""The offline GPU kit (benchmarks/gpu_check.sh): its dry run, which CI runs so the kit cannot rot.

CI has no GPU and no nnU-Net reference env: the dry run runs voxseg's stages on the CPU at tiny
sizes, nnU-Net's stages report that the env is missing, and results.json/results.md list every
stage. A stage that overruns is stopped without stopping the run, and nothing is left running.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
import wheels  # noqa: E402
from profiles import NNUNET_STAGES, STAGES  # noqa: E402

OURS = ("env", "data", "train", "augment", "memory", "predict", "ddp")


def gpu_check(tmp_path: Path, *args: str) -> tuple[dict, str, str]:
    """Run the dry run with a marker in its environment; (results.json, results.md, the marker)."""
    marker = uuid.uuid4().hex
    out = tmp_path / "out"
    cmd = [
        "bash",
        str(ROOT / "benchmarks" / "gpu_check.sh"),
        "--dry-run",
        "--out",
        str(out),
        "--python",
        sys.executable,
        "--refenv",
        str(tmp_path / "no_refenv"),
        "--work",
        str(tmp_path / "work"),
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "GPU_KIT_TEST": marker})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text(), marker


def left_running(marker: str) -> list[int]:
    """Processes that inherited the test's marker: anything the kit started and left behind."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f"GPU_KIT_TEST={marker}".encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


@pytest.mark.slow
def test_dry_run_reports_every_stage(tmp_path):
    results, md, marker = gpu_check(tmp_path)
    status = {name: stage["status"] for name, stage in results["stages"].items()}
    assert list(status) == list(STAGES)
    assert status["install"].startswith("skipped: dry run")
    assert {status[name] for name in NNUNET_STAGES} == {"skipped: reference env missing"}
    assert {name: status[name] for name in OURS} == dict.fromkeys(OURS, "ok")
    metrics = {name: stage["metrics"] for name, stage in results["stages"].items()}
    assert metrics["train"]["ms_per_it"] > 0 and metrics["train"]["augmentation_where"] == "device"
    assert metrics["predict"]["cases"] == 2 and metrics["predict"]["stage_s"]["network"] > 0
    assert [row["budget_gb"] for row in metrics["memory"]["rows"]] == [0.35, 0.4, 0.5]
    assert metrics["ddp"]["ranks"] == 2
    assert all(f"| {name} | {status[name]} |" in md for name in STAGES)
    assert "## Goals" in md and results["goals"]
    assert left_running(marker) == []


def test_overrunning_stage_is_stopped_and_the_rest_still_reported(tmp_path):
    # 8 s in all, 5 of them kept back for the report: memory (several seconds here) gets 3 s and is
    # killed; predict then finds no time left. Both are reported, and the run itself succeeds.
    results, md, marker = gpu_check(tmp_path, "--stages", "memory,predict", "--budget-s", "8")
    status = {name: stage["status"] for name, stage in results["stages"].items()}
    assert status["memory"].startswith("failed: timed out after")
    assert status["predict"].startswith("skipped: out of time")
    assert "| memory | failed: timed out" in md
    assert left_running(marker) == []


def make_wheel(path: Path, module: str, text: str) -> None:
    """A minimal pure-Python wheel (WHEEL, METADATA, RECORD with hashes) holding one module."""
    files = {
        f"{module}/__init__.py": text.encode(),
        f"{module}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n".encode(),
        f"{module}-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    digest = {n: base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b"=").decode() for n, d in files.items()}
    record = "".join(f"{n},sha256={digest[n]},{len(d)}\n" for n, d in files.items()) + f"{module}-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr(f"{module}-1.0.dist-info/RECORD", record)


def test_lzma_recompressed_wheel_installs_offline_and_a_damaged_one_is_named(tmp_path):
    source = tmp_path / "kitdemo-1.0-py3-none-any.whl"
    make_wheel(source, "kitdemo", "VALUE = 'x' * 10_000\n")
    kit = tmp_path / "kit"
    (kit / "wheels").mkdir(parents=True)
    wheel = kit / "wheels" / source.name
    wheels.recompress(source, wheel)
    with zipfile.ZipFile(wheel) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_LZMA}
    wheels.write_manifest(kit, f"{sys.version_info.major}.{sys.version_info.minor}", {})
    wheels.install(kit, tmp_path / "site")
    assert (tmp_path / "site" / "kitdemo" / "__init__.py").read_text() == "VALUE = 'x' * 10_000\n"
    with open(wheel, "r+b") as f:  # a transfer cut short
        f.truncate(wheel.stat().st_size - 10)
    with pytest.raises(SystemExit, match=r"damaged in transfer: kitdemo-1\.0-py3-none-any\.whl"):
        wheels.install(kit, tmp_path / "site2")
