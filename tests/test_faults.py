"""Faults a real run meets: SIGKILL in every stage, a full disk, a damaged store, the umask.

Real `voxseg` processes are started in their own session (`start_new_session=True`) and killed with
SIGKILL, as the out-of-memory killer or a scheduler's time limit would. Each test ends in a clean
resume or a one-line error, and checks that no process of the killed session outlives it (loader
workers, pool workers, multiprocessing's resource tracker) and that no shared memory leaks.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

from voxseg.cli.main import main
from voxseg.data.demo import make_demo_dataset
from voxseg.data.io import read_image
from voxseg.io_utils import atomic_path, atomic_save_npy, atomic_write_json
from voxseg.model.checkpoint import load_checkpoint
from voxseg.preprocessing.store import Store
from voxseg.runlog import read_log
from voxseg.sampling.loader import SHM_PREFIX
from voxseg.training.run import train
from voxseg.training.settings import load_settings

linux_only = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds a session's processes in /proc (Linux)")
QUICK_TRAIN = [
    "--device",
    "cpu",
    "--set",
    "training.epochs=3",
    "--set",
    "training.iterations_per_epoch=3",
    "--set",
    "training.val_iterations=1",
    "--set",
    "training.final_validation=false",
]


# -- helpers -----------------------------------------------------------------------------------------
def start(args: list[str], log: Path) -> subprocess.Popen:
    """`voxseg ARGS` in a new session (its id is the pid), output to `log`."""
    with open(log, "w") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "voxseg", *args], stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )


def run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "voxseg", *args], capture_output=True, text=True, timeout=timeout)


def kill_when(proc: subprocess.Popen, ready, log: Path, timeout: float = 120) -> None:
    """SIGKILL `proc` (only it, not its children) as soon as `ready()`; fail if it ends first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"process ended (rc {proc.returncode}) before it could be killed:\n{log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting to kill:\n{log.read_text()}")
        time.sleep(0.01)
    proc.kill()
    assert proc.wait() == -9


def session_processes(sid: int) -> list[str]:
    """Live (not zombie) processes of session `sid`, from /proc/*/stat."""
    found = []
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = path.read_text()
        except OSError:  # ended while we looked
            continue
        name_end = text.rindex(")")
        state, _ppid, _pgrp, session = text[name_end + 2 :].split()[:4]
        if int(session) == sid and state not in ("Z", "X"):
            found.append(text[: name_end + 1])
    return found


