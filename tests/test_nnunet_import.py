"""`voxseg import-nnunet`: nnU-Net v2 model folders become voxseg runs that predict what nnU-Net predicts.

Always: plans conversion, refusals, the weight renaming checked against nnU-Net's key names
(written out below from dynamic_network_architectures), nnU-Net's Gaussian map and export
resampling, and import + `voxseg predict` of a model folder laid out like nnU-Net's. With the
reference environment (benchmarks/.refenv): nnU-Net's own networks reproduced to float precision,
and a small nnU-Net model trained on CPU predicted by both sides (models cached in a temp folder by
benchmarks/bench_import.py; the first run trains them, about a minute).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from voxseg.cli.main import main
from voxseg.errors import CheckpointError, InputError
from voxseg.inference.models import load_models
from voxseg.inference.restore import resample_logits_back
from voxseg.inference.sliding_window import gaussian_importance, nnunet_importance, sliding_window
from voxseg.model.build import NetworkSpec, build_from_spec
from voxseg.nnunet import import_nnunet
from voxseg.nnunet.plans import convert_plans, read_labels
from voxseg.nnunet.weights import convert_state_dict, module_pairs
from voxseg.preprocessing.resample import coarse_axis_for, resample_channels

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
REFENV_PYTHON = BENCH / ".refenv" / "bin" / "python"
needs_reference = pytest.mark.skipif(
    not REFENV_PYTHON.exists(), reason="nnU-Net reference environment missing (run benchmarks/setup_reference.sh)"
)


def architecture(cls: str = "PlainConvUNet", dims: int = 3, features=(8, 16, 32), blocks=(1, 1, 2), decoder=(1, 2)) -> dict:
    n = len(features)
    strides = [[1] * dims] + [[2] * dims] * (n - 1)
    if dims == 3:
        strides[1] = [1, 2, 2]  # an anisotropic first pooling, as nnU-Net plans for thick slices
    kernels = [[1, 3, 3] if dims == 3 else [3, 3]] + [[3] * dims] * (n - 1)
    return {
        "network_class_name": f"dynamic_network_architectures.architectures.unet.{cls}",
        "arch_kwargs": {
            "n_stages": n,
            "features_per_stage": list(features),
            "conv_op": f"torch.nn.modules.conv.Conv{dims}d",
            "kernel_sizes": kernels,
            "strides": strides,
            ("n_conv_per_stage" if cls == "PlainConvUNet" else "n_blocks_per_stage"): list(blocks),
            "n_conv_per_stage_decoder": list(decoder),
            "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def nnunet_plans(cls: str = "PlainConvUNet") -> dict:
    resampling = {
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
    }
    fullres = {
        "data_identifier": "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": [8, 32, 32],
        "median_image_size_in_voxels": [12.0, 32.0, 31.5],
        "spacing": [3.0, 0.8, 0.8],
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        **resampling,
        "architecture": architecture(cls),
        "batch_dice": False,
    }
    return {
        "dataset_name": "Dataset902_Import",
        "plans_name": "nnUNetPlans",
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "label_manager": "LabelManager",
        "configurations": {
            "3d_fullres": fullres,
            "3d_lowres": {"inherits_from": "3d_fullres", "spacing": [3.0, 1.6, 1.6], "next_stage": "3d_cascade_fullres"},
            "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
        },
        "foreground_intensity_properties_per_channel": {
            "0": {
                "mean": 91.3,
                "std": 27.6,
                "percentile_00_5": 25.0,
                "percentile_99_5": 180.0,
                "max": 207.0,
                "min": 6.0,
                "median": 91.0,
            }
        },
    }


DATASET_JSON = {
    "channel_names": {"0": "CT"},
    "labels": {"background": 0, "organ": 1, "lesion": 2},
    "numTraining": 4,
    "file_ending": ".nii.gz",
}


def nnunet_state(plans: dict, config: str = "3d_fullres", seed: int = 0) -> tuple[dict, torch.nn.Module]:
    """A network with random weights and its state dict under nnU-Net's names, aliases included."""
    converted = convert_plans(plans, DATASET_JSON, config)
    network = converted.plan.configuration(config).network
    torch.manual_seed(seed)
    net = build_from_spec(NetworkSpec(network, 1, 3, converted.model), deep_supervision=False).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    theirs_of = dict(module_pairs(network))
    state = {}
    for key, value in net.state_dict().items():
        module, _, leaf = key.rpartition(".")
        name = f"{theirs_of[module]}.{leaf}"
        state[name] = value.clone()
        if name.startswith("encoder."):
            state[f"decoder.{name}"] = value.clone()  # nnU-Net's decoder keeps the encoder
        if name.rpartition(".")[0].endswith(".conv"):
            state[name.replace(".conv.", ".all_modules.0.")] = value.clone()
    return state, net


