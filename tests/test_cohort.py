"""Cohort prediction: --continue after a kill, shards, torchrun sharding, io-workers == serial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from voxseg.inference.cohort import CaseInput, predict, select_part
from voxseg.training.run import train
from voxseg.training.settings import load_settings


@pytest.fixture(scope="module")
def model(tiny_work):
    settings = load_settings(
        None,
        [
            "training.epochs=1",
            "training.iterations_per_epoch=1",
            "training.val_iterations=0",
            "training.final_validation=false",
            "sampling.workers=0",
        ],
    )
    return train(tiny_work, "3d_fullres", "all", settings, device="cpu", name="cohort").parent


@pytest.fixture(scope="module")
def cohort(demo_dataset, tmp_path_factory):
    """Six cases: the demo's training and test images under new names."""
    folder = tmp_path_factory.mktemp("cohort")
    images = sorted((demo_dataset / "imagesTr").glob("*_0000.nii.gz")) + sorted((demo_dataset / "imagesTs").glob("*_0000.nii.gz"))
    for i, src in enumerate(images):
        (folder / f"c{i}_0000.nii.gz").symlink_to(src)
    return folder


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "voxseg", *args]


def test_shards_are_disjoint_and_complete():
    cases = [CaseInput(f"case{i:02d}", []) for i in range(11)]
    for n in (1, 2, 3, 4, 11, 13):
        parts = [select_part(cases, (i, n)) for i in range(n)]
        ids = [c.case_id for part in parts for c in part]
        assert sorted(ids) == [c.case_id for c in cases] and len(set(ids)) == len(ids)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    from voxseg.errors import InputError

    with pytest.raises(InputError, match="does not exist"):
        select_part(cases, (3, 3))


def test_continue_after_a_kill_keeps_finished_cases_and_does_the_rest(model, cohort, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        _cli("predict", "-m", str(model), "-i", str(cohort), "-o", str(out), "--device", "cpu", "--no-tta"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("c*.nii.gz"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("c*.nii.gz")}
    assert 2 <= len(done) < 6, "killed in the middle of the cohort"
    result = predict([model], cohort, out, tta=False, device="cpu", progress=False, skip_existing=True)
    assert sorted(result.skipped) == sorted(n.split(".")[0] for n in done)
    assert len(result.written) == 6 - len(done) and not result.failed
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("c*.nii.gz") if p.name in done} == done, (
        "nothing finished is rewritten"
    )
    assert len(list(out.glob("c*.nii.gz"))) == 6


@pytest.mark.slow
def test_io_workers_give_byte_identical_outputs(model, cohort, tmp_path):
    serial = predict([model], cohort, tmp_path / "serial", tta=False, device="cpu", progress=False, save_probabilities=True)
    pooled = predict(
        [model], cohort, tmp_path / "pooled", tta=False, device="cpu", progress=False, save_probabilities=True, io_workers=2
    )
    assert sorted(serial.written) == sorted(pooled.written) and len(serial.written) == 6
    for f in sorted((tmp_path / "serial").iterdir()):
        assert f.read_bytes() == (tmp_path / "pooled" / f.name).read_bytes(), f.name


@pytest.mark.slow
def test_torchrun_shards_cases_over_two_cpu_processes(model, cohort, tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "voxseg",
        "predict",
        "-m",
        str(model),
        "-i",
        str(cohort),
        "-o",
        str(out),
        "--device",
        "cpu",
        "--no-tta",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"c{i}.nii.gz" for i in range(6)]
    assert "6 case(s) predicted" in run.stdout, "rank 0 reports the merged result of both ranks"