def assert_session_ends(sid: int, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while (left := session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes of the killed session still running after {within} s: {left}"
    leaked = list(Path("/dev/shm").glob(f"{SHM_PREFIX}{sid}_*"))
    assert not leaked, f"shared memory of the killed process left behind: {leaked}"


def readable(path: Path) -> None:
    if path.suffix == ".npz":
        with np.load(path) as z:
            assert z["probabilities"].size > 0
    else:
        assert read_image(path)[0].size > 0


@lru_cache(maxsize=1)
def tmpfs_possible() -> bool:
    """Whether this user may mount a size-limited tmpfs in a private user and mount namespace."""
    if not shutil.which("unshare"):
        return False
    with tempfile.TemporaryDirectory() as folder:
        probe = subprocess.run(
            ["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", folder], capture_output=True, timeout=30
        )
    return probe.returncode == 0


def in_tmpfs(mount_at: Path, size_kb: int, script: str) -> subprocess.CompletedProcess:
    """`sh -c script` with a `size_kb` tmpfs mounted at `mount_at`, visible only to that shell."""
    mount_at.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o size={size_kb}k tmpfs "{mount_at}" && {script}'],
        capture_output=True,
        text=True,
        timeout=300,
    )


needs_tmpfs = pytest.mark.skipif("not tmpfs_possible()", reason="cannot mount a tmpfs in a user namespace here (unshare -rm)")


@pytest.fixture(scope="module")
def trained_run(tiny_work) -> Path:
    settings = load_settings(
        None,
        [
            "training.epochs=1",
            "training.iterations_per_epoch=2",
            "training.val_iterations=0",
            "training.final_validation=false",
            "sampling.workers=0",
        ],
    )
    return train(tiny_work, "3d_fullres", "all", settings, device="cpu", name="faults").parent


@pytest.fixture
def images(demo_dataset, tmp_path) -> Path:
    """The 6 images (training and test) of the demo dataset as one input folder."""
    inp = tmp_path / "images"
    inp.mkdir()
    for p in [*(demo_dataset / "imagesTr").iterdir(), *(demo_dataset / "imagesTs").iterdir()]:
        shutil.copy(p, inp / p.name)
    return inp


# -- SIGKILL -----------------------------------------------------------------------------------------
@linux_only
@pytest.mark.slow
def test_train_killed_mid_run_resumes_to_the_uninterrupted_weights(tiny_work, tmp_path):
    # Default sampling settings: loader worker processes and shared-memory slots exist when it dies.
    straight = start(["train", str(tiny_work), "3d_fullres", "0", *QUICK_TRAIN, "--name", "faults-straight"], tmp_path / "a.log")
    args = ["train", str(tiny_work), "3d_fullres", "0", *QUICK_TRAIN, "--name", "faults-killed"]
    killed = start(args, tmp_path / "b.log")
    fold = tiny_work / "runs" / "3d_fullres__default__faults-killed" / "fold_0"
    kill_when(killed, lambda: (fold / "checkpoint_latest.pt").is_file(), tmp_path / "b.log")
    assert not (fold / "checkpoint_final.pt").exists(), "killed before the end"
    assert_session_ends(killed.pid)
    assert straight.wait(timeout=300) == 0, (tmp_path / "a.log").read_text()

    resumed = run([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    a = load_checkpoint(fold.parent.parent / "3d_fullres__default__faults-straight" / "fold_0" / "checkpoint_final.pt")["trainer"]
    b = load_checkpoint(fold / "checkpoint_final.pt")["trainer"]
    for key in a["network"]:
        assert torch.equal(a["network"][key], b["network"][key]), key
    assert [r["epoch"] for r in read_log(fold / "log.jsonl")] == [0, 1, 2]


@linux_only
@pytest.mark.slow
def test_preprocess_killed_keeps_finished_cases_and_redoes_the_rest(tmp_path):
    raw = make_demo_dataset(tmp_path / "raw", cases=8, seed=3, size_range=(40, 56))
    work = tmp_path / "work"
    assert main(["plan", str(raw), "-o", str(work), "--configs", "3d_fullres,2d", "-j", "1"]) == 0
    roots = [work / "store" / c for c in ("3d_fullres", "2d")]
    proc = start(["preprocess", str(work), "-j", "2"], tmp_path / "pre.log")  # a pool of spawned workers
    kill_when(proc, lambda: any(Store(r).case_ids() for r in roots), tmp_path / "pre.log")
    assert_session_ends(proc.pid)

    finished = {r.name: Store(r).case_ids() for r in roots}
    assert 0 < sum(map(len, finished.values())) < 16, finished
    for r in roots:  # a case is trusted only once complete
        for case_id in finished[r.name]:
            case = Store(r).open(case_id)
            assert list(case.image.shape[1:]) == case.properties["shape_after_resample"]
    stamps = {p: p.stat().st_mtime_ns for r in roots for p in r.glob("*.json")}
    (roots[0] / ".demo_000.0badc0de.tmp.npy").write_bytes(b"\x93NUMPY half")  # what a kill mid-write leaves

    again = run(["preprocess", str(work), "-j", "1"])
    assert again.returncode == 0, again.stderr
    for r in roots:
        redone = 8 - len(finished[r.name])
        assert f"{r.name}: {redone} case(s) preprocessed" in again.stdout
        assert len(Store(r).case_ids()) == 8
        assert not list(r.glob(".*.tmp*")), "stray temp files are removed"
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items()), "finished cases are kept, not redone"


@linux_only
@pytest.mark.slow
def test_predict_killed_never_leaves_a_half_written_output(trained_run, images, tmp_path):
    out = tmp_path / "out"
    args = ["predict", "-m", str(trained_run), "-i", str(images), "-o", str(out), "--device", "cpu", "--save-probabilities"]
    proc = start(args, tmp_path / "predict.log")
    kill_when(proc, lambda: out.is_dir() and any(out.glob("*.npz")), tmp_path / "predict.log")
    assert_session_ends(proc.pid)
    outputs = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert 0 < len(outputs) < 12
    for p in outputs:
        readable(p)  # anything under its final name is complete

    again = run(args)
    assert again.returncode == 0, again.stderr
    outputs = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in images.iterdir())
    assert outputs == sorted([f"{c}.nii.gz" for c in cases] + [f"{c}.npz" for c in cases])
    for name in outputs:
        readable(out / name)


ORPHAN = textwrap.dedent("""
    import os, sys, time
    import voxseg.parallel as parallel

    if sys.argv[1] == "poll":  # as where prctl is unavailable (not Linux)
        parallel._set_parent_death_signal = lambda: False
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        parallel.die_with_parent(parent)
        time.sleep(60)
        os._exit(0)
    print(child, flush=True)
    time.sleep(0.3)
    os._exit(0)  # the parent dies without any cleanup, as under SIGKILL
""")


def alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] not in "ZX"


