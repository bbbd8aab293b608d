import shutil

import numpy as np
import pytest
import torch

from voxseg.data.io import read_image
from voxseg.inference.cohort import predict
from voxseg.inference.models import ModelGroup
from voxseg.inference.predictor import Predictor
from voxseg.inference.restore import restore_shape
from voxseg.plans import load_plans
from voxseg.preprocessing.preprocess import preprocess_case, restore_channels
from voxseg.training.run import train
from voxseg.training.settings import load_settings


@pytest.fixture(scope="module")
def trained(tiny_work):
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
    return train(tiny_work, "3d_fullres", "all", settings, device="cpu", name="predictor").parent


@pytest.mark.slow
def test_predictions_keep_the_input_geometry_on_real_scans(trained, shared_data, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    for case in ("breast1", "brain2"):  # LPS, anisotropic; brain2 has a flipped axis
        shutil.copy(shared_data / "pyradiomics" / f"{case}_image.nrrd", inp / f"{case}_0000.nrrd")
    (inp / "broken_0000.nrrd").write_bytes(b"not an image")
    result = predict([trained], inp, tmp_path / "out", tta=False, device="cpu", progress=False, save_probabilities=True)
    assert list(result.failed) == ["broken"], "an unreadable case is reported and skipped, the others are written"
    assert sorted(result.written) == ["brain2", "breast1"]
    for case in ("breast1", "brain2"):
        seg, g_out = read_image(tmp_path / "out" / f"{case}.nrrd")
        img, g_in = read_image(inp / f"{case}_0000.nrrd")
        assert seg.shape == img.shape
        assert g_out.spacing == pytest.approx(g_in.spacing, rel=1e-6)
        assert g_out.origin == pytest.approx(g_in.origin, abs=1e-4)
        assert g_out.direction == pytest.approx(g_in.direction, abs=1e-6)
        assert set(np.unique(seg)) <= {0, 1, 2}
        probs = np.load(tmp_path / "out" / f"{case}.npz")["probabilities"]
        assert probs.shape == (3, *img.shape)
        # probabilities are stored as float16: near-ties may round either way
        assert (probs.astype(np.float32).argmax(0) == seg).mean() > 0.995


def test_device_restore_matches_numpy_restore(tiny_work, demo_dataset):
    from voxseg.data.io import read_case_images
    from voxseg.data.spec import load_dataset

    spec = load_dataset(demo_dataset)
    images, geometry = read_case_images(spec.training[0].images)
    plan = load_plans(tiny_work)
    image, _, props = preprocess_case(images, geometry, plan, "3d_fullres")
    x = torch.from_numpy(image[0])
    probs = torch.softmax(torch.stack([torch.zeros_like(x), 3 * x, -3 * x]), 0)  # smooth, like a network's
    ours = restore_shape(probs, props, fill=[1.0, 0.0, 0.0]).numpy()
    ref = restore_channels(probs.numpy(), props, order=1, fill=[1.0, 0.0, 0.0])
    assert ours.shape == ref.shape == (3, *images.shape[1:])
    assert (ours.argmax(0) == ref.argmax(0)).mean() > 0.97


def test_fold_ensemble_averages_probabilities(trained, tiny_work, demo_dataset):
    from voxseg.data.spec import load_dataset
    from voxseg.inference.models import load_models

    spec = load_dataset(demo_dataset)
    (group,) = load_models([trained], None, "final", torch.device("cpu"))
    net = group.networks[0]
    twin = load_models([trained], None, "final", torch.device("cpu"))[0].networks[0]
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    images, geometry = __import__("voxseg.data.io", fromlist=["read_case_images"]).read_case_images(spec.test[0].images)
    single = [Predictor([ModelGroup(group.plan, group.config_name, [m])], torch.device("cpu"), tta=False) for m in (net, twin)]
    both = Predictor([ModelGroup(group.plan, group.config_name, [net, twin])], torch.device("cpu"), tta=False)
    p = [s.predict_probabilities(s.preprocess(images, geometry)) for s in single]
    avg = both.predict_probabilities(both.preprocess(images, geometry))
    torch.testing.assert_close(avg, (p[0] + p[1]) / 2, rtol=1e-4, atol=1e-5)


def test_batched_tta_prediction_equals_no_tile_batching(trained, demo_dataset, tmp_path):
    a = predict([trained], demo_dataset / "imagesTs", tmp_path / "a", tta=True, tile_batch=1, device="cpu", progress=False)
    b = predict([trained], demo_dataset / "imagesTs", tmp_path / "b", tta=True, tile_batch=8, device="cpu", progress=False)
    assert not a.failed and not b.failed and a.written == b.written
    for f in (tmp_path / "a").glob("*.nii.gz"):
        np.testing.assert_array_equal(read_image(f)[0], read_image(tmp_path / "b" / f.name)[0])


def test_compile_choice_follows_the_network_work():
    from voxseg.inference.compiled import COMPILE_MIN_VOXELS, worth_compiling

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert worth_compiling("auto", cpu, COMPILE_MIN_VOXELS) and not worth_compiling("auto", cpu, COMPILE_MIN_VOXELS - 1)
    assert not worth_compiling("auto", gpu, 10 * COMPILE_MIN_VOXELS), "auto compiles on the CPU only (CUDA unmeasured)"
    assert worth_compiling("on", cpu, 1) and not worth_compiling("off", cpu, 10**12)


def test_unknown_compile_choice_is_refused(trained):
    from voxseg.errors import InputError

    with pytest.raises(InputError, match="compile"):
        Predictor.from_run(trained, device="cpu", compile="always")


@pytest.mark.slow
def test_compiled_prediction_equals_eager(trained, demo_dataset):
    from voxseg.data.io import read_case_images
    from voxseg.data.spec import load_dataset
    from voxseg.inference.compiled import CompiledNetwork

    images, geometry = read_case_images(load_dataset(demo_dataset).test[0].images)
    eager = Predictor.from_run(trained, device="cpu", tta=False, precision="fp32", compile="off")
    compiled = Predictor.from_run(trained, device="cpu", tta=False, precision="fp32", compile="on")
    a = eager.predict_prepared(eager.preprocess(images, geometry), probabilities=True)
    b = compiled.predict_prepared(compiled.preprocess(images, geometry), probabilities=True)
    assert isinstance(compiled.groups[0].networks[0], CompiledNetwork) and not compiled.groups[0].networks[0].failed
    assert not isinstance(eager.groups[0].networks[0], CompiledNetwork)
    torch.testing.assert_close(torch.as_tensor(b.probabilities), torch.as_tensor(a.probabilities), rtol=1e-3, atol=1e-4)
