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

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from voxseg.errors import SettingsError

Range = tuple[float, float]

# Only the differences from the default; `none` keeps centre cropping (the loader still delivers
# the enlarged patch) so switching presets never changes the loader's contract.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "light": {
        "rotation_deg": 15.0, "scale_range": (0.85, 1.25), "noise_p": 0.0, "blur_p": 0.0,
        "lowres_p": 0.0, "gamma_inv_p": 0.0, "gamma_p": 0.15, "brightness_p": 0.1, "contrast_p": 0.1,
    },
    "none": {
        "rotation_p": 0.0, "scale_p": 0.0, "elastic_p": 0.0, "mirror_p": 0.0, "noise_p": 0.0,
        "blur_p": 0.0, "brightness_p": 0.0, "contrast_p": 0.0, "lowres_p": 0.0, "gamma_inv_p": 0.0,
        "gamma_p": 0.0,
    },
}

_PROBABILITIES = (
    "rotation_p", "scale_p", "elastic_p", "mirror_p", "noise_p", "blur_p", "blur_p_per_channel",
    "brightness_p", "contrast_p", "lowres_p", "lowres_p_per_channel", "gamma_inv_p", "gamma_p",
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

    preset: str = "default"  # recorded for settings.yaml; apply a preset with from_preset/from_dict
    # Where batches are augmented. "device": batched on the training device after the loader;
    # "loader": inside the loader's worker processes, before the batch reaches the trainer (the
    # CPU fallback: several processes share the work, as nnU-Net's augmenter workers do); "auto":
    # "device" on a GPU, "loader" on a CPU.
    where: Literal["auto", "device", "loader"] = "auto"
    # spatial: ONE resampling of the enlarged input patch per sample
    rotation_p: float = 0.2
    rotation_deg: float | None = None  # max |angle|; None = nnU-Net's rule (see resolve_rotation_deg)
    rotation_in_plane_only: bool | None = None  # None = the plan decides (anisotropic / 2D-like)
    scale_p: float = 0.2
    scale_range: Range = (0.7, 1.4)  # >1 zooms out (objects get smaller), as in nnU-Net
    scale_isotropic: bool = True
    elastic_p: float = 0.0
    elastic_magnitude: Range = (0.0, 0.2)  # max displacement as a fraction of the patch size
    elastic_grid: int = 5  # control points per axis; fewer = smoother deformation
    label_interpolation: Literal["nearest", "linear"] = "nearest"
    # How much larger than the patch the loader's crop is. "nnunet": room for the rotations and a
    # zoom-out up to 1/0.85 as nnU-Net sizes it (rare stronger zoom-outs read padding, which is
    # 0 / IGNORE); "worst_case": room for every allowed transform (about 3x the voxels in 3D).
    input_margin: Literal["nnunet", "worst_case"] = "nnunet"
    mirror_p: float = 0.5  # per axis
    mirror_axes: tuple[int, ...] | None = None  # None = every spatial axis
    # intensity: image only, after the spatial step
    noise_p: float = 0.1
    noise_std: Range = (0.0, 0.1)
    blur_p: float = 0.2
    blur_p_per_channel: float = 0.5
    blur_sigma: Range = (0.5, 1.0)  # voxels, drawn per axis
    brightness_p: float = 0.15
    brightness_range: Range = (0.75, 1.25)
    contrast_p: float = 0.15
    contrast_range: Range = (0.75, 1.25)
    contrast_preserve_range: bool = True
    lowres_p: float = 0.25
    lowres_p_per_channel: float = 0.5
    lowres_zoom: Range = (0.5, 1.0)
    gamma_inv_p: float = 0.1
    gamma_p: float = 0.3
    gamma_range: Range = (0.7, 1.5)
    gamma_retain_stats: bool = True

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