@linux_only
@pytest.mark.parametrize("how", ["signal", "poll"])
def test_a_child_dies_with_its_parent(tmp_path, how):
    (tmp_path / "orphan.py").write_text(ORPHAN)
    done = subprocess.run([sys.executable, str(tmp_path / "orphan.py"), how], capture_output=True, text=True, timeout=60)
    child = int(done.stdout)
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(child):
        os.kill(child, 9)
        pytest.fail(f"child outlived its parent ({how})")


def test_a_child_whose_parent_already_died_exits_at_once():
    # The parent may die before the child arms the signal: the child then finds another parent.
    done = subprocess.run(
        [sys.executable, "-c", "from voxseg.parallel import die_with_parent; die_with_parent(-1); print('ran on')"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "ran on" not in done.stdout


# -- disk full ---------------------------------------------------------------------------------------
CHECK_WRITERS = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np, torch
    from voxseg.data.io import Geometry, write_image
    from voxseg.io_utils import atomic_save_npy, atomic_write_json
    from voxseg.model.checkpoint import save_checkpoint

    full = Path(sys.argv[1])
    big = np.random.default_rng(0).random((64, 64, 64)).astype(np.float32)  # 1 MiB, incompressible
    writers = {
        "image.nii.gz": lambda p: write_image(p, big, Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))),
        "checkpoint.pt": lambda p: save_checkpoint(p, {"w": torch.from_numpy(big)}),
        "array.npy": lambda p: atomic_save_npy(p, big),
        "big.json": lambda p: atomic_write_json(p, big.tolist()),
    }
    report = {}
    for name, write in writers.items():
        try:
            write(full / name)
            report[name] = "written"
        except OSError as e:
            report[name] = [e.errno, e.filename]
        report[name + " files"] = sorted(p.name for p in full.iterdir())
    print(json.dumps(report))
""")


@needs_tmpfs
def test_a_full_disk_is_enospc_for_every_writer_and_leaves_no_file(tmp_path):
    # numpy, torch and ITK fail differently on a full disk (ITK's NIfTI writer only prints to stderr).
    (tmp_path / "check.py").write_text(CHECK_WRITERS)
    full = tmp_path / "full"
    done = in_tmpfs(full, 256, f'"{sys.executable}" "{tmp_path / "check.py"}" "{full}"')
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("image.nii.gz", "checkpoint.pt", "array.npy", "big.json"):
        assert report[name] == [errno.ENOSPC, str(full / name)], (name, report[name])
        assert report[name + " files"] == [], f"{name}: something was left on the full disk"


CHECK_OUTPUTS = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    from voxseg.data.io import read_image

    for p in sorted(Path(sys.argv[1]).iterdir()):
        if p.suffix == ".npz":
            np.load(p)["probabilities"]
        else:
            read_image(p)
        print("ok", p.name)
""")


