"""The GPU check's driver: every stage in its own process, one time budget, results after each stage.

    python benchmarks/gpu/check.py --mode run --wheels DIR --out OUT [--work DIR] [--budget-s 480]
                                   [--stages a,b,...] [--refenv DIR] [--keep]
    python benchmarks/gpu/check.py --mode dry --out OUT [--refenv DIR] [--wheels DIR] [...]

Called by ``benchmarks/gpu_check.sh`` (``--run`` / ``--dry-run``). Stages (profiles.STAGES) run in
order: ``install`` (the wheels of DIR into WORK/site, offline; skipped in a dry run without
--wheels) here, the others as ``stages.py STAGE`` children. Each child runs in its own process
group under a timeout (the smaller of its profile limit and what is left of the budget), so a hung
or crashed stage -- a CUDA error poisons its whole process, a NCCL hang never returns -- costs only
itself, and the group is killed when it ends, leaving no process behind. A stage whose minimum
time is no longer left is "skipped: out of time". results.json and results.md are rewritten after
every stage, so a killed run still leaves what it measured; each stage's output goes to log.txt.

voxseg runs from the project tree (src/ on PYTHONPATH, after WORK/site): the tree that travels is
the code under test, and nothing has to be built on the host.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT / "src")]
import report  # noqa: E402
import wheels  # noqa: E402
from profiles import NNUNET_STAGES, PROFILES, STAGES  # noqa: E402

RESERVE_S = 5.0  # kept back from the budget to write the results
LOG_TAIL_BYTES = 200_000  # of each stage's output, in log.txt (what comes back from a device is capped)


class Interrupted(Exception):
    pass


def _interrupt(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


def kill_group(proc: subprocess.Popen) -> None:
    """End the stage's process group: its loader workers, torchrun ranks, nnU-Net's children."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        if sig == signal.SIGTERM:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


