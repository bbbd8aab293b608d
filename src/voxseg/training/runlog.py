"""Run logging: one JSON line per epoch (log.jsonl) and the curves a person looks at (progress.png)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from voxseg.io_utils import atomic_path


def append_log(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_log(path: Path, epochs_kept: int) -> None:
    """On resume, drop lines of epochs after the checkpoint so the log matches the weights."""
    records = [r for r in read_log(path) if r["epoch"] < epochs_kept]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))


def plot_progress(path: Path, records: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not records:
        return
    epochs = [r["epoch"] for r in records]
    fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    for key in sorted({k for r in records for k in r if k.endswith("/loss") or k in ("train/loss", "val/loss")}):
        axes[0].plot(epochs, [r.get(key) for r in records], label=key)
    axes[0].set_ylabel("loss")
    for key in sorted({k for r in records for k in r if k.startswith("val/dice") or k == "val/ema_dice"}):
        axes[1].plot(epochs, [r.get(key) for r in records], label=key, linestyle="--" if "ema" in key else "-")
    axes[1].set_ylabel("pseudo-Dice")
    axes[2].plot(epochs, [r.get("epoch_time") for r in records], label="epoch time (s)")
    axes[2].plot(epochs, [r.get("data_wait") for r in records], label="data wait (s)")
    ax_lr = axes[2].twinx()
    ax_lr.plot(epochs, [r.get("lr") for r in records], color="grey", label="lr")
    ax_lr.set_ylabel("lr")
    axes[2].set_xlabel("epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
