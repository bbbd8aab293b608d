"""nnU-Net v2 ``plans.json`` + ``dataset.json`` -> a voxseg `Plan`, or a refusal naming what differs.

Only what voxseg reproduces exactly is accepted: the SimpleITK reader, the default preprocessor
(transpose -> crop to non-zero -> the five normalisation schemes -> cubic resampling with nnU-Net's
separate-z rule), PlainConvUNet / ResidualEncoderUNet (BasicBlockD) from
``dynamic_network_architectures`` with conv bias, InstanceNorm (affine, eps 1e-5) or BatchNorm,
LeakyReLU(0.01) and odd kernels, and the default label manager (softmax classes or sigmoid regions).
Everything else -- another reader, preprocessor, resampling function or keyword, network class or
keyword, nonlinearity, a cascade stage -- raises one `CheckpointError` line saying what differs.

Semantics checked against nnU-Net 2.8.1 (``plans_handler.py``, ``default_preprocessor.py``,
``default_resampling.py``, ``default_normalization_schemes.py``, ``label_handling.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voxseg.errors import CheckpointError, PlanError
from voxseg.model.config import ModelSettings
from voxseg.model.unet import Topology
from voxseg.plans import ANISOTROPY_RATIO, ConfigurationPlan, Normalization, Plan

SUPPORTED_READERS = ("SimpleITKIO",)
NORMALIZATION_SCHEMES = {
    "CTNormalization": "ct",
    "ZScoreNormalization": "zscore",
    "NoNormalization": "nonorm",
    "RescaleTo01Normalization": "rescale_to_0_1",
    "RGBTo01Normalization": "rgb_to_0_1",
}
RESAMPLING_FN = "resample_data_or_seg_to_shape"
# What voxseg's preprocessing does to images: cubic, nearest along a lone coarse axis ("separate z").
IMAGE_RESAMPLING = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
EXPORT_ORDERS = (0, 1, 3)  # orders voxseg's resampler implements for the logits on export
NETWORK_CLASSES = {"PlainConvUNet": "plain_unet", "ResidualEncoderUNet": "resenc_unet"}
_COMMON_KWARGS = {
    "n_stages",
    "features_per_stage",
    "conv_op",
    "kernel_sizes",
    "strides",
    "n_conv_per_stage_decoder",
    "conv_bias",
    "norm_op",
    "norm_op_kwargs",
    "dropout_op",
    "dropout_op_kwargs",
    "nonlin",
    "nonlin_kwargs",
    "deep_supervision",
}
_CLASS_KWARGS = {
    "PlainConvUNet": {"n_conv_per_stage", "nonlin_first"},
    "ResidualEncoderUNet": {"n_blocks_per_stage", "block", "bottleneck_channels", "stem_channels"},
}
REFUSAL_FIX = "predict this model with nnU-Net itself; voxseg never imports a model it would predict differently"


def refusal(what: str, path: str | Path | None) -> CheckpointError:
    """The one-line error for a model voxseg cannot reproduce exactly."""
    return CheckpointError(f"voxseg cannot reproduce this nnU-Net model exactly: {what}", path=path, fix=REFUSAL_FIX)


@dataclass(frozen=True)
class Labels:
    """dataset.json ``labels`` read the way nnU-Net's LabelManager reads them."""

    num_classes: int
    has_ignore: bool
    class_names: list[str]
    regions: list[list[int]] | None = None
    region_names: list[str] | None = None
    regions_class_order: list[int] | None = None

    @property
    def output_channels(self) -> int:
        return len(self.regions) if self.regions else self.num_classes