def write_model(
    folder: Path, plans: dict, state: dict, *, folds=("0",), trainer="nnUNetTrainer", config="3d_fullres", mirror=(0, 1, 2)
) -> Path:
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(DATASET_JSON))
    for fold in folds:
        (folder / f"fold_{fold}").mkdir()
        torch.save(
            {
                "network_weights": state,
                "trainer_name": trainer,
                "current_epoch": 1000,
                "init_args": {"configuration": config, "fold": fold},
                "inference_allowed_mirroring_axes": mirror,
            },
            folder / f"fold_{fold}" / "checkpoint_final.pth",
        )
    return folder


# --- names and plans ----------------------------------------------------------------------------


def test_module_names_follow_dynamic_network_architectures():
    plain = convert_plans(nnunet_plans(), DATASET_JSON, "3d_fullres").plan.configurations["3d_fullres"].network

    def cn(p: str) -> list[str]:  # ConvDropoutNormReLU's named parts
        return [f"{p}.conv", f"{p}.norm"]

    assert [t for _, t in module_pairs(plain)] == [
        *cn("encoder.stages.0.0.convs.0"),
        *cn("encoder.stages.1.0.convs.0"),
        *cn("encoder.stages.2.0.convs.0"),
        *cn("encoder.stages.2.0.convs.1"),
        "decoder.transpconvs.0",
        *cn("decoder.stages.0.convs.0"),
        "decoder.seg_layers.0",
        "decoder.transpconvs.1",
        *cn("decoder.stages.1.convs.0"),
        *cn("decoder.stages.1.convs.1"),
        "decoder.seg_layers.1",
    ]
    resenc = (
        convert_plans(nnunet_plans("ResidualEncoderUNet"), DATASET_JSON, "3d_fullres").plan.configurations["3d_fullres"].network
    )

    def block(p: str) -> list[str]:  # BasicBlockD
        return [*cn(f"{p}.conv1"), *cn(f"{p}.conv2")]

    assert [t for _, t in module_pairs(resenc)] == [
        *cn("encoder.stem.convs.0"),
        *block("encoder.stages.0.blocks.0"),
        *block("encoder.stages.1.blocks.0"),
        "encoder.stages.1.blocks.0.skip.1.conv",
        "encoder.stages.1.blocks.0.skip.1.norm",
        *block("encoder.stages.2.blocks.0"),
        "encoder.stages.2.blocks.0.skip.1.conv",
        "encoder.stages.2.blocks.0.skip.1.norm",
        *block("encoder.stages.2.blocks.1"),
        "decoder.transpconvs.0",
        *cn("decoder.stages.0.convs.0"),
        "decoder.seg_layers.0",
        "decoder.transpconvs.1",
        *cn("decoder.stages.1.convs.0"),
        *cn("decoder.stages.1.convs.1"),
        "decoder.seg_layers.1",
    ]
    for network in (plain, resenc):  # every voxseg side exists in the network voxseg builds
        names = dict(build_from_spec(NetworkSpec(network, 1, 3)).named_modules())
        assert all(ours in names for ours, _ in module_pairs(network))