@needs_tmpfs
def test_predict_onto_a_full_disk_is_a_one_line_error_and_keeps_complete_outputs_only(trained_run, images, tmp_path):
    (tmp_path / "check.py").write_text(CHECK_OUTPUTS)
    out, err = tmp_path / "out", tmp_path / "stderr.txt"
    predict = (
        f'"{sys.executable}" -m voxseg predict -m "{trained_run}" -i "{images}" -o "{out}" --device cpu --no-tta '
        f'--save-probabilities 2>"{err}"; echo "rc=$?"; "{sys.executable}" "{tmp_path / "check.py"}" "{out}"'
    )
    done = in_tmpfs(out, 160, predict)  # room for 2 of the 6 cases
    assert done.returncode == 0, done.stderr  # the checker read every file left on the full disk
    lines = done.stdout.splitlines()
    assert lines[0] == "rc=1"
    stderr = err.read_text()
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and str(out) in errors[0], stderr
    assert all(line.startswith("ok ") for line in lines[1:]) and not any(" ." in line for line in lines[1:]), lines


class _FillingFile:
    """A file object whose writes fail with ENOSPC once `room` bytes are written, like a full disk."""

    def __init__(self, f, room: list[int]):
        self._f, self._room = f, room

    def write(self, data) -> int:
        size = len(memoryview(data).cast("B"))
        if size > self._room[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room[0] -= size
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def test_a_write_failing_with_enospc_is_a_one_line_error_without_partial_files(tiny_work, tmp_path, monkeypatch, capsys):
    # Portable twin of the tmpfs tests: the lowest Python-level write of a real `voxseg preprocess` fails.
    work = tmp_path / "work"
    shutil.copytree(tiny_work, work, ignore=shutil.ignore_patterns("runs", "store"))
    real_open, room = open, [100_000]  # about one case fits

    def filling_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return _FillingFile(f, room) if "w" in mode and str(file).startswith(str(work / "store")) else f

    monkeypatch.setattr("builtins.open", filling_open)
    assert main(["preprocess", str(work), "--configs", "3d_fullres", "-j", "1"]) == 1
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("error: ")]
    assert "No space left on device" in line and "fix: free disk space" in line and str(work / "store") in line
    root = work / "store" / "3d_fullres"
    assert not list(root.glob(".*.tmp*")), "the failed write's temp file is removed"
    for p in root.glob("*.npy"):
        np.load(p)  # whatever has its final name is complete


# -- damaged store -----------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".npy", "_locs.npz"])
def test_training_on_a_damaged_store_names_the_file_and_the_fix(tiny_work, tmp_path, capsys, suffix):
    work = tmp_path / "work"
    shutil.copytree(tiny_work, work, ignore=shutil.ignore_patterns("runs"))
    root = work / "store" / "3d_fullres"
    for case_id in Store(root).case_ids():
        p = root / f"{case_id}{suffix}"
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])  # truncated, as by a bad copy
    assert main(["train", str(work), "3d_fullres", "0", *QUICK_TRAIN]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("error: ")]
    assert f"{suffix}: stored case file is missing or damaged" in line and str(root) in line
    assert f"re-run `voxseg preprocess {work} --configs 3d_fullres --overwrite`" in line


# -- permissions -------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "report.json", {"a": 1})
        atomic_save_npy(tmp_path / "case.npy", np.zeros(3))
        with atomic_path(tmp_path / "sub" / "model.pt") as tmp:
            torch.save({}, tmp)
    finally:
        os.umask(old)
    for name in ("report.json", "case.npy", "sub/model.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
