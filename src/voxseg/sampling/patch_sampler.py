"""Where each patch is cut: nnU-Net's forced-foreground pattern, made exact, and the crop itself.

Forced samples pick a foreground class present in the case (uniformly or by
`class_probabilities`), one stored voxel of it, and centre the patch there plus a random shift of up
to `center_jitter` of the patch. The box is then clamped on both sides, to stay inside the image
where the image is larger than the patch and to keep the chosen voxel inside the final patch.
nnU-Net clamps only the lower side, so its forced patches can miss the foreground at the far border.

Unforced samples are uniform over the positions that keep the patch inside the image (or the image
inside the patch when the image is smaller); with an ignore label they are centred on an annotated
voxel instead, so a patch is never all-ignore when the case has an annotated voxel.

The loader asks for an enlarged `input_size` (room for rotation/scaling): it has the same centre as
the final patch, i.e. the final patch is `[(in - patch) // 2, (in - patch) // 2 + patch)` of the input.
Outside the image the input is padded with 0 and the labels with IGNORE when the dataset has an ignore
label (so no loss is computed on voxels that do not exist), else with background (nnU-Net's choice
for datasets without ignore label, which keeps the loss defined everywhere).

2D configurations read the 3D store: a forced sample uses the slice (axis 0) holding its voxel,
an unforced one a random slice (one holding an annotated voxel with an ignore label).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from voxseg.data.labels import IGNORE
from voxseg.preprocessing.store import StoredCase


def forced_flags(batch_size: int, oversample: float, *, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """Which samples of this rank's batch are forced to foreground.

    The pattern is nnU-Net's, over the global batch (batch_size * world_size): its last
    `G - round(G * (1 - oversample))` samples are forced; rank r holds samples [r*B, (r+1)*B).
    """
    g = batch_size * world_size
    flags = np.arange(g) >= round(g * (1 - oversample))
    return flags[rank * batch_size : (rank + 1) * batch_size]


@dataclass(frozen=True)
class PatchChoice:
    lower: tuple[int, ...]  # lower corner of the final patch (in-plane for 2D); may be negative
    slice_index: int | None  # axis-0 slice for 2D patches from a 3D store
    forced_class: int | None  # the class the patch was forced to contain, None when unforced


def foreground_classes(locations: Mapping[str, np.ndarray]) -> list[int]:
    return sorted(int(k) for k, v in locations.items() if k != "annotated" and len(v) > 0)


class PatchSampler:
    """Chooses patch positions in a stored case and crops them into preallocated arrays."""

    def __init__(
        self,
        patch_size: Sequence[int],
        input_size: Sequence[int] | None = None,
        *,
        has_ignore: bool = False,
        center_jitter: float = 0.1,
        class_probabilities: Mapping[int, float] | None = None,
    ):
        self.patch_size = tuple(int(p) for p in patch_size)
        self.input_size = self.patch_size if input_size is None else tuple(int(p) for p in input_size)
        if len(self.input_size) != len(self.patch_size) or any(i < p for i, p in zip(self.input_size, self.patch_size)):
            raise ValueError(f"input_size {self.input_size} must cover patch_size {self.patch_size} axis by axis")
        self.has_ignore = has_ignore
        self.label_fill = IGNORE if has_ignore else 0
        self.jitter = tuple(int(center_jitter * p) for p in self.patch_size)
        self.class_probabilities = dict(class_probabilities) if class_probabilities else None

    def choose(self, case: StoredCase, forced: bool, rng: np.random.Generator) -> PatchChoice:
        shape = case.spatial_shape
        two_d = len(self.patch_size) == len(shape) - 1
        cls = self._pick_class(case.locations, rng) if forced else None
        if cls is not None:
            voxel = self._pick_voxel(case.locations[str(cls)], rng)
        elif self.has_ignore and len(case.locations.get("annotated", ())) > 0:
            voxel = self._pick_voxel(case.locations["annotated"], rng)
        else:
            voxel = None
        if voxel is None:
            z = int(rng.integers(shape[0])) if two_d else None
            plane = shape[1:] if two_d else shape
            lower = tuple(int(rng.integers(min(0, s - p), max(0, s - p) + 1)) for s, p in zip(plane, self.patch_size))
            return PatchChoice(lower, z, None)
        z = int(voxel[0]) if two_d else None
        point, plane = (voxel[1:], shape[1:]) if two_d else (voxel, shape)
        starts: list[int] = []
        for v, s, p, j in zip(point, plane, self.patch_size, self.jitter):
            centre = int(v) + (int(rng.integers(-j, j + 1)) if j else 0)
            lo = max(min(0, s - p), int(v) - p + 1)
            hi = min(max(0, s - p), int(v))
            starts.append(min(max(centre - p // 2, lo), hi))
        return PatchChoice(tuple(starts), z, cls)

    def _pick_class(self, locations: Mapping[str, np.ndarray], rng: np.random.Generator) -> int | None:
        present = foreground_classes(locations)
        if self.class_probabilities is not None:
            w = np.array([self.class_probabilities.get(k, 0.0) for k in present], dtype=np.float64)
            present = [k for k, wk in zip(present, w) if wk > 0]
            w = w[w > 0]
            if present:
                return present[int(rng.choice(len(present), p=w / w.sum()))]
            return None
        return present[int(rng.integers(len(present)))] if present else None

    @staticmethod
    def _pick_voxel(coords: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return coords[int(rng.integers(len(coords)))]

    def input_lower(self, choice: PatchChoice) -> tuple[int, ...]:
        return tuple(lo - (i - p) // 2 for lo, i, p in zip(choice.lower, self.input_size, self.patch_size))

    def crop(
        self,
        case: StoredCase,
        choice: PatchChoice,
        image_out: np.ndarray,
        seg_out: np.ndarray,
        extra_out: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Cut the input-sized box at `choice` into the given (C, *input_size) / (1, *input_size) arrays.

        Only the in-bounds part of the memory-mapped source is read; the rest of the output is filled.
        """
        lower = self.input_lower(choice)
        _copy_box(case.image, choice.slice_index, lower, image_out, 0)
        _copy_box(case.seg, choice.slice_index, lower, seg_out, self.label_fill)
        for name, out in (extra_out or {}).items():
            _copy_box(case.extra[name], choice.slice_index, lower, out, self.label_fill)

    def classes_in_patch(self, case: StoredCase, choice: PatchChoice) -> list[int]:
        """Foreground classes with a stored location inside the final patch.

        Uses the stored (sub-sampled) class locations rather than scanning the label crop: an exact
        answer for small structures at a fraction of the cost of a pass over every voxel.
        """
        lower = np.array(choice.lower, dtype=np.int32)
        extent = np.array(self.patch_size, dtype=np.uint32)
        found = []
        for k in foreground_classes(case.locations):
            pts = case.locations[str(k)]
            if choice.slice_index is not None:
                pts = pts[pts[:, 0] == choice.slice_index][:, 1:]
            # 0 <= p - lower < extent in one unsigned comparison (negatives wrap to huge values),
            # column by column: numpy's reductions along a short last axis are slow.
            d = (pts - lower).view(np.uint32)
            inside = d[:, 0] < extent[0]
            for axis in range(1, d.shape[1]):
                inside &= d[:, axis] < extent[axis]
            if inside.any():
                found.append(k)
        return found


