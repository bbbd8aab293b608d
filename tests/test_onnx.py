"""ONNX: `voxseg export --onnx` and `voxseg predict --backend onnx` give torch's probabilities; the graph has
dynamic batch and spatial axes, the stated opset and one output per head."""

from __future__ import annotations

import dataclasses
import json
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from voxseg.cli.main import main
from voxseg.inference.predictor import Predictor
from voxseg.model.checkpoint import load_checkpoint, network_from_meta
from voxseg.training.run import train
from voxseg.training.settings import load_settings

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the optional extra: pip install 'voxseg[onnx]')")
onnx = pytest.importorskip("onnx", reason="onnx is not installed (the optional extra: pip install 'voxseg[onnx]')")


@pytest.fixture(scope="module")
def run(tiny_work):
    settings = load_settings(
        None,
        [
            "training.epochs=1",
            "training.iterations_per_epoch=3",
            "training.val_iterations=0",
            "training.final_validation=false",
            "sampling.workers=0",
        ],
    )
    return train(tiny_work, "3d_fullres", "all", settings, device="cpu", name="onnx").parent


@pytest.fixture(scope="module")
def onnx_zip(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "model.zip"
    assert main(["export", str(run), "-o", str(out), "--onnx"]) == 0
    return out


def test_onnx_runtime_predicts_torch_probabilities(onnx_zip, demo_dataset):
    with_torch = Predictor.from_run(onnx_zip, device="cpu", precision="fp32")  # ONNX Runtime runs fp32
    with_onnx = Predictor.from_run(onnx_zip, device="cpu", backend="onnx")
    assert type(with_onnx.groups[0].networks[0]).__name__ == "OnnxNetwork"
    for path in sorted((demo_dataset / "imagesTs").glob("*_0000.nii.gz")):
        itk = sitk.ReadImage(str(path))
        image, spacing = sitk.GetArrayFromImage(itk), itk.GetSpacing()[::-1]
        a = with_torch.predict_array(image, spacing, probabilities=True)  # with mirroring: 8 passes per tile
        b = with_onnx.predict_array(image, spacing, probabilities=True)
        assert a.probabilities.shape == b.probabilities.shape == (3, *image.shape)
        assert np.abs(a.probabilities - b.probabilities).max() < 1e-4
        top = np.sort(a.probabilities, axis=0)
        near_tie = (top[-1] - top[-2]) < 1e-3
        assert np.all((a.segmentation == b.segmentation) | near_tie), "labels differ only where two classes tie"
        assert np.mean(a.segmentation == b.segmentation) > 0.999


def test_graph_has_dynamic_axes_the_stated_opset_and_torch_outputs(run, onnx_zip):
    with zipfile.ZipFile(onnx_zip) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        data = zf.read(f"models/{run.name}/fold_all/checkpoint_final.onnx")
    assert manifest["onnx"]["opset"] == 17 and manifest["onnx"]["max_abs_logit_difference_vs_torch"] < 1e-3
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "z", "y", "x"]
    assert [o.name for o in model.graph.output] == ["seg"]

    ckpt = load_checkpoint(run / "fold_all" / "checkpoint_final.pt")
    net = network_from_meta(ckpt["meta"])
    net.load_state_dict(ckpt["trainer"]["network"])
    x = torch.randn(3, 1, 24, 48, 40)  # neither the patch (16, 32, 32) nor its batch size
    with torch.inference_mode():
        expected = net.eval()(x)["seg"][0].numpy()
    (got,) = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(["seg"], {"image": x.numpy()})
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_every_head_becomes_an_output(run):
    from voxseg.inference.onnx_backend import OnnxNetwork, export_onnx
    from voxseg.model.build import NetworkSpec, build_from_spec
    from voxseg.model.config import HeadSettings

    meta = load_checkpoint(run / "fold_all" / "checkpoint_final.pt")["meta"]
    spec = NetworkSpec.from_json(meta["network_spec"])
    spec = dataclasses.replace(spec, heads=(HeadSettings(name="boundary", target="boundary"),))
    torch.manual_seed(0)
    net = build_from_spec(spec, deep_supervision=False).eval()
    data, diff = export_onnx({**meta, "network_spec": spec.to_json()}, net.state_dict())
    assert diff < 1e-3
    x = torch.randn(2, 1, 16, 32, 32)
    out = OnnxNetwork(data, torch.device("cpu"))(x)
    assert list(out) == ["seg", "boundary"]
    with torch.inference_mode():
        ref = net(x)
    for name in out:
        torch.testing.assert_close(out[name][0], ref[name][0], atol=1e-4, rtol=1e-4)


def test_cli_backend_onnx_and_its_errors(run, onnx_zip, demo_dataset, tmp_path, capsys):
    images = demo_dataset / "imagesTs"
    common = ["-i", str(images), "--device", "cpu", "--no-tta"]
    assert main(["predict", "-m", str(onnx_zip), "-o", str(tmp_path / "onnx"), "--backend", "onnx", *common]) == 0
    assert main(["predict", "-m", str(onnx_zip), "-o", str(tmp_path / "torch"), *common, "--precision", "fp32"]) == 0
    for seg in sorted((tmp_path / "torch").iterdir()):
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(d / seg.name))) for d in (tmp_path / "torch", tmp_path / "onnx"))
        assert np.mean(a == b) > 0.999

    assert main(["export", str(run), "-o", str(tmp_path / "plain.zip")]) == 0
    capsys.readouterr()
    for model, message in (
        (tmp_path / "plain.zip", "the zip holds no ONNX networks"),
        (run, "no ONNX network beside the checkpoint"),
    ):
        assert main(["predict", "-m", str(model), "-o", str(tmp_path / "x"), "--backend", "onnx", *common]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err and "--onnx" in err