def test_plans_convert_to_a_voxseg_plan():
    converted = convert_plans(nnunet_plans(), DATASET_JSON, "3d_fullres")
    plan, cfg = converted.plan, converted.plan.configurations["3d_fullres"]
    norm = plan.normalization[0]
    assert (norm.scheme, norm.mean, norm.std, norm.lower, norm.upper) == ("ct", 91.3, 27.6, 25.0, 180.0)
    assert plan.class_names == ["background", "organ", "lesion"] and plan.num_classes == 3 and not plan.has_ignore
    assert cfg.patch_size == [8, 32, 32] and cfg.spacing == [3.0, 0.8, 0.8] and cfg.median_shape == [12, 32, 32]
    # nnU-Net counts decoder stages from the bottleneck, voxseg from full resolution
    assert cfg.network["n_conv_per_stage_decoder"] == [2, 1]
    assert cfg.deep_supervision_scales == [[1.0, 1.0, 1.0], [1.0, 0.5, 0.5]]
    assert converted.export_order == 1 and converted.model.norm == "instance"
    lowres = convert_plans(nnunet_plans(), DATASET_JSON, "3d_lowres").plan.configurations["3d_lowres"]
    assert lowres.spacing == [3.0, 1.6, 1.6] and lowres.patch_size == [8, 32, 32]  # inherited from 3d_fullres


def test_old_plans_format_converts_like_the_architecture_block():
    plans = nnunet_plans()
    old = {k: v for k, v in plans["configurations"]["3d_fullres"].items() if k != "architecture"}
    kw = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    old.update(
        UNet_class_name="PlainConvUNet",
        UNet_base_num_features=8,
        unet_max_num_features=32,
        n_conv_per_stage_encoder=kw["n_conv_per_stage"],
        n_conv_per_stage_decoder=kw["n_conv_per_stage_decoder"],
        conv_kernel_sizes=kw["kernel_sizes"],
        pool_op_kernel_sizes=kw["strides"],
    )
    old_plans = {**plans, "configurations": {"3d_fullres": old}}
    new = convert_plans(plans, DATASET_JSON, "3d_fullres").plan.configurations["3d_fullres"].network
    assert convert_plans(old_plans, DATASET_JSON, "3d_fullres").plan.configurations["3d_fullres"].network == new


def test_labels_follow_nnunet_label_manager():
    regions = read_labels({"labels": {"background": 0, "whole": [1, 2], "lesion": 2}, "regions_class_order": [1, 2]})
    assert regions.regions == [[1, 2], [2]] and regions.region_names == ["whole", "lesion"]  # an int is a region too
    assert regions.regions_class_order == [1, 2] and regions.output_channels == 2
    classes = read_labels({"labels": {"background": 0, "a": 1, "b": 2, "ignore": 3}})
    assert classes.output_channels == 3 and classes.has_ignore and classes.class_names == ["background", "a", "b"]


def _edit(path: str, value):
    def apply(plans: dict, dataset: dict) -> None:
        target, *keys = path.split(".")
        node = dataset if target == "dataset" else plans
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value

    return apply


CFG = "plans.configurations.3d_fullres"
ARCH = f"{CFG}.architecture.arch_kwargs"