def _copy_box(src: np.ndarray, z: int | None, lower: Sequence[int], out: np.ndarray, fill: float) -> None:
    """out[:] = src[:, (z,) box] with the part of the box outside `src` set to `fill`.

    Each output voxel is written once: the copy, then only the slabs outside the image (a full
    fill first would cost another pass over the whole patch, ~25% of the crop).
    """
    plane = src[:, z] if z is not None else src
    shape = plane.shape[1:]
    src_idx, dst_idx = [slice(None)], [slice(None)]
    for lo, n, s in zip(lower, out.shape[1:], shape):
        a, b = min(max(lo, 0), s), max(min(lo + n, s), 0)
        start = min(max(a - lo, 0), n)  # box wholly outside the image: an empty range at an end
        src_idx.append(slice(a, max(a, b)))
        dst_idx.append(slice(start, start + max(0, b - a)))
    out[tuple(dst_idx)] = plane[tuple(src_idx)]
    for axis, d in enumerate(dst_idx[1:], start=1):
        # Slabs before/after the copied range on this axis, over the full range of later axes
        # and the copied range of earlier ones (those parts are done by their own axis).
        head = tuple(dst_idx[1:axis])
        if d.start > 0:
            out[(slice(None), *head, slice(0, d.start))] = fill
        if d.stop < out.shape[axis]:
            out[(slice(None), *head, slice(d.stop, None))] = fill
