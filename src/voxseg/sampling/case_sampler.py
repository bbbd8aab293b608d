"""Which training case each sample comes from: uniform, user-weighted, rarity-weighted or adaptive.

nnU-Net draws cases uniformly forever; its loader accepts probabilities but nothing passes them
(users ask for it, issue 2172). Here the probabilities come from settings, are bounded by a floor and
a cap (every case keeps being seen, no case takes over), can follow the training loss (adaptive), and
can be undone in expectation with importance weights 1/(N p_i).

The sampler only holds probabilities and draws indices from a generator it is handed: the loader
owns the random streams (one per batch index and rank), which keeps every draw reproducible and
lets each DDP rank draw its own part of the global batch.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from voxseg.errors import SettingsError
from voxseg.preprocessing.store import Store
from voxseg.sampling.config import SamplingSettings


def apply_floor_cap(p: np.ndarray, floor: float, cap: float) -> np.ndarray:
    """Normalise `p` so that floor/N <= p_i <= cap/N, keeping the ratios of the unclipped cases.

    Finds the scale s with sum(clip(s * p, floor/N, cap/N)) = 1 by bisection (the sum grows with s),
    i.e. clipping and re-normalising iterated to its fixed point in one step.
    """
    p = np.asarray(p, dtype=np.float64)
    n = p.size
    lo, hi = floor / n, cap / n
    if p.sum() <= 0:
        return np.full(n, 1.0 / n)
    p = p / p.sum()

    def total(s: float) -> float:
        return float(np.clip(s * p, lo, hi).sum())

    s_lo, s_hi = 0.0, 1.0
    while total(s_hi) < 1.0 and s_hi < 1e12:
        s_hi *= 2.0
    if total(s_hi) < 1.0:
        # Too few cases with weight > 0 to hold the mass under the cap: the zero-weight ones share the rest.
        out = np.where(p > 0, hi, 0.0)
        out[p == 0] = (1.0 - out.sum()) / (p == 0).sum()
        return out
    for _ in range(200):
        mid = 0.5 * (s_lo + s_hi)
        s_lo, s_hi = (mid, s_hi) if total(mid) < 1.0 else (s_lo, mid)
    out = np.clip(s_hi * p, lo, hi)
    return out / out.sum()


def _class_counts(props: Mapping) -> dict[int, int]:
    """Voxels per foreground output ({output: count}: classes, or regions of region-based plans);
    accepts a {"1": n} mapping or a list indexed by class."""
    counts = props.get("output_voxel_counts") or props.get("class_voxel_counts") or {}
    items = counts.items() if isinstance(counts, Mapping) else enumerate(counts)
    return {int(k): int(v) for k, v in items}


def foreground_rarity_weights(class_counts: Sequence[Mapping[int, int]]) -> np.ndarray:
    """Give every foreground class the same total mass, spread over the cases that contain it.

    A case weighs sum over its classes of 1/(number of cases containing the class), so a class found
    in 3 of 100 cases is seen as often as one found in all of them. Cases without foreground get 0
    here and are lifted by the floor. When every case holds every class this is uniform.
    """
    present = [{k for k, v in c.items() if k >= 1 and v > 0} for c in class_counts]
    n_cases_with: dict[int, int] = {}
    for classes in present:
        for k in classes:
            n_cases_with[k] = n_cases_with.get(k, 0) + 1
    w = np.array([sum(1.0 / n_cases_with[k] for k in classes) for classes in present])
    return w if w.sum() > 0 else np.ones(len(present))


def read_case_weights(path: str | Path, case_ids: Sequence[str], known_ids: Sequence[str] | None = None) -> np.ndarray:
    """Weights for `case_ids` from JSON {"case": w} or CSV rows `case,weight` (header optional)."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError(
            "case weights file not found",
            path=path,
            fix="set sampling.case_weights to 'uniform', 'foreground_rarity' or an existing JSON/CSV file",
        )
    try:
        if path.suffix.lower() == ".json":
            table = {str(k): float(v) for k, v in json.loads(path.read_text()).items()}
        else:
            with open(path, newline="") as f:
                rows = [r for r in csv.reader(f) if r and not r[0].startswith("#")]
            if rows and len(rows[0]) >= 2 and not _is_number(rows[0][1]):
                rows = rows[1:]  # header
            table = {r[0].strip(): float(r[1]) for r in rows}
    except (ValueError, IndexError, AttributeError, json.JSONDecodeError) as e:
        raise SettingsError(
            f"cannot read case weights ({e})", path=path, fix='use JSON {"case_id": weight} or CSV lines case_id,weight'
        ) from None
    missing = [c for c in case_ids if c not in table]
    unknown = sorted(set(table) - set(known_ids if known_ids is not None else case_ids))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"no weight for training case(s) {_names(missing)}")
        if unknown:
            parts.append(f"unknown case id(s) {_names(unknown)}")
        raise SettingsError("; ".join(parts), path=path, fix="give one weight per training case id, spelled as in the store")
    w = np.array([table[c] for c in case_ids], dtype=np.float64)
    if not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise SettingsError("case weights must be finite, non-negative and not all zero", path=path, fix="fix the weights")
    return w


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _names(ids: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


class CaseSampler:
    """Case probabilities (bounded, optionally adaptive) and draws from them.

    Adaptive mode: the trainer calls `update(case_ids, losses)` after each step and `end_epoch()`
    once per epoch; the probabilities then become floorcap((1 - blend) * base + blend * q) with q
    proportional to each case's EMA of its per-epoch mean loss (cases never drawn use the mean EMA).
    `version` increases whenever the probabilities change, so a loader can tell its prefetched
    draws are stale.
    """

    def __init__(
        self,
        case_ids: Sequence[str],
        base_weights: Sequence[float] | np.ndarray | None = None,
        *,
        floor: float = 0.1,
        cap: float = 10.0,
        adaptive: bool = False,
        momentum: float = 0.9,
        blend: float = 0.5,
    ):
        if not case_ids:
            raise SettingsError("no training cases to sample from", fix="check the split and the preprocessed store")
        self.case_ids = list(case_ids)
        self.floor, self.cap = floor, cap
        self.adaptive, self.momentum, self.blend = adaptive, momentum, blend
        n = len(self.case_ids)
        self.base = apply_floor_cap(np.ones(n) if base_weights is None else np.asarray(base_weights, float), floor, cap)
        self.probabilities = self.base.copy()
        self.ema = np.full(n, np.nan)
        self._sums, self._counts = np.zeros(n), np.zeros(n)
        self.epoch = 0
        self.version = 0
        self.schedule: list[dict] = []
        self._index = {c: i for i, c in enumerate(self.case_ids)}

    @classmethod
    def from_settings(cls, settings: SamplingSettings, store: Store, case_ids: Sequence[str]) -> CaseSampler:
        spec = settings.case_weights
        if spec == "uniform":
            weights = None
        elif spec == "foreground_rarity":
            weights = foreground_rarity_weights([_class_counts(store.properties(c)) for c in case_ids])
        else:
            weights = read_case_weights(spec, case_ids, known_ids=store.case_ids())
        return cls(
            case_ids,
            weights,
            floor=settings.weight_floor,
            cap=settings.weight_cap,
            adaptive=settings.adaptive,
            momentum=settings.adaptive_momentum,
            blend=settings.adaptive_blend,
        )

    def __len__(self) -> int:
        return len(self.case_ids)

    def draw(self, n: int, rng: np.random.Generator) -> list[int]:
        """`n` case indices drawn with replacement from the current probabilities."""
        return rng.choice(len(self.case_ids), size=n, p=self.probabilities).tolist()

    def importance_weights(self, case_ids: Sequence[str]) -> np.ndarray:
        n = len(self.case_ids)
        return np.array([1.0 / (n * self.probabilities[self._index[c]]) for c in case_ids], dtype=np.float32)

    def update(self, case_ids: Sequence[str], losses: Sequence[float]) -> None:
        """Record per-sample training losses (ignored unless adaptive)."""
        if not self.adaptive:
            return
        for c, loss in zip(case_ids, losses):
            if math.isfinite(float(loss)):
                i = self._index[c]
                self._sums[i] += float(loss)
                self._counts[i] += 1

    def end_epoch(self, reduce: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        """Fold this epoch's losses into the EMA and re-weight; `reduce` sums a (2, N) array over DDP ranks."""
        self.epoch += 1
        if not self.adaptive:
            return
        totals = np.stack([self._sums, self._counts])
        if reduce is not None:
            totals = np.asarray(reduce(totals), dtype=np.float64)
        sums, counts = totals
        self._sums[:], self._counts[:] = 0.0, 0.0
        seen = counts > 0
        mean = np.divide(sums, counts, out=np.zeros_like(sums), where=seen)
        first = seen & np.isnan(self.ema)
        self.ema[first] = mean[first]
        again = seen & ~first
        self.ema[again] = self.momentum * self.ema[again] + (1 - self.momentum) * mean[again]
        known = ~np.isnan(self.ema)
        if not known.any():
            return
        target = np.where(known, self.ema, self.ema[known].mean()).clip(min=0)
        if target.sum() <= 0:
            return
        mixed = (1 - self.blend) * self.base + self.blend * target / target.sum()
        self.probabilities = apply_floor_cap(mixed, self.floor, self.cap)
        self.version += 1
        n = len(self.case_ids)
        self.schedule.append(
            {
                "epoch": self.epoch,
                "min_share": float(self.probabilities.min() * n),
                "max_share": float(self.probabilities.max() * n),
                "effective_cases": float(1.0 / np.square(self.probabilities).sum()),
            }
        )

    def probabilities_by_case(self) -> dict[str, float]:
        return {c: float(p) for c, p in zip(self.case_ids, self.probabilities)}

    def state_dict(self) -> dict:
        return {
            "case_ids": list(self.case_ids),
            "probabilities": self.probabilities.tolist(),
            "ema": [None if math.isnan(v) else float(v) for v in self.ema],
            "sums": self._sums.tolist(),
            "counts": self._counts.tolist(),
            "epoch": self.epoch,
            "version": self.version,
            "schedule": list(self.schedule),
        }

    def load_state_dict(self, state: Mapping) -> None:
        if list(state["case_ids"]) != self.case_ids:
            raise SettingsError(
                "the checkpoint's case sampler was built for different training cases",
                fix="resume with the same split (splits.json) and store as the original run",
            )
        self.probabilities = np.asarray(state["probabilities"], dtype=np.float64)
        self.ema = np.array([np.nan if v is None else v for v in state["ema"]], dtype=np.float64)
        self._sums = np.asarray(state["sums"], dtype=np.float64)
        self._counts = np.asarray(state["counts"], dtype=np.float64)
        self.epoch = int(state["epoch"])
        self.version = int(state["version"])
        self.schedule = list(state["schedule"])