@pytest.mark.parametrize(
    "edit, config, expected",
    [
        (None, "3d_cascade_fullres", "cascade stage"),
        (
            _edit(f"{CFG}.architecture.network_class_name", "dynamic_network_architectures.architectures.unet.ResidualUNet"),
            "3d_fullres",
            "network class",
        ),
        (_edit(f"{ARCH}.nonlin", "torch.nn.ReLU"), "3d_fullres", "nonlinearity"),
        (_edit(f"{ARCH}.nonlin_kwargs", {"negative_slope": 0.1}), "3d_fullres", "nonlinearity"),
        (_edit(f"{ARCH}.norm_op_kwargs", {"eps": 1e-3, "affine": True}), "3d_fullres", "InstanceNorm keywords"),
        (_edit(f"{ARCH}.conv_bias", False), "3d_fullres", "conv_bias"),
        (_edit(f"{ARCH}.nonlin_first", True), "3d_fullres", "nonlin_first"),
        (_edit(f"{ARCH}.squeeze_excitation", True), "3d_fullres", "squeeze_excitation"),
        (_edit(f"{ARCH}.kernel_sizes", [[1, 3, 3], [4, 4, 4], [3, 3, 3]]), "3d_fullres", "even kernel"),
        (
            _edit(f"{CFG}.resampling_fn_data_kwargs", {"is_seg": False, "order": 3, "order_z": 1, "force_separate_z": None}),
            "3d_fullres",
            "resampling_fn_data",
        ),
        (_edit(f"{CFG}.resampling_fn_data", "resample_torch_fornnunet"), "3d_fullres", "resampling_fn_data"),
        (
            _edit(
                f"{CFG}.resampling_fn_probabilities_kwargs", {"is_seg": False, "order": 2, "order_z": 0, "force_separate_z": None}
            ),
            "3d_fullres",
            "order 2",
        ),
        (_edit(f"{CFG}.normalization_schemes", ["MyNormalization"]), "3d_fullres", "normalisation scheme"),
        (_edit(f"{CFG}.preprocessor_name", "MyPreprocessor"), "3d_fullres", "preprocessor"),
        (_edit("plans.image_reader_writer", "NibabelIOWithReorient"), "3d_fullres", "image reader"),
        (_edit("dataset.labels", {"background": 0, "a": 1, "b": 3}), "3d_fullres", "not consecutive"),
    ],
)
def test_models_voxseg_would_predict_differently_are_refused(edit, config, expected):
    plans, dataset = nnunet_plans(), copy.deepcopy(DATASET_JSON)
    if edit is not None:
        edit(plans, dataset)
    with pytest.raises(CheckpointError, match="cannot reproduce") as err:
        convert_plans(plans, dataset, config, path="plans.json")
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_weights_that_do_not_fit_the_plans_are_refused():
    plans = nnunet_plans()
    state, net = nnunet_state(plans)
    network = convert_plans(plans, DATASET_JSON, "3d_fullres").plan.configurations["3d_fullres"].network
    for broken, what in [
        ({k: v for k, v in state.items() if k != "decoder.seg_layers.1.bias"}, "1 missing"),
        ({**state, "encoder.stages.0.0.convs.0.se.weight": torch.zeros(1)}, "1 unexpected"),
        ({**state, "decoder.seg_layers.1.weight": torch.zeros(4, 8, 1, 1, 1)}, "1 with other shapes"),
    ]:
        with pytest.raises(CheckpointError, match=what):
            convert_state_dict(broken, net, network)
    converted = convert_state_dict(state, net, network)
    assert converted.keys() == net.state_dict().keys()


# --- inference recipe pieces --------------------------------------------------------------------


def test_nnunet_gaussian_is_a_sampled_gaussian_peaking_at_half_the_patch():
    patch = (8, 12, 9)
    g = nnunet_importance(patch).numpy()
    assert g.dtype == np.float32 and g.min() > 0 and g.max() == 10.0
    assert np.unravel_index(g.argmax(), g.shape) == (4, 6, 4)  # p // 2: one past the centre on even axes
    assert np.array_equal(g, g.astype(np.float16).astype(np.float32))  # half-precision values, as nnU-Net keeps them
    sigma = 12 / 8  # along axis 1 the map is exp(-x^2 / 2 sigma^2) up to float16 rounding
    line = g[4, :, 4] / 10
    x = np.arange(12) - 6
    assert np.allclose(line, np.exp(-0.5 * (x / sigma) ** 2), rtol=2e-3, atol=1e-4)
    assert not np.allclose(g / 10, gaussian_importance(patch).numpy(), atol=1e-3)  # ours is centred at (p-1)/2


