"""One self-contained HTML report of a run or a prediction folder.

A single file (PNG figures inline as base64, CSS inline, no scripts, no external assets) so it can be
mailed, attached to a ticket or opened offline on a hospital workstation. It shows the training
curves (`log.jsonl`), headline numbers and a per-class table with box plots (`summary.json`), the
worst and best cases as slice overlays of image, reference and prediction, and the settings used
(`settings.yaml`). Sections whose input is missing are left out rather than failing.
Hand-written HTML instead of a templating or plotting-to-HTML library: the page is small and this
keeps the dependency list at matplotlib.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from voxseg.data.io import read_image  # noqa: E402
from voxseg.data.labels import IGNORE  # noqa: E402
from voxseg.errors import InputError, NotFoundError  # noqa: E402
from voxseg.evaluation.metrics import nanmean  # noqa: E402
from voxseg.io_utils import atomic_write_text  # noqa: E402

_PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4", "#469990"]
_METRIC_ORDER = ("Dice", "IoU", "HD95", "NSD")
_HIGHER_IS_BETTER = {"Dice": True, "IoU": True, "NSD": True, "HD95": False}


@dataclass
class Source:
    """The report inputs found under one RUN_DIR / PRED_DIR argument."""

    path: Path
    logs: list[Path] = field(default_factory=list)
    summaries: list[Path] = field(default_factory=list)
    settings: Path | None = None


def discover(path: str | Path) -> Source:
    """Find log.jsonl, summary.json and settings.yaml in a folder, its fold_*/ and validation/ folders."""
    path = Path(path)
    if path.is_file() and path.name.endswith(".json"):
        return Source(path.parent, summaries=[path])
    if not path.is_dir():
        raise NotFoundError("report input not found", path=path, fix="pass a run folder, a prediction folder or a summary.json")
    folders = [path, *sorted(p for p in path.glob("fold_*") if p.is_dir())]
    source = Source(path)
    for folder in folders:
        source.logs += [p for p in [folder / "log.jsonl"] if p.is_file()]
        source.summaries += [p for p in (folder / "summary.json", folder / "validation" / "summary.json") if p.is_file()]
        if source.settings is None and (folder / "settings.yaml").is_file():
            source.settings = folder / "settings.yaml"
    if not (source.logs or source.summaries or source.settings):
        raise InputError("no log.jsonl, summary.json or settings.yaml found", path=path,
                         fix="pass a run folder (fold_N) or a folder evaluated with `voxseg evaluate`")
    return source


def read_log(path: Path) -> list[dict]:
    """Epoch records; a torn last line (training still running) is skipped."""
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


# ----------------------------------------------------------------------------------------- figures

def _colour(key: str, index: int) -> str:
    """Label k always gets the same colour (table, box plot, overlays); regions go by position."""
    return _PALETTE[((int(key) - 1) if key.isdigit() else index) % len(_PALETTE)]


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, facecolor="white")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _style(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(alpha=0.25)
    ax.tick_params(labelsize=8)


def _panel_of(key: str) -> str:
    k = key.lower()
    if "loss" in k:
        return "Loss"
    if "dice" in k or "iou" in k or "nsd" in k:
        return "Validation overlap"
    if k in ("lr", "learning_rate") or k.endswith("/lr"):
        return "Learning rate"
    if "time" in k or "wait" in k:
        return "Time per epoch (s)"
    return "Other"


def training_curves(records: list[dict]) -> str | None:
    """Every numeric key of the log, grouped into panels by what it measures."""
    keys = {k: None for r in records for k, v in r.items() if _numeric(v) and k != "epoch"}
    if not keys:
        return None
    x = [r.get("epoch", i) for i, r in enumerate(records)]
    panels: dict[str, list[str]] = {}
    for k in keys:
        panels.setdefault(_panel_of(k), []).append(k)
    order = [p for p in ("Loss", "Validation overlap", "Learning rate", "Time per epoch (s)", "Other") if p in panels]
    cols = min(len(order), 2)
    rows = math.ceil(len(order) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, order):
        for i, k in enumerate(panels[name]):
            pts = [(xi, r[k]) for xi, r in zip(x, records) if _numeric(r.get(k))]
            ax.plot(*zip(*pts), label=k, color=_PALETTE[i % len(_PALETTE)], lw=1.6, marker="o" if len(pts) < 15 else None, ms=3)
        ax.set_title(name, fontsize=10, loc="left", fontweight="bold")
        ax.set_xlabel("epoch", fontsize=8)
        if name == "Learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax.legend(fontsize=7, frameon=False)
        _style(ax)
    for ax in list(axes.flat)[len(order):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def box_plots(summary: dict, metrics: Sequence[str]) -> str | None:
    names = summary.get("label_names", {})
    keys = list(summary.get("mean", {}))
    metrics = [m for m in metrics if any(m in c["metrics"].get(k, {}) for c in summary["metric_per_case"] for k in keys)]
    if not keys or not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(min(3.2 * len(metrics) + 0.4 * len(keys) * len(metrics), 14), 3.2), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        data = [[v for c in summary["metric_per_case"] if _numeric(v := c["metrics"].get(k, {}).get(m))] for k in keys]
        parts = ax.boxplot([d if d else [np.nan] for d in data], patch_artist=True, widths=0.55,
                           medianprops={"color": "#1d2433"}, flierprops={"markersize": 3})
        for i, box in enumerate(parts["boxes"]):
            box.set_facecolor(_colour(keys[i], i) + "99")
            box.set_edgecolor("#1d2433")
        ax.set_xticks(range(1, len(keys) + 1), [names.get(k, k) for k in keys], rotation=30 if len(keys) > 4 else 0, ha="right" if len(keys) > 4 else "center")
        ax.set_title(m + (" (mm)" if m == "HD95" else ""), fontsize=10, loc="left", fontweight="bold")
        if m in ("Dice", "IoU", "NSD"):
            ax.set_ylim(-0.02, 1.02)
        _style(ax)
    fig.tight_layout()
    return _png(fig)


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
        colour = np.array([0.25, 0.25, 0.3]) if label == IGNORE else np.array(matplotlib.colors.to_rgb(_PALETTE[(int(label) - 1) % len(_PALETTE)]))
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
    return _png(fig)


# -------------------------------------------------------------------------------------------- html

def _numeric(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v, metric: str) -> str:
    if not _numeric(v):
        return "&ndash;"
    return f"{v:.2f}" if metric == "HD95" else f"{v:.3f}"


def _dice_class(v) -> str:
    if not _numeric(v):
        return ""
    return "good" if v >= 0.85 else "ok" if v >= 0.7 else "poor"


def _case_score(case: dict) -> float:
    return nanmean([m.get("Dice", float("nan")) for m in case["metrics"].values()])


def _metrics_present(summary: dict) -> list[str]:
    present = {m for v in summary.get("mean", {}).values() for m in v}
    return [m for m in _METRIC_ORDER if m in present]


def class_table(summary: dict) -> str:
    names = summary.get("label_names", {})
    metrics = _metrics_present(summary)
    head = "".join(f"<th>{m}{' (mm)' if m == 'HD95' else ''}</th>" for m in metrics)
    rows = []
    for i, (key, means) in enumerate(summary.get("mean", {}).items()):
        values = [c["metrics"].get(key, {}) for c in summary["metric_per_case"]]
        cells = []
        for m in metrics:
            col = [v[m] for v in values if _numeric(v.get(m))]
            spread = f"<span class='sd'>&plusmn; {_fmt(float(np.std(col)), m)}</span>" if len(col) > 1 else ""
            cells.append(f"<td class='num {_dice_class(means.get(m)) if m == 'Dice' else ''}'>{_fmt(means.get(m), m)} {spread}</td>")
        n = sum(1 for v in values if v.get("n_ref", 0) > 0)
        swatch = f"<span class='swatch' style='background:{_colour(key, i)}'></span>"
        rows.append(f"<tr><td>{swatch}{html.escape(names.get(key, key))} <span class='key'>{html.escape(key)}</span></td>"
                    f"{''.join(cells)}<td class='num'>{n}/{len(values)}</td></tr>")
    fg = summary.get("foreground_mean", {})
    foot = "".join(f"<td class='num'>{_fmt(fg.get(m), m)}</td>" for m in metrics)
    return (f"<table><thead><tr><th>class</th>{head}<th>cases with class</th></tr></thead><tbody>{''.join(rows)}</tbody>"
            f"<tfoot><tr><td>mean over classes</td>{foot}<td></td></tr></tfoot></table>")


def _cards(summary: dict) -> str:
    fg = summary.get("foreground_mean", {})
    items = [("cases", str(len(summary.get("metric_per_case", []))), "")]
    items += [(f"mean {m}", _fmt(fg.get(m), m), "mm" if m == "HD95" else "") for m in _metrics_present(summary)]
    return "<div class='cards'>" + "".join(
        f"<div class='card'><div class='label'>{html.escape(k)}</div><div class='value'>{v}<small>{u}</small></div></div>" for k, v, u in items
    ) + "</div>"


def _resolve(recorded: str, summary_path: Path, override_dir: Path | None, name: str) -> Path | None:
    candidates = ([override_dir / name] if override_dir else []) + [Path(recorded), summary_path.parent / Path(recorded).name]
    return next((p for p in candidates if p.is_file()), None)


def _case_section(case: dict, summary: dict, summary_path: Path, images_dir: Path | None, labels_dir: Path | None, tag: str) -> str:
    ref_name = Path(case["reference_file"]).name
    case_id = case.get("case_id") or ref_name.split(".")[0]
    ending = ref_name[len(case_id):]
    ref_path = _resolve(case["reference_file"], summary_path, labels_dir, ref_name)
    pred_path = _resolve(case["prediction_file"], summary_path, None, Path(case["prediction_file"]).name)
    names = summary.get("label_names", {})
    chips = "".join(
        f"<span class='chip {_dice_class(m.get('Dice'))}'>{html.escape(names.get(k, k))}: Dice {_fmt(m.get('Dice'), 'Dice')}"
        + (f", HD95 {_fmt(m.get('HD95'), 'HD95')} mm" if "HD95" in m else "") + "</span>"
        for k, m in case["metrics"].items()
    )
    figure = "<p class='muted'>reference or prediction file not found; pass --labels DIR</p>"
    if ref_path and pred_path:
        ref, geometry = read_image(ref_path)
        pred, _ = read_image(pred_path)
        ignore = summary.get("settings", {}).get("ignore_value")
        if ignore is not None:
            ref = np.where(ref == ignore, IGNORE, ref)
        # nnU-Net layout: the image of labelsTr/CASE sits in imagesTr/CASE_0000.
        sibling = ref_path.parent.parent / ref_path.parent.name.replace("labels", "images", 1)
        found = [d / f"{case_id}_0000{ending}" for d in (images_dir, sibling) if d is not None]
        image_path = next((p for p in found if p.is_file()), None)
        image = read_image(image_path)[0].astype(np.float32) if image_path else None
        figure = f"<img src='{case_figure(image, ref, pred, geometry.spacing)}' alt='{html.escape(case_id)} overlay'>"
    return (f"<div class='case'><div class='case-head'><span class='tag {tag}'>{tag}</span><b>{html.escape(case_id)}</b>"
            f"<span class='muted'>mean Dice {_fmt(_case_score(case), 'Dice')}</span></div><div class='chips'>{chips}</div>{figure}</div>")


_CSS = """
:root { --ink:#1d2433; --muted:#6b7385; --line:#e3e7ee; --bg:#f5f7fa; --accent:#3557d6; }
* { box-sizing: border-box; }
body { margin:0; font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color:var(--ink); background:var(--bg); line-height:1.45; }
header { background:linear-gradient(120deg,#1f3c88,#3557d6); color:white; padding:28px 40px 22px; }
header h1 { margin:0 0 4px; font-size:24px; font-weight:600; }
header .meta { opacity:.85; font-size:13px; }
main { max-width:1180px; margin:0 auto; padding:24px 32px 48px; }
section { background:white; border:1px solid var(--line); border-radius:10px; padding:20px 24px; margin:18px 0;
          box-shadow:0 1px 2px rgba(20,30,60,.04); }
h2 { font-size:17px; margin:0 0 14px; } h3 { font-size:14px; margin:18px 0 8px; color:var(--muted); font-weight:600; }
.cards { display:flex; flex-wrap:wrap; gap:12px; margin-bottom:16px; }
.card { flex:1 1 130px; border:1px solid var(--line); border-radius:8px; padding:10px 14px; background:#fbfcfe; }
.card .label { font-size:11px; text-transform:uppercase; letter-spacing:.06em; color:var(--muted); }
.card .value { font-size:24px; font-weight:600; } .card small { font-size:12px; color:var(--muted); margin-left:3px; }
table { border-collapse:collapse; width:100%; font-size:13px; }
th { text-align:left; font-weight:600; color:var(--muted); border-bottom:2px solid var(--line); padding:7px 10px; }
td { border-bottom:1px solid var(--line); padding:7px 10px; } tfoot td { font-weight:600; border-bottom:none; }
td.num { font-variant-numeric: tabular-nums; white-space:nowrap; }
.sd { color:var(--muted); font-size:11px; } .key { color:var(--muted); font-size:11px; }
.good { background:#e7f6ec; } .ok { background:#fff6df; } .poor { background:#fde8e8; }
.swatch { display:inline-block; width:10px; height:10px; border-radius:2px; margin-right:7px; }
img { max-width:100%; display:block; margin:6px auto; }
.grid { display:grid; grid-template-columns:repeat(auto-fit,minmax(480px,1fr)); gap:16px; }
.case { border:1px solid var(--line); border-radius:8px; padding:12px; }
.case-head { display:flex; gap:10px; align-items:center; margin-bottom:6px; }
.tag { font-size:11px; padding:2px 8px; border-radius:10px; color:white; text-transform:uppercase; }
.tag.worst { background:#c0392b; } .tag.best { background:#2e8b57; }
.chips { display:flex; flex-wrap:wrap; gap:6px; margin-bottom:4px; }
.chip { font-size:11px; padding:2px 8px; border-radius:10px; border:1px solid var(--line); }
.muted { color:var(--muted); font-size:12px; }
pre { background:#f7f8fb; border:1px solid var(--line); border-radius:6px; padding:12px; font-size:12px; overflow:auto; max-height:480px; }
summary { cursor:pointer; color:var(--accent); font-size:13px; }
footer { text-align:center; color:var(--muted); font-size:12px; padding-bottom:24px; }
"""


def _summary_sections(summary_path: Path, label: str, images_dir: Path | None, labels_dir: Path | None, n_cases: int) -> str:
    summary = json.loads(summary_path.read_text())
    parts = [f"<section><h2>Evaluation &middot; {html.escape(label)}</h2>", _cards(summary), class_table(summary)]
    boxes = box_plots(summary, _metrics_present(summary))
    if boxes:
        parts.append(f"<h3>Distribution over cases</h3><img src='{boxes}' alt='box plots'>")
    parts.append("</section>")
    cases = [c for c in summary.get("metric_per_case", []) if _numeric(_case_score(c))]
    if cases and n_cases > 0:
        ranked = sorted(cases, key=_case_score)
        worst = ranked[:n_cases]
        best = [c for c in ranked[::-1][:n_cases] if c not in worst]
        tiles = [_case_section(c, summary, summary_path, images_dir, labels_dir, "worst") for c in worst]
        tiles += [_case_section(c, summary, summary_path, images_dir, labels_dir, "best") for c in best]
        names = summary.get("label_names", {})
        legend = "".join(f"<span class='swatch' style='background:{_colour(k, 0)}'></span>{html.escape(n)} &nbsp; "
                         for k, n in names.items() if k.isdigit())
        parts.append(f"<section><h2>Worst and best cases &middot; {html.escape(label)}</h2>"
                     f"<p class='muted'>Ranked by mean Dice over classes; each shows the axis-0 slice with the most foreground "
                     f"and disagreement. {legend}</p>"
                     f"<div class='grid'>{''.join(tiles)}</div></section>")
    return "".join(parts)


def build_report(
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    images_dir: str | Path | None = None,
    labels_dir: str | Path | None = None,
    n_cases: int = 2,
    title: str | None = None,
) -> Path:
    """Write the report for run folders / prediction folders / summary.json files to `out`."""
    if not inputs:
        raise InputError("no report inputs given", fix="pass one or more run or prediction folders")
    images_dir = Path(images_dir) if images_dir else None
    labels_dir = Path(labels_dir) if labels_dir else None
    for folder, flag in ((images_dir, "--images"), (labels_dir, "--labels")):
        if folder is not None and not folder.is_dir():
            raise NotFoundError("folder not found", path=folder, fix=f"pass an existing folder to {flag}")
    sources = [discover(p) for p in inputs]
    body = []
    for source in sources:
        for log in source.logs:
            records = read_log(log)
            figure = training_curves(records)
            if figure:
                last = records[-1]
                note = ", ".join(f"{k} {last[k]:.4g}" for k in list(last)[:6] if _numeric(last.get(k)))
                body.append(f"<section><h2>Training &middot; {html.escape(_short(log.parent))}</h2>"
                            f"<p class='muted'>{len(records)} epochs logged; last: {html.escape(note)}</p><img src='{figure}' alt='training curves'></section>")
        for summary_path in source.summaries:
            body.append(_summary_sections(summary_path, _short(summary_path.parent), images_dir, labels_dir, n_cases))
        if source.settings is not None:
            body.append(f"<section><h2>Settings &middot; {html.escape(_short(source.settings.parent))}</h2><details open><summary>settings.yaml</summary>"
                        f"<pre>{html.escape(source.settings.read_text())}</pre></details></section>")
    title = title or "voxseg report: " + ", ".join(_short(s.path) for s in sources)
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>{html.escape(title)}</h1><div class='meta'>generated {stamp} &middot; "
            f"{html.escape(' | '.join(str(s.path) for s in sources))}</div></header><main>{''.join(body)}</main>"
            f"<footer>voxseg &middot; metrics exclude ignore-label voxels; HD95 in millimetres</footer></body></html>")
    out = Path(out)
    atomic_write_text(out, page)
    return out


def _short(path: Path) -> str:
    parts = path.resolve().parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else str(path)
