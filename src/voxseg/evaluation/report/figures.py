"""Report figures: box plots per metric and case overlays, as inline PNG data URIs."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from voxseg.data.labels import IGNORE
from voxseg.runlog import PALETTE, curves_figure, numeric, style_axes


def colour(key: str, index: int) -> str:
    """Label k always gets the same colour (table, box plot, overlays); regions go by position."""
    return PALETTE[((int(key) - 1) if key.isdigit() else index) % len(PALETTE)]


def png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, facecolor="white")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def training_curves(records: list[dict]) -> str | None:
    fig = curves_figure(records)
    return None if fig is None else png(fig)


def box_plots(summary: dict, metrics: Sequence[str]) -> str | None:
    names = summary.get("label_names", {})
    keys = list(summary.get("mean", {}))
    metrics = [m for m in metrics if any(m in c["metrics"].get(k, {}) for c in summary["metric_per_case"] for k in keys)]
    if not keys or not metrics:
        return None
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(min(3.2 * len(metrics) + 0.4 * len(keys) * len(metrics), 14), 3.2), squeeze=False
    )
    for ax, m in zip(axes[0], metrics):
        data = [[v for c in summary["metric_per_case"] if numeric(v := c["metrics"].get(k, {}).get(m))] for k in keys]
        parts = ax.boxplot(
            [d if d else [np.nan] for d in data],
            patch_artist=True,
            widths=0.55,
            medianprops={"color": "#1d2433"},
            flierprops={"markersize": 3},
        )
        for i, box in enumerate(parts["boxes"]):
            box.set_facecolor(colour(keys[i], i) + "99")
            box.set_edgecolor("#1d2433")
        ax.set_xticks(
            range(1, len(keys) + 1),
            [names.get(k, k) for k in keys],
            rotation=30 if len(keys) > 4 else 0,
            ha="right" if len(keys) > 4 else "center",
        )
        ax.set_title(m + (" (mm)" if m == "HD95" else ""), fontsize=10, loc="left", fontweight="bold")
        if m in ("Dice", "IoU", "NSD"):
            ax.set_ylim(-0.02, 1.02)
        style_axes(ax)
    fig.tight_layout()
    return png(fig)


def _overlay_rgb(image: np.ndarray | None, seg: np.ndarray) -> np.ndarray:
    """Grey image with translucent label colours; IGNORE drawn as a dark hatch-like tint."""
    if image is None:
        base = np.zeros(seg.shape, np.float32)
    else:
        lo, hi = np.percentile(image, (0.5, 99.5))
        base = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(base[..., None], 3, axis=-1)
    for label in np.unique(seg):
        if label == 0:
            continue
        colour = (
            np.array([0.25, 0.25, 0.3])
            if label == IGNORE
            else np.array(matplotlib.colors.to_rgb(PALETTE[(int(label) - 1) % len(PALETTE)]))
        )
        mask = seg == label
        rgb[mask] = 0.45 * rgb[mask] + 0.55 * colour
    return rgb


def case_figure(image: np.ndarray | None, ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float]) -> str:
    """Image | reference | prediction on the most telling axis-0 slice: the one with the most
    foreground plus disagreement, so a worst case shows where it went wrong."""
    if ref.ndim == 3:
        fg = ((ref > 0) | (pred > 0)).reshape(ref.shape[0], -1).sum(1)
        wrong = ((ref != pred) & (ref != IGNORE)).reshape(ref.shape[0], -1).sum(1)
        # Ties go to the slice nearest the centre (a better view than the first of equals).
        centre_penalty = 1e-4 * np.abs(np.arange(ref.shape[0]) - (ref.shape[0] - 1) / 2)
        z = int(np.argmax(fg + wrong - centre_penalty))
        image, ref, pred = (None if image is None else image[z]), ref[z], pred[z]
        aspect = spacing[1] / spacing[2]
        where = f"slice {z}"
    else:
        aspect = spacing[0] / spacing[1]
        where = "2D"
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.4))
    for ax, (title, seg) in zip(axes, ((f"image ({where})", None), ("reference", ref), ("prediction", pred))):
        ax.imshow(_overlay_rgb(image, seg if seg is not None else np.zeros_like(ref)), aspect=aspect, interpolation="nearest")
        ax.set_title(title, fontsize=12)
        ax.axis("off")
    fig.tight_layout()
    return png(fig)