def test_sliding_window_with_nnunet_weights_and_half_accumulation():
    image = torch.randn(1, 20, 24)

    def pointwise(x: torch.Tensor) -> torch.Tensor:  # any weighting averages to the input itself
        return torch.cat([x, 2 * x], 1)

    for gaussian in ("centred", "nnunet"):
        out = sliding_window(pointwise, image, (8, 16), 2, gaussian=gaussian)
        assert out.dtype == torch.float32 and torch.allclose(out, torch.cat([image, 2 * image]), atol=1e-5)

    # float16 sums (nnU-Net's) are exact for outputs that scale the weights by powers of two
    def constant(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.ones_like(x), 2 * torch.ones_like(x)], 1)

    out = sliding_window(constant, image, (8, 16), 2, gaussian="nnunet", accumulate_dtype=torch.float16)
    assert out.dtype == torch.float16 and torch.equal(
        out.float(), torch.cat([torch.ones_like(image), 2 * torch.ones_like(image)])
    )


def test_separate_z_axis_follows_nnunet():
    assert coarse_axis_for((3.5, 1.0, 1.0), (1.0, 1.0, 1.0)) == 0
    assert coarse_axis_for((3.0, 1.0, 1.0), (1.0, 1.0, 1.0)) is None  # more than 3x, not 3x
    assert coarse_axis_for((1.0, 1.0, 1.0), (1.0, 1.0, 4.0)) == 2  # the target spacing decides when the source is isotropic
    assert coarse_axis_for((3.0, 3.0, 0.5), (1.0, 1.0, 1.0)) is None  # two coarsest axes: no single coarse axis
    assert coarse_axis_for((3.0, 3.0, 0.5), (4.0, 1.0, 1.0)) is None  # and the source decides, as in nnU-Net
    assert coarse_axis_for((1.0, 1.0, 1.2), (1.0, 1.0, 1.0)) is None


def test_logits_resampled_back_like_nnunet_export():
    logits = torch.randn(3, 4, 10, 12, dtype=torch.float16)
    props = {"shape_after_crop": [9, 15, 12], "spacing": [3.0, 0.8, 0.8], "original_spacing": [1.0, 0.5, 0.8]}
    out = resample_logits_back(logits, props, order=1)
    # nnU-Net's export checks the preprocessed spacing first: axis 0 is coarse there (3.0 / 0.8 > 3)
    expected = resample_channels(logits.float().numpy(), (9, 15, 12), order=1, nearest_axis=0)
    assert out.dtype == torch.float16 and torch.equal(out, torch.from_numpy(expected).half())
    assert resample_logits_back(logits, {**props, "shape_after_crop": [4, 10, 12]}) is logits


# --- the whole import ---------------------------------------------------------------------------


@pytest.mark.slow
def test_import_then_predict_like_any_run(tmp_path, demo_dataset):
    plans = nnunet_plans()
    state, net = nnunet_state(plans)
    model = write_model(
        tmp_path / "nnUNetTrainerDA5__nnUNetPlans__3d_fullres",
        plans,
        state,
        folds=("0", "1"),
        trainer="nnUNetTrainerDA5",
        mirror=(1, 2),
    )
    run = tmp_path / "run"
    assert main(["import-nnunet", str(model), "-o", str(run)]) == 0
    assert sorted(p.name for p in run.glob("fold_*/checkpoint_*.pt")) == ["checkpoint_final.pt"] * 2
    record = json.loads((run / "import.json").read_text())
    assert record["trainer"] == "nnUNetTrainerDA5" and record["folds"] == ["0", "1"]

    (group,) = load_models([run], None, "final", torch.device("cpu"))
    assert group.mirror_axes == (1, 2) and group.recipe["gaussian"] == "nnunet" and len(group.networks) == 2
    x = torch.randn(1, 1, 8, 32, 32)
    with torch.no_grad():
        assert torch.equal(group.networks[0](x)["seg"][0], net(x)["seg"][0])

    out = tmp_path / "pred"
    assert main(["predict", "-m", str(run), "-i", str(demo_dataset / "imagesTs"), "-o", str(out), "--device", "cpu"]) == 0
    from voxseg.data.io import read_image

    for image in sorted((demo_dataset / "imagesTs").glob("*_0000.nii.gz")):
        seg, _ = read_image(out / image.name.replace("_0000", ""))
        assert seg.shape == read_image(image)[0].shape

    with pytest.raises(InputError, match="already holds an import"):
        import_nnunet(model, run)
    assert import_nnunet(model, run, folds=["1"], overwrite=True).folds == ["1"]
    assert [p.name for p in run.glob("fold_*")] == ["fold_1"]
    with pytest.raises(InputError, match="not an imported nnU-Net model"):
        import_nnunet(model, demo_dataset)


