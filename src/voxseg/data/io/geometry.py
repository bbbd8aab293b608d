"""Geometry: where an array's voxels sit in space, in the one convention every stage shares.

Spacing follows numpy array order ((z, y, x) for 3D) so no later stage has to remember ITK's
reversed axis order; origin and direction stay in ITK's physical order because they are only ever
handed back to the writer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Geometry:
    spacing: tuple[float, ...]  # array order
    origin: tuple[float, ...]  # ITK physical order
    direction: tuple[float, ...]  # ITK flat row-major

    @property
    def ndim(self) -> int:
        return len(self.spacing)

    def to_json(self) -> dict:
        return {"spacing": list(self.spacing), "origin": list(self.origin), "direction": list(self.direction)}

    @classmethod
    def from_json(cls, d: dict) -> Geometry:
        return cls(tuple(map(float, d["spacing"])), tuple(map(float, d["origin"])), tuple(map(float, d["direction"])))

    def differs_from(self, other: Geometry, tol: float = 1e-4) -> list[str]:
        """Names of the geometry fields that disagree beyond a relative tolerance."""
        bad = []
        for name in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            if a.shape != b.shape or not np.allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(a).max(initial=0)))):
                bad.append(name)
        return bad


def grid_geometry(spacing: tuple[float, ...]) -> Geometry:
    """Geometry of a format that stores at most a voxel size: origin 0, axes aligned (identity)."""
    ndim = len(spacing)
    return Geometry(tuple(float(s) for s in spacing), (0.0,) * ndim, tuple(np.eye(ndim).ravel().tolist()))


def is_grid_geometry(geometry: Geometry, spacing: tuple[float, ...] | None = None) -> bool:
    """True when `geometry` has no origin or rotation (and the given spacing), so a plain grid holds it."""
    reference = grid_geometry(geometry.spacing if spacing is None else spacing)
    return not geometry.differs_from(reference, tol=1e-6)
