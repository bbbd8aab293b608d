"""The package graph points one way: later stages never drag in earlier-stage-only machinery."""

from __future__ import annotations

import subprocess
import sys

import pytest


def loaded_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(m for m in sys.modules if m.startswith('voxseg')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("module", ["voxseg.inference.predictor", "voxseg.inference.cohort"])
def test_inference_never_imports_training(module):
    loaded = loaded_after_import(module)
    banned = {m for m in loaded if m.split(".")[1:2] in (["training"], ["augment"], ["sampling"], ["losses"])}
    assert not banned, f"{module} loads {sorted(banned)}"


def test_planning_and_preprocessing_do_not_import_each_other():
    assert not {m for m in loaded_after_import("voxseg.preprocessing.preprocess") if m.startswith("voxseg.planning")}
    assert not {m for m in loaded_after_import("voxseg.planning.planner") if m.startswith("voxseg.preprocessing")}