def test_batchnorm_trainer_is_detected_from_its_weights(tmp_path):
    plans = nnunet_plans()
    state, _ = nnunet_state(plans)
    for key in [k for k in state if k.endswith(".norm.weight")]:  # nnUNetTrainerBN: BatchNorm with running stats
        base = key[: -len("weight")]
        n = state[key].shape[0]
        state.update(
            {
                f"{base}running_mean": torch.randn(n),
                f"{base}running_var": torch.rand(n) + 0.5,
                f"{base}num_batches_tracked": torch.tensor(7),
            }
        )
    run = tmp_path / "run"
    import_nnunet(write_model(tmp_path / "bn", plans, state, trainer="nnUNetTrainerBN"), run)
    (group,) = load_models([run], None, "final", torch.device("cpu"))
    norms = [m for m in group.networks[0].modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert norms and torch.equal(norms[0].running_var, state["encoder.stages.0.0.convs.0.norm.running_var"])


# --- against the reference nnU-Net ---------------------------------------------------------------


def _bench_import():
    sys.path.insert(0, str(BENCH))
    import bench_import

    return bench_import


@needs_reference
@pytest.mark.parametrize(
    "cls, dims", [("PlainConvUNet", 3), ("ResidualEncoderUNet", 3), ("PlainConvUNet", 2), ("ResidualEncoderUNet", 2)]
)
def test_networks_compute_what_nnunet_networks_compute(tmp_path, cls, dims):
    from voxseg.nnunet.plans import network_from_architecture

    sys.path.insert(0, str(BENCH))
    import common

    arch = architecture(cls, dims, features=(4, 8, 16), blocks=(1, 2, 2), decoder=(2, 1))
    shape = [8, 16, 16] if dims == 3 else [16, 24]
    (tmp_path / "spec.json").write_text(json.dumps({"architecture": arch, "in_channels": 2, "out_channels": 3, "shape": shape}))
    common.run_reference_script(
        REFENV_PYTHON, "import_check.py", "network", tmp_path / "spec.json", tmp_path / "out", timeout=300
    )
    network, model = network_from_architecture(arch, dims)
    net = build_from_spec(NetworkSpec(network, 2, 3, model), deep_supervision=False).eval()
    net.load_state_dict(convert_state_dict(torch.load(tmp_path / "out" / "weights.pth"), net, network))
    io = np.load(tmp_path / "out" / "io.npz")
    with torch.no_grad():
        ours = net(torch.from_numpy(io["input"]))["seg"][0].numpy()
    assert np.abs(ours - io["output"]).max() < 1e-4 * max(1.0, np.abs(io["output"]).max())


@needs_reference
@pytest.mark.slow
def test_trained_nnunet_model_predicts_the_same_in_voxseg(tmp_path):
    bench = _bench_import()
    ref = bench.ensure_reference(REFENV_PYTHON, "plain")  # trains once, then cached in a temp folder
    bench.import_and_predict(Path(ref["model_dir"]), Path(ref["raw"]) / "imagesTs", tmp_path / "pred")
    agreement = bench.compare(tmp_path / "pred", Path(ref["pred_dir"]))
    assert agreement["fg_voxels_nnunet"] > 100 and agreement["fg_voxels_ours"] > 100  # not a trivial all-background model
    assert agreement["dice_vs_nnunet"] >= 0.99
    assert agreement["max_prob_diff"] < 2e-3  # ours are saved as float16