def run_child(cmd: list[str], env: dict[str, str], timeout: float, log_path: Path) -> tuple[int | None, str]:
    """(exit code or None on timeout, the end of the output) of ``cmd`` in a new process group."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, process_group=0)
        try:
            rc: int | None = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            kill_group(proc)
            proc.wait()
    data = log_path.read_bytes()
    return rc, data[-LOG_TAIL_BYTES:].decode(errors="replace")


class Check:
    def __init__(self, a: argparse.Namespace):
        self.mode, self.profile = a.mode, PROFILES[a.mode]
        self.budget = a.budget_s or self.profile.budget_s
        self.start = time.monotonic()
        self.out = a.out.resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.keep = a.keep or a.work is not None
        self.work = (a.work or Path(tempfile.mkdtemp(prefix="voxseg_gpu_check_"))).resolve()
        (self.work / "results").mkdir(parents=True, exist_ok=True)
        (self.work / "logs").mkdir(exist_ok=True)
        self.wheels = a.wheels.resolve() if a.wheels else None
        # with wheels to install, nnunet_env makes the reference env over them in WORK
        default_refenv = self.work / "refenv" if self.wheels else ROOT / "benchmarks" / ".refenv"
        self.refenv = (a.refenv or default_refenv).resolve()
        self.site: Path | None = None
        self.stages = [s for s in STAGES if s in a.stages] if a.stages else list(STAGES)
        self.results: dict = {
            "mode": self.mode,
            "profile": dataclasses.asdict(self.profile),
            "budget_s": self.budget,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "work": str(self.work),
            "info": {},
            "stages": {},
        }
        (self.out / "log.txt").write_text("")

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def env(self) -> dict[str, str]:
        paths = [str(self.site)] if self.site else []
        paths += [str(ROOT / "src")] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
        return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}

    def why_not(self, stage: str) -> str | None:
        """Why ``stage`` cannot start (None: it can)."""
        if stage == "install" and self.wheels is None:
            return "dry run uses this environment (pass --wheels DIR to try an install)"
        made_here = stage == "nnunet_env" and self.site is not None
        if stage in NNUNET_STAGES and not (self.refenv / "bin" / "python").exists() and not made_here:
            return "reference env missing"
        need = self.profile.limit(stage).need_s
        if self.left() - RESERVE_S < need:
            return f"out of time ({max(0.0, self.left()):.0f} s of the budget left, needs ~{need:.0f} s)"
        return None

    def run(self) -> None:
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)
        try:
            for stage in self.stages:
                self.log(f"=== {stage} ({self.left():.0f} s of the budget left)\n")
                reason = self.why_not(stage)
                if reason:
                    self.record(stage, {"status": f"skipped: {reason}", "metrics": {}, "notes": []}, 0.0)
                    continue
                t0 = time.monotonic()
                result = self.install() if stage == "install" else self.child(stage)
                self.record(stage, result, time.monotonic() - t0)
        except Interrupted as e:
            for stage in self.stages:
                self.results["stages"].setdefault(stage, {"status": f"skipped: interrupted ({e})", "metrics": {}, "notes": []})
        finally:
            self.results["wall_s"] = time.monotonic() - self.start
            self.write()
            if not self.keep:
                shutil.rmtree(self.work, ignore_errors=True)

    def install(self) -> dict:
        site = self.work / "site"
        cmd = [sys.executable, str(HERE / "wheels.py"), "install", str(self.wheels), "--site", str(site)]
        timeout = min(self.profile.limit("install").max_s, self.left() - RESERVE_S)
        rc, tail = run_child(cmd, self.env(), timeout, self.work / "logs" / "install.log")
        self.log(tail, echo=False)
        last = ([line.strip() for line in tail.splitlines() if line.strip()] or [""])[-1]
        if rc != 0:
            return {"status": f"failed: {'timed out' if rc is None else f'exit {rc}'} ({last[:300]})", "metrics": {}, "notes": []}
        self.site = site
        info = json.loads(last)
        manifest = json.loads((self.wheels / wheels.MANIFEST).read_text())
        self.results["info"]["wheels"] = (
            f"{info['wheels']} ({info['bytes'] / 2**20:.1f} MiB, for Python {manifest['python_version']})"
        )
        return {"status": "ok", "metrics": info, "notes": []}

    def child(self, stage: str) -> dict:
        result_path = self.work / "results" / f"{stage}.json"
        result_path.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            str(HERE / "stages.py"),
            stage,
            "--profile",
            self.mode,
            "--work",
            str(self.work),
            "--result",
            str(result_path),
            "--refenv",
            str(self.refenv),
        ]
        timeout = min(self.profile.limit(stage).max_s, self.left() - RESERVE_S)
        rc, tail = run_child(cmd, self.env(), timeout, self.work / "logs" / f"{stage}.log")
        self.log(tail, echo=False)
        if rc is None:
            return {"status": f"failed: timed out after {max(1.0, timeout):.0f} s", "metrics": {}, "notes": []}
        if result_path.is_file():
            return json.loads(result_path.read_text())
        last = [line for line in tail.splitlines() if line.strip()][-1:] or [""]
        return {"status": f"failed: exit {rc}, no result ({last[0].strip()[:300]})", "metrics": {}, "notes": []}

    def record(self, stage: str, result: dict, seconds: float) -> None:
        result["seconds"] = round(seconds, 1)
        self.results["stages"][stage] = result
        if stage == "env":
            self.results["info"].update(_info(result.get("metrics", {})))
        if stage == "nnunet_env" and result["status"] == "ok":
            self.results["info"]["nnunetv2"] = result["metrics"].get("nnunetv2")
        self.log(f"--- {stage}: {result['status']} ({seconds:.1f} s)\n")
        self.write()

    def log(self, text: str, echo: bool = True) -> None:
        with open(self.out / "log.txt", "a") as f:
            f.write(text if text.endswith("\n") else text + "\n")
        if echo:
            print(f"[gpu check] {text.strip()}", flush=True)

    def write(self) -> None:
        from voxseg.io_utils import atomic_write_json, atomic_write_text

        self.results["goals"] = report.goals(self.results)
        atomic_write_json(self.out / "results.json", self.results)
        atomic_write_text(self.out / "results.md", report.render(self.results))


def _info(env: dict) -> dict:
    keys = {
        "gpu": "gpu",
        "gpu_memory_gb": "GPU memory GB",
        "nvidia_smi": "nvidia-smi",
        "machine": "machine",
        "python": "python",
        "torch": "torch",
        "torch_cuda": "CUDA (torch)",
        "cudnn": "cuDNN",
        "nccl": "NCCL",
        "voxseg_autocast": "voxseg autocast",
        "pkg_voxseg": "voxseg",
    }
    return {label: env[k] for k, label in keys.items() if env.get(k) is not None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=sorted(PROFILES), required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--wheels", type=Path, default=None, help="folder made by gpu_check.sh --prepare")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (kept); default: a temporary one, removed")
    ap.add_argument(
        "--refenv",
        type=Path,
        default=None,
        help="nnU-Net reference env (default: made in WORK on a GPU host; benchmarks/.refenv in a dry run)",
    )
    ap.add_argument("--budget-s", type=float, default=None, help="total wall-time budget (run: 480, dry: 300)")
    ap.add_argument(
        "--stages",
        type=lambda s: [x for x in s.split(",") if x],
        default=None,
        help=f"comma-separated subset of {','.join(STAGES)}",
    )
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    a = ap.parse_args()
    unknown = set(a.stages or ()) - set(STAGES)
    if unknown:
        ap.error(f"unknown stage(s) {sorted(unknown)}; choose from {', '.join(STAGES)}")
    if a.mode == "run" and a.wheels is None:
        ap.error("--mode run needs --wheels DIR (made by gpu_check.sh --prepare)")
    check = Check(a)
    check.run()
    print(f"results: {check.out / 'results.md'}")


if __name__ == "__main__":
    main()
