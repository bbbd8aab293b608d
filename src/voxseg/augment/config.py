"""The `augmentation.` settings group: one flat dataclass with nnU-Net v2's defaults, plus presets.

Flat fields (``rotation_p``, ``scale_range`` ...) rather than nested per-transform objects so a user
can override any single value with ``--set augmentation.noise_p=0.2`` and the trainer's settings
loader can nest this class without knowing its insides. Hand-written instead of a field library
(pydantic, attrs) because validation is a dozen range checks and the error must be our
`SettingsError` naming the setting and the fix.

Defaults reproduce what nnU-Net's trainer builds (batchgeneratorsv2 ``get_training_transforms``):
per-sample probabilities, nnU-Net's "contrast-style" draws for brightness/contrast/gamma (half the
draws below 1, half above), noise "variance" used as a standard deviation (nnU-Net's naming, here
named for what it is: ``noise_std``), per-channel probability 0.5 for blur and low resolution.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from voxseg.errors import SettingsError

Range = tuple[float, float]

# Only the differences from the default; `none` keeps centre cropping (the loader still delivers
# the enlarged patch) so switching presets never changes the loader's contract.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "light": {
        "rotation_deg": 15.0,
        "scale_range": (0.85, 1.25),
        "noise_p": 0.0,
        "blur_p": 0.0,
        "lowres_p": 0.0,
        "gamma_inv_p": 0.0,
        "gamma_p": 0.15,
        "brightness_p": 0.1,
        "contrast_p": 0.1,
    },
    "none": {
        "rotation_p": 0.0,
        "scale_p": 0.0,
        "elastic_p": 0.0,
        "mirror_p": 0.0,
        "noise_p": 0.0,
        "blur_p": 0.0,
        "brightness_p": 0.0,
        "contrast_p": 0.0,
        "lowres_p": 0.0,
        "gamma_inv_p": 0.0,
        "gamma_p": 0.0,
    },
}

_PROBABILITIES = (
    "rotation_p",
    "scale_p",
    "elastic_p",
    "mirror_p",
    "noise_p",
    "blur_p",
    "blur_p_per_channel",
    "brightness_p",
    "contrast_p",
    "lowres_p",
    "lowres_p_per_channel",
    "gamma_inv_p",
    "gamma_p",
)
_POSITIVE_RANGES = ("scale_range", "blur_sigma", "brightness_range", "contrast_range", "lowres_zoom", "gamma_range")
_NONNEGATIVE_RANGES = ("noise_std", "elastic_magnitude")


@dataclass
class AugmentationSettings:
    """Per-sample probabilities (`*_p`) and parameter ranges of every transform.

    Spatial transforms act on the whole sample; intensity transforms draw their parameters per
    channel. Ranges are ``(low, high)`` drawn uniformly, except brightness/contrast/gamma which use
    nnU-Net's split draw (50 % in ``[low, 1]``, 50 % in ``[1, high]``).
    """

    preset: str = field(
        default="default",
        metadata={"help": "starting point: default (nnU-Net v2), light or none (centre crop only); the other keys refine it"},
    )
    where: Literal["auto", "device", "loader"] = field(
        default="auto",
        metadata={
            "help": "where batches are augmented: device (batched on the training device), loader (in the loader's "
            "worker processes, the CPU fallback) or auto (device on a GPU, loader on a CPU)"
        },
    )
    # spatial: ONE resampling of the enlarged input patch per sample
    rotation_p: float = field(default=0.2, metadata={"help": "probability of a rotation"})
    rotation_deg: float | None = field(
        default=None,
        metadata={
            "help": "max |angle| in degrees; null: nnU-Net's rule (3D 30; in-plane only and 2D 180; 2D patches elongated > 1.5x 15)"
        },
    )
    rotation_in_plane_only: bool | None = field(
        default=None, metadata={"help": "rotate about axis 0 only; null: the plan decides (anisotropic or 2D-like patches)"}
    )
    scale_p: float = field(default=0.2, metadata={"help": "probability of scaling"})
    scale_range: Range = field(
        default=(0.7, 1.4), metadata={"help": "scale factor range; > 1 zooms out (objects get smaller), as in nnU-Net"}
    )
    scale_isotropic: bool = field(default=True, metadata={"help": "one scale factor for every axis"})
    elastic_p: float = field(default=0.0, metadata={"help": "probability of an elastic deformation"})
    elastic_magnitude: Range = field(default=(0.0, 0.2), metadata={"help": "max displacement as a fraction of the patch size"})
    elastic_grid: int = field(default=5, metadata={"help": "control points per axis; fewer = smoother deformation"})
    label_interpolation: Literal["nearest", "linear"] = field(
        default="nearest", metadata={"help": "how label maps are resampled: nearest, or linear on per-class masks"}
    )
    input_margin: Literal["nnunet", "worst_case"] = field(
        default="nnunet",
        metadata={
            "help": "room the loader's crop leaves around the patch: nnunet (rotations and a zoom-out to 1/0.85; rarer "
            "stronger zoom-outs read padding) or worst_case (every allowed transform, about 3x the voxels in 3D)"
        },
    )
    mirror_p: float = field(default=0.5, metadata={"help": "probability of mirroring, per axis"})
    mirror_axes: tuple[int, ...] | None = field(
        default=None, metadata={"help": "spatial axes that may be mirrored; null: every spatial axis"}
    )
    # intensity: image only, after the spatial step
    noise_p: float = field(default=0.1, metadata={"help": "probability of Gaussian noise"})
    noise_std: Range = field(default=(0.0, 0.1), metadata={"help": "noise standard deviation range"})
    blur_p: float = field(default=0.2, metadata={"help": "probability of Gaussian blur"})
    blur_p_per_channel: float = field(default=0.5, metadata={"help": "probability that a channel of a blurred sample is blurred"})
    blur_sigma: Range = field(default=(0.5, 1.0), metadata={"help": "blur sigma range in voxels, drawn per axis"})
    brightness_p: float = field(default=0.15, metadata={"help": "probability of a brightness (multiplicative) change"})
    brightness_range: Range = field(default=(0.75, 1.25), metadata={"help": "brightness factor range (split draw around 1)"})
    contrast_p: float = field(default=0.15, metadata={"help": "probability of a contrast change"})
    contrast_range: Range = field(default=(0.75, 1.25), metadata={"help": "contrast factor range (split draw around 1)"})
    contrast_preserve_range: bool = field(
        default=True, metadata={"help": "clip to the channel's old [min, max] after a contrast change"}
    )
    lowres_p: float = field(default=0.25, metadata={"help": "probability of simulating low resolution"})
    lowres_p_per_channel: float = field(
        default=0.5, metadata={"help": "probability that a channel of a low-resolution sample is affected"}
    )
    lowres_zoom: Range = field(default=(0.5, 1.0), metadata={"help": "zoom range of the low-resolution simulation"})
    gamma_inv_p: float = field(default=0.1, metadata={"help": "probability of gamma on the inverted image"})
    gamma_p: float = field(default=0.3, metadata={"help": "probability of gamma"})
    gamma_range: Range = field(
        default=(0.7, 1.5), metadata={"help": "gamma range (split draw around 1), shared by both gamma transforms"}
    )
    gamma_retain_stats: bool = field(default=True, metadata={"help": "restore each channel's mean and std after gamma"})

    def __post_init__(self) -> None:
        # YAML and --set deliver lists; tuples keep the dataclass hashable and comparable.
        for name in (*_POSITIVE_RANGES, *_NONNEGATIVE_RANGES):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                _bad(name, value, "a pair [low, high]")
            setattr(self, name, (float(value[0]), float(value[1])))
        if self.mirror_axes is not None:
            self.mirror_axes = tuple(int(a) for a in self.mirror_axes)
        self._validate()

    def _validate(self) -> None:
        if self.preset not in PRESETS:
            _bad("preset", self.preset, f"one of {sorted(PRESETS)}")
        for name in _PROBABILITIES:
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                _bad(name, value, "a probability between 0 and 1")
        for name in _POSITIVE_RANGES:
            low, high = getattr(self, name)
            if not 0.0 < low <= high:
                _bad(name, [low, high], "[low, high] with 0 < low <= high")
        for name in _NONNEGATIVE_RANGES:
            low, high = getattr(self, name)
            if not 0.0 <= low <= high:
                _bad(name, [low, high], "[low, high] with 0 <= low <= high")
        if self.rotation_deg is not None and not 0.0 <= self.rotation_deg <= 180.0:
            _bad("rotation_deg", self.rotation_deg, "an angle between 0 and 180 degrees, or null for auto")
        if self.elastic_grid < 2:
            _bad("elastic_grid", self.elastic_grid, "an integer >= 2")
        if self.label_interpolation not in ("nearest", "linear"):
            _bad("label_interpolation", self.label_interpolation, "'nearest' or 'linear'")
        if self.where not in ("auto", "device", "loader"):
            _bad("where", self.where, "'auto', 'device' or 'loader'")
        if self.input_margin not in ("nnunet", "worst_case"):
            _bad("input_margin", self.input_margin, "'nnunet' or 'worst_case'")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> AugmentationSettings:
        """The named preset with `overrides` applied on top."""
        if name not in PRESETS:
            _bad("preset", name, f"one of {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides, "preset": name}, _apply_preset=False)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, _apply_preset: bool = True) -> AugmentationSettings:
        """Build from a settings mapping; a ``preset`` key applies that preset first."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SettingsError(
                f"unknown augmentation setting(s) {unknown}",
                fix=f"use one of: {', '.join(sorted(known))}",
            )
        if _apply_preset and "preset" in values:
            rest = {k: v for k, v in values.items() if k != "preset"}
            return cls.from_preset(values["preset"], **rest)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists for pairs), ready for settings.yaml."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _bad(name: str, value: Any, expected: str) -> None:
    raise SettingsError(
        f"augmentation.{name} = {value!r} is invalid",
        fix=f"set augmentation.{name} to {expected}",
    )
