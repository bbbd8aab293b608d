"""Shared fixtures: tiny demo datasets built once per session, and the real scans beside the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests share 2 cores with each other's worker processes; one thread per process keeps them fast.
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real scans of ../shared/data (its README): present on the development machines, not in a clone.

    Decision: they are not copied into tests/data. The pyradiomics scans come with the package's BSD-3
    code licence only -- the data's own terms are not stated -- so we do not redistribute them (the
    MNI template has its own licence and no test needs it). On a fresh clone (CI) the few tests that
    need real geometry skip with the reason below; synthetic-data tests cover the same code paths.
    """
    if not (SHARED_DATA / "pyradiomics").is_dir():
        pytest.skip(
            f"real scans not found at {SHARED_DATA}: the pyradiomics scans' terms of use are not stated, "
            "so they are not redistributed in tests/data (see tests/conftest.py)"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory) -> Path:
    """4 training + 2 test cases, 24-40 voxels per axis."""
    from voxseg.data.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "raw", cases=4, test_cases=2, seed=1, size_range=(24, 40))


@pytest.fixture(scope="session")
def demo_dataset_ignore(tmp_path_factory) -> Path:
    from voxseg.data.demo import make_demo_dataset

    return make_demo_dataset(
        tmp_path_factory.mktemp("demo_ign") / "raw", cases=4, seed=2, size_range=(24, 40), ignore_fraction=0.4
    )


@pytest.fixture(scope="session")
def tiny_work(demo_dataset, tmp_path_factory) -> Path:
    """demo_dataset planned (3d_fullres and 2d) and preprocessed, with a narrow network so training tests are quick.

    Editing plans.json by hand is a supported way to change a plan; the store does not depend on it.
    """
    import json

    from voxseg.cli.main import main

    work = tmp_path_factory.mktemp("work")
    assert (
        main(["plan", str(demo_dataset), "-o", str(work), "--configs", "3d_fullres,2d", "--patch-size", "16,32,32", "-j", "1"])
        == 0
    )
    plans = json.loads((work / "plans.json").read_text())
    for cfg in plans["configurations"].values():
        cfg["network"]["features"] = [min(8 * 2**i, 32) for i in range(len(cfg["network"]["features"]))]
        if cfg["dims"] == 2:
            cfg["batch_size"] = 4
    (work / "plans.json").write_text(json.dumps(plans, indent=2))
    assert main(["preprocess", str(work), "-j", "1"]) == 0
    return work
