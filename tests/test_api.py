"""The Python API: `import voxseg` stays light, a plain script predicts exactly what the CLI writes, arrays in
memory give the file predictions, and every docstring example and docs/python-api.md run."""

from __future__ import annotations

import doctest
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import voxseg
from voxseg.cli.main import main
from voxseg.training.run import train
from voxseg.training.settings import load_settings

DOCS = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


@pytest.fixture(scope="module")
def run(tiny_work) -> Path:
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
    return train(tiny_work, "3d_fullres", "all", settings, device="cpu", name="api").parent


def _python(code: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_import_voxseg_loads_no_stage_and_names_resolve_lazily(tmp_path):
    out = _python(
        "import sys, voxseg; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'voxseg')))", tmp_path
    )
    assert out.returncode == 0 and out.stdout.strip() == "['voxseg']", out.stderr
    from voxseg.inference.cohort import predict
    from voxseg.inference.predictor import Predictor
    from voxseg.training.settings import Settings

    assert voxseg.Predictor is Predictor and voxseg.predict is predict and voxseg.Settings is Settings
    assert set(voxseg.__all__) == {"__version__", *voxseg._LAZY} and set(voxseg.__all__) <= set(dir(voxseg))
    assert all(getattr(voxseg, name) is not None for name in voxseg.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        voxseg.nope  # noqa: B018


def test_plain_script_writes_what_the_cli_writes(run, demo_dataset, tmp_path):
    images = demo_dataset / "imagesTs"
    assert (
        main(
            ["predict", "-m", str(run), "-i", str(images), "-o", str(tmp_path / "cli"), "--device", "cpu", "--save-probabilities"]
        )
        == 0
    )
    script = textwrap.dedent(f"""
        import voxseg
        predictor = voxseg.Predictor.from_run({str(run)!r}, device="cpu")
        result = predictor.predict_files({str(images)!r}, "api", save_probabilities=True)
        print(result.summary())
    """)  # no `if __name__ == "__main__":` guard: prediction starts no process
    out = _python(script, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("2 case(s) predicted")
    cli = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert cli == sorted(p.name for p in (tmp_path / "api").iterdir()) and len(cli) == 4
    for name in cli:
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "api" / name).read_bytes(), name


def test_arrays_in_memory_give_the_file_predictions(run, demo_dataset, tmp_path):
    predictor = voxseg.Predictor.from_run(run, device="cpu", tta=False)
    files = sorted((demo_dataset / "imagesTs").glob("*_0000.nii.gz"))
    result = predictor.predict_files(files, tmp_path / "files", save_probabilities=True)
    assert result.written == ["demo_004", "demo_005"] and not result.failed
    items = []
    for path in files:
        itk = sitk.ReadImage(str(path))
        items.append((sitk.GetArrayFromImage(itk), itk.GetSpacing()[::-1], itk.GetOrigin(), itk.GetDirection()))
    streamed = list(predictor.predict_arrays(items, probabilities=True))
    for (image, spacing, origin, direction), path, from_stream in zip(items, files, streamed):
        case = path.name.replace("_0000.nii.gz", "")
        written = sitk.ReadImage(str(tmp_path / "files" / f"{case}.nii.gz"))
        single = predictor.predict_array(image, spacing, origin=origin, direction=direction, probabilities=True)
        with_channel = predictor.predict_array(image[None], spacing)
        for pred in (single, from_stream, with_channel):
            assert pred.segmentation.shape == image.shape
            np.testing.assert_array_equal(pred.segmentation, sitk.GetArrayFromImage(written))
        np.testing.assert_array_equal(single.probabilities, from_stream.probabilities)
        saved = np.load(tmp_path / "files" / f"{case}.npz")["probabilities"]
        np.testing.assert_allclose(single.probabilities, saved, atol=1e-3)  # the file holds float16


@pytest.mark.parametrize(
    "image_shape, spacing, message",
    [
        ((2, 20, 30, 30), (1.0, 1.0, 1.0), "does not fit 3 spacing values and 1 channel"),
        ((20, 30, 30), (1.0, 1.0), "does not fit 2 spacing values"),
        ((20, 30, 30), (1.0, 0.0, 1.0), "not 2 or 3 positive voxel sizes"),
    ],
)
def test_wrong_arrays_are_one_line_errors(run, image_shape, spacing, message):
    predictor = voxseg.Predictor.from_run(run, device="cpu", tta=False)
    with pytest.raises(ValueError, match=re.escape(message)):
        predictor.predict_array(np.zeros(image_shape, dtype=np.float32), spacing)
    with pytest.raises(ValueError, match="origin needs 3 values"):
        predictor.predict_array(np.zeros((20, 30, 30), dtype=np.float32), (1.0, 1.0, 1.0), origin=(0.0, 0.0))


def test_docstring_examples_run(run, demo_dataset, tmp_path, monkeypatch):
    """Each public API docstring's example, run in pipeline order on the demo data."""
    import torch

    from voxseg import api
    from voxseg.inference import cohort, onnx_backend, package
    from voxseg.inference.predictor import Predictor

    monkeypatch.chdir(tmp_path)
    image_file = demo_dataset / "imagesTs" / "demo_004_0000.nii.gz"
    namespace = {
        "voxseg": voxseg,
        "torch": torch,
        "Path": Path,
        "tmp": tmp_path,
        "dataset": demo_dataset,
        "run": run,
        "images": demo_dataset / "imagesTs",
        "image_file": image_file,
        "image": sitk.GetArrayFromImage(sitk.ReadImage(str(image_file))),
        "predictor": Predictor.from_run(run, device="cpu", tta=False),
        "export_onnx": onnx_backend.export_onnx,
        "OnnxNetwork": onnx_backend.OnnxNetwork,
    }
    documented = [
        api.plan,
        api.preprocess,
        api.load_settings,
        api.train,
        cohort.predict,
        api.evaluate,
        Predictor.from_run,
        Predictor.predict_array,
        Predictor.predict_arrays,
        Predictor.predict_files,
        package.export_model,
        package.install_model,
    ]
    try:
        import onnxruntime  # noqa: F401

        documented += [onnx_backend.export_onnx, onnx_backend.OnnxNetwork]
    except ImportError:
        pass  # the ONNX examples need the optional extra (tests/test_onnx.py skips likewise)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for obj in documented:
        assert "Args:" in (obj.__doc__ or "") and "Example:" in obj.__doc__, f"{obj.__qualname__}: no Args/Example"
        tests = doctest.DocTestFinder(recurse=False).find(obj, obj.__qualname__, globs=dict(namespace))
        assert tests and tests[0].examples, f"{obj.__qualname__}: no runnable example"
        for t in tests:
            runner.run(t)
    assert runner.failures == 0, f"{runner.failures} docstring example(s) failed, see the output above"


@pytest.mark.slow
def test_python_api_page_runs_as_a_script(tmp_path):
    """docs/python-api.md's code blocks, in order, as one plain script (no __main__ guard)."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 6
    out = _python("\n".join(blocks), tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "validation Dice" in out.stdout and "case(s) predicted" in out.stdout and "does not fit" in out.stdout
    assert (tmp_path / "predictions" / "demo_005.nii.gz").is_file() and (
        tmp_path / "predictions_one" / "demo_004.nii.gz"
    ).is_file()
    assert (tmp_path / "model.zip").is_file() and (tmp_path / "installed_model" / "manifest.json").is_file()