def read_labels(dataset_json: dict, path: str | Path | None = None) -> Labels:
    """Classes or regions as nnU-Net sees them: regions as soon as one label is a list of 2+ values.

    Example: ``read_labels({"labels": {"background": 0, "organ": 1}})`` -> 2 classes.
    """
    raw = dataset_json.get("labels")
    if not isinstance(raw, dict) or raw.get("background") != 0:
        raise refusal("dataset.json labels lack 'background': 0", path)
    ignore = raw.get("ignore")
    entries = {k: v for k, v in raw.items() if k != "ignore"}
    region_mode = any(isinstance(v, (list, tuple)) and len(v) > 1 for v in entries.values())
    values = sorted({int(x) for v in entries.values() for x in (v if isinstance(v, (list, tuple)) else [v])})
    if ignore is not None and (not isinstance(ignore, int) or ignore != values[-1] + 1):
        raise refusal(f"ignore label {ignore!r} is not max label + 1 (nnU-Net itself rejects it)", path)
    if not region_mode:
        if values != list(range(len(values))):
            raise refusal(f"label values {values} are not consecutive 0..K-1", path)
        names: dict[int, str] = {}
        for name, v in entries.items():
            names.setdefault(int(v[0] if isinstance(v, (list, tuple)) else v), name)
        return Labels(len(values), ignore is not None, [names[i] for i in range(len(values))])
    regions, region_names = [], []
    for name, v in entries.items():
        members = [int(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
        if set(members) == {0}:  # background is no region
            continue
        regions.append(members)
        region_names.append(name)
    order = dataset_json.get("regions_class_order")
    if not isinstance(order, list) or len(order) != len(regions):
        raise refusal("region labels without one regions_class_order entry per region", path)
    by_value = {int(v): k for k, v in entries.items() if isinstance(v, int)}
    num_classes = len(regions) + 1  # voxseg's convention for region datasets (DatasetSpec.num_classes)
    return Labels(
        num_classes,
        ignore is not None,
        [by_value.get(i, f"class_{i}") for i in range(num_classes)],
        regions,
        region_names,
        [int(c) for c in order],
    )


def resolve_configuration(plans: dict, name: str, path: str | Path | None = None) -> dict:
    """One configuration with ``inherits_from`` resolved and old-format plans given an architecture block."""
    configs = plans.get("configurations", {})
    chain: list[str] = []
    while True:
        if name not in configs:
            raise PlanError(
                f"configuration {name!r} is not in plans.json (has {', '.join(configs)})",
                path=path,
                fix="pass a model folder whose plans.json holds the configuration its checkpoints were trained with",
            )
        if name in chain:
            raise PlanError(
                f"configurations inherit in a circle: {' -> '.join(chain + [name])}",
                path=path,
                fix="fix inherits_from in plans.json",
            )
        chain.append(name)
        parent = configs[name].get("inherits_from")
        if parent is None:
            break
        name = parent
    cfg: dict[str, Any] = {}
    for link in reversed(chain):  # parent first, children override
        cfg.update(configs[link])
    if "architecture" not in cfg:
        cfg["architecture"] = _architecture_from_old_plans(cfg, path)
    return cfg


def _architecture_from_old_plans(cfg: dict, path: str | Path | None) -> dict:
    """Plans written before the ``architecture`` block, converted exactly as nnU-Net 2.8.1 converts them."""
    try:
        cls = cfg["UNet_class_name"]
        dims = len(cfg["patch_size"])
        n = len(cfg["n_conv_per_stage_encoder"])
        blocks_key = "n_conv_per_stage" if cls == "PlainConvUNet" else "n_blocks_per_stage"
        kwargs = {
            "n_stages": n,
            "features_per_stage": [min(cfg["UNet_base_num_features"] * 2**i, cfg["unet_max_num_features"]) for i in range(n)],
            "conv_op": f"torch.nn.modules.conv.Conv{dims}d",
            "kernel_sizes": cfg["conv_kernel_sizes"],
            "strides": cfg["pool_op_kernel_sizes"],
            blocks_key: cfg["n_conv_per_stage_encoder"],
            "n_conv_per_stage_decoder": cfg["n_conv_per_stage_decoder"],
            "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        }
    except (KeyError, TypeError) as e:
        raise refusal(f"plans without an 'architecture' block and without the old U-Net keys ({e})", path) from None
    if cls not in NETWORK_CLASSES:
        raise refusal(f"network class {cls!r} (voxseg reproduces {', '.join(NETWORK_CLASSES)})", path)
    return {"network_class_name": f"dynamic_network_architectures.architectures.unet.{cls}", "arch_kwargs": kwargs}


def _per_stage(value: Any, n: int, dims: int | None = None) -> list:
    """nnU-Net accepts a scalar for every per-stage list (and for each per-axis entry)."""
    items = value if isinstance(value, (list, tuple)) else [value] * n
    if dims is None:
        return [int(v) for v in items]
    return [[int(x) for x in (v if isinstance(v, (list, tuple)) else [v] * dims)] for v in items]


def _last(dotted: str | None) -> str:
    return str(dotted).rsplit(".", 1)[-1]


def network_from_architecture(arch: dict, dims: int, path: str | Path | None = None) -> tuple[dict, ModelSettings]:
    """The plans' ``architecture`` block -> voxseg's ``network`` dict and model settings.

    Example: ``network_from_architecture(cfg["architecture"], 3)`` -> ``({"architecture": "plain_unet", ...}, ModelSettings(...))``
    """
    full_name = str(arch.get("network_class_name", ""))
    cls = _last(full_name)
    if not full_name.startswith("dynamic_network_architectures.") or cls not in NETWORK_CLASSES:
        raise refusal(
            f"network class {full_name!r} (voxseg reproduces dynamic_network_architectures' {' and '.join(NETWORK_CLASSES)})",
            path,
        )
    kw = dict(arch.get("arch_kwargs", {}))
    unknown = sorted(set(kw) - _COMMON_KWARGS - _CLASS_KWARGS[cls])
    if unknown:
        raise refusal(f"{cls} keyword(s) {', '.join(unknown)} that voxseg does not implement", path)
    if kw.get("nonlin_first"):
        raise refusal("nonlin_first=true (conv -> nonlin -> norm); voxseg's blocks are conv -> norm -> nonlin", path)
    if _last(kw.get("block") or "BasicBlockD") != "BasicBlockD":
        raise refusal(f"residual block {kw['block']!r} (voxseg reproduces BasicBlockD)", path)
    if kw.get("bottleneck_channels") is not None:
        raise refusal("bottleneck_channels (BottleneckD blocks)", path)
    conv = _last(kw.get("conv_op"))
    if conv != f"Conv{dims}d":
        raise refusal(f"conv_op {kw.get('conv_op')!r} for a {dims}D patch", path)
    if kw.get("conv_bias") is not True:
        raise refusal("conv_bias=false (voxseg's convolutions always carry a bias)", path)
    norm = _norm(kw.get("norm_op"), kw.get("norm_op_kwargs") or {}, dims, path)
    nonlin = _last(kw.get("nonlin"))
    slope = (kw.get("nonlin_kwargs") or {}).get("negative_slope", 0.01)
    if nonlin != "LeakyReLU" or slope != 0.01:
        raise refusal(f"nonlinearity {kw.get('nonlin')!r} {kw.get('nonlin_kwargs') or {}} (voxseg uses LeakyReLU(0.01))", path)
    try:
        n = int(kw["n_stages"])
        features = _per_stage(kw["features_per_stage"], n)
        blocks = _per_stage(kw["n_conv_per_stage" if cls == "PlainConvUNet" else "n_blocks_per_stage"], n)
        decoder = _per_stage(kw["n_conv_per_stage_decoder"], n - 1)
        kernels = _per_stage(kw["kernel_sizes"], n, dims)
        strides = _per_stage(kw["strides"], n, dims)
    except (KeyError, TypeError, ValueError) as e:
        raise refusal(f"{cls} keywords are incomplete ({e!r})", path) from None
    if kw.get("stem_channels") not in (None, features[0]):
        raise refusal(f"stem_channels={kw['stem_channels']} differs from features_per_stage[0]={features[0]}", path)
    if any(k % 2 == 0 for ks in kernels for k in ks):
        raise refusal(f"even kernel sizes {kernels} (padded differently from voxseg's convolutions)", path)
    network = {
        "architecture": NETWORK_CLASSES[cls],
        "dims": dims,
        "features": features,
        "kernel_sizes": kernels,
        "strides": strides,
        "n_conv_per_stage": blocks,
        # nnU-Net lists decoder stages from the bottleneck up; voxseg indexes them by resolution (0 = full).
        "n_conv_per_stage_decoder": decoder[::-1],
    }
    try:
        Topology.from_network(network)
    except PlanError as e:
        raise refusal(f"inconsistent {cls} keywords ({e.message})", path) from None
    # Dropout is the identity at inference, so a model trained with it predicts the same without it.
    return network, ModelSettings(architecture=None, deep_supervision=False, norm=norm, dropout=0.0)


def _norm(op: str | None, kwargs: dict, dims: int, path) -> str:
    name = _last(op)
    if name == f"InstanceNorm{dims}d":
        if kwargs.get("eps", 1e-5) != 1e-5 or not kwargs.get("affine", False) or kwargs.get("track_running_stats"):
            raise refusal(f"InstanceNorm keywords {kwargs} (voxseg uses eps=1e-5, affine=True, no running stats)", path)
        return "instance"
    if name == f"BatchNorm{dims}d":
        if kwargs.get("eps", 1e-5) != 1e-5 or not kwargs.get("affine", True) or not kwargs.get("track_running_stats", True):
            raise refusal(f"BatchNorm keywords {kwargs} (voxseg uses eps=1e-5, affine=True, running stats)", path)
        return "batch"
    raise refusal(f"norm_op {op!r} (voxseg reproduces InstanceNorm{dims}d and BatchNorm{dims}d)", path)


def _check_resampling(cfg: dict, key: str, expected: dict, path) -> None:
    fn = cfg.get(f"resampling_fn_{key}")
    kwargs = dict(cfg.get(f"resampling_fn_{key}_kwargs") or {})
    threshold = kwargs.pop("separate_z_anisotropy_threshold", ANISOTROPY_RATIO)
    if fn != RESAMPLING_FN or kwargs != expected or threshold != ANISOTROPY_RATIO:
        raise refusal(
            f"resampling_fn_{key} {fn} {cfg.get(f'resampling_fn_{key}_kwargs')} (voxseg reproduces {RESAMPLING_FN} {expected})",
            path,
        )


def _normalization(plans: dict, cfg: dict, n_channels: int, path) -> list[Normalization]:
    schemes, masks = cfg.get("normalization_schemes", []), cfg.get("use_mask_for_norm", [])
    if len(schemes) != n_channels or len(masks) != n_channels:
        raise refusal(f"{len(schemes)} normalisation schemes for {n_channels} input channels", path)
    stats = plans.get("foreground_intensity_properties_per_channel", plans.get("foreground_intensity_properties_by_modality", {}))
    out = []
    for c, (scheme, masked) in enumerate(zip(schemes, masks)):
        if scheme not in NORMALIZATION_SCHEMES:
            raise refusal(
                f"normalisation scheme {scheme!r} for channel {c} (voxseg reproduces {', '.join(NORMALIZATION_SCHEMES)})", path
            )
        if scheme != "CTNormalization":
            out.append(Normalization(NORMALIZATION_SCHEMES[scheme], use_nonzero_mask=bool(masked)))
            continue
        s = stats.get(str(c))
        if not s:
            raise refusal(f"CT normalisation of channel {c} without foreground_intensity_properties_per_channel", path)
        out.append(
            Normalization(
                "ct",
                mean=float(s["mean"]),
                std=float(s["std"]),
                lower=float(s["percentile_00_5"]),
                upper=float(s["percentile_99_5"]),
                use_nonzero_mask=bool(masked),
            )
        )
    return out


def deep_supervision_scales(strides: list[list[int]]) -> list[list[float]]:
    """nnU-Net's target scales: 1 / cumulative stride per stage, the bottleneck left out."""
    return [[float(v) for v in row] for row in (1 / np.cumprod(np.vstack(strides), axis=0))[:-1]]


@dataclass(frozen=True)
class ConvertedPlans:
    plan: Plan
    model: ModelSettings
    export_order: int  # interpolation order nnU-Net resamples the logits back with


def convert_plans(plans: dict, dataset_json: dict, config_name: str, path: str | Path | None = None) -> ConvertedPlans:
    """nnU-Net's plans + dataset.json for one configuration -> voxseg `Plan`; refuses what would predict differently.

    ``path`` (the model folder) is named in errors. Example:
    ``convert_plans(json.load(open("plans.json")), json.load(open("dataset.json")), "3d_fullres").plan``
    """
    reader = dataset_json.get("overwrite_image_reader_writer", plans.get("image_reader_writer", "SimpleITKIO"))
    if reader not in SUPPORTED_READERS:
        raise refusal(f"image reader {reader} (voxseg reads images like SimpleITKIO; other readers order axes differently)", path)
    if plans.get("label_manager", "LabelManager") != "LabelManager":
        raise refusal(f"label manager {plans['label_manager']}", path)
    cfg = resolve_configuration(plans, config_name, path)
    if cfg.get("previous_stage"):
        raise refusal(
            f"{config_name} is a cascade stage (needs {cfg['previous_stage']}'s segmentation as input); "
            "voxseg does not run nnU-Net cascades yet -- import the previous stage on its own instead",
            path,
        )
    if cfg.get("preprocessor_name", "DefaultPreprocessor") != "DefaultPreprocessor":
        raise refusal(f"preprocessor {cfg['preprocessor_name']}", path)
    _check_resampling(cfg, "data", IMAGE_RESAMPLING, path)
    order = (cfg.get("resampling_fn_probabilities_kwargs") or {}).get("order")
    if order not in EXPORT_ORDERS:
        raise refusal(f"resampling_fn_probabilities order {order!r} (voxseg resamples with order {EXPORT_ORDERS})", path)
    _check_resampling(cfg, "probabilities", {**IMAGE_RESAMPLING, "order": order}, path)
    transpose = [list(plans.get("transpose_forward", [])), list(plans.get("transpose_backward", []))]
    if any(sorted(t) != [0, 1, 2] for t in transpose) or [transpose[0][i] for i in transpose[1]] != [0, 1, 2]:
        raise refusal(f"transpose_forward/backward {transpose} are not inverse permutations of three axes", path)
    channels = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise refusal("dataset.json has no channel_names", path)
    channel_names = [str(channels[k]) for k in sorted(channels, key=int)]
    labels = read_labels(dataset_json, path)
    patch = [int(p) for p in cfg["patch_size"]]
    network, model = network_from_architecture(cfg["architecture"], len(patch), path)
    config = ConfigurationPlan(
        dims=len(patch),
        spacing=[float(s) for s in cfg["spacing"]],
        median_shape=[round(float(s)) for s in cfg.get("median_image_size_in_voxels", patch)],
        patch_size=patch,
        batch_size=int(cfg.get("batch_size", 2)),
        batch_dice=bool(cfg.get("batch_dice", False)),
        network=network,
        deep_supervision_scales=deep_supervision_scales(network["strides"]),
    )
    plan = Plan(
        dataset_name=str(plans.get("dataset_name", dataset_json.get("name", ""))),
        dataset_path="",
        num_classes=labels.num_classes,
        has_ignore=labels.has_ignore,
        channel_names=channel_names,
        transpose_forward=transpose[0],
        transpose_backward=transpose[1],
        normalization=_normalization(plans, cfg, len(channel_names), path),
        configurations={config_name: config},
        class_names=labels.class_names,
        regions=labels.regions,
        region_names=labels.region_names,
        regions_class_order=labels.regions_class_order,
    )
    return ConvertedPlans(plan, model, int(order))
