"""The run log: one JSON line per epoch (``log.jsonl``) and the one plotter of its curves.

Neutral module: training appends to the log and draws ``progress.png``, the HTML report draws the
same figure, TensorBoard-free users read the file with pandas (``pd.read_json(path, lines=True)``).
A torn last line (training killed mid-write, or still running) is skipped by the one reader.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from voxseg.io_utils import atomic_path

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4", "#469990"]
_PANELS = ("Loss", "Validation overlap", "Learning rate", "Time per epoch (s)", "Other")


def append_log(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_log(path: Path) -> list[dict[str, Any]]:
    """Epoch records of a log.jsonl; a torn or foreign line is skipped."""
    if not Path(path).is_file():
        return []
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def truncate_log(path: Path, epochs_kept: int) -> None:
    """On resume, drop lines of epochs after the checkpoint so the log matches the weights."""
    records = [r for r in read_log(path) if r.get("epoch", 0) < epochs_kept]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))


def numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def style_axes(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(alpha=0.25)
    ax.tick_params(labelsize=8)


def _panel_of(key: str) -> str:
    k = key.lower()
    if "loss" in k or k.endswith(("/ce", "/dice", "/bce", "/exclusion")):
        return "Loss"
    if "dice" in k or "iou" in k or "nsd" in k:
        return "Validation overlap"
    if k in ("lr", "learning_rate") or k.endswith("/lr"):
        return "Learning rate"
    if "time" in k or "wait" in k:
        return "Time per epoch (s)"
    return "Other"


def curves_figure(records: list[dict[str, Any]]):
    """Every numeric key of the log, grouped into panels by what it measures; None if nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = {k: None for r in records for k, v in r.items() if numeric(v) and k != "epoch"}
    if not keys:
        return None
    x = [r.get("epoch", i) for i, r in enumerate(records)]
    panels: dict[str, list[str]] = {}
    for k in keys:
        panels.setdefault(_panel_of(k), []).append(k)
    order = [p for p in _PANELS if p in panels]
    cols = min(len(order), 2)
    rows = math.ceil(len(order) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, order):
        for i, k in enumerate(panels[name]):
            pts = [(xi, r[k]) for xi, r in zip(x, records) if numeric(r.get(k))]
            ax.plot(
                *zip(*pts),
                label=k,
                color=PALETTE[i % len(PALETTE)],
                lw=1.6,
                marker="o" if len(pts) < 15 else None,
                ms=3,
                linestyle="--" if "ema" in k else "-",
            )
        ax.set_title(name, fontsize=10, loc="left", fontweight="bold")
        ax.set_xlabel("epoch", fontsize=8)
        if name == "Learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax.legend(fontsize=7, frameon=False)
        style_axes(ax)
    for ax in list(axes.flat)[len(order) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def save_progress(path: Path, records: list[dict[str, Any]]) -> None:
    """progress.png of a run folder (atomic)."""
    import matplotlib.pyplot as plt

    fig = curves_figure(records)
    if fig is None:
        return
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, facecolor="white")
    plt.close(fig)
