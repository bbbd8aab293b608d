"""One self-contained HTML report of a run or a prediction folder.

A single file (PNG figures inline as base64, CSS inline, no scripts, no external assets) so it can be
mailed, attached to a ticket or opened offline on a hospital workstation. It shows the training
curves (`log.jsonl`), headline numbers and a per-class table with box plots (`summary.json`), the
worst and best cases as slice overlays of image, reference and prediction, and the settings used
(`settings.yaml`). Sections whose input is missing are left out rather than failing.
Hand-written HTML instead of a templating or plotting-to-HTML library: the page is small and this
keeps the dependency list at matplotlib. Figures live in `figures.py`, the stylesheet in
`report.css`, the page assembly here.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from voxseg.data.io import read_channels, read_image
from voxseg.data.labels import IGNORE
from voxseg.errors import InputError, NotFoundError
from voxseg.evaluation.metrics import nanmean
from voxseg.evaluation.report.figures import (
    box_plots,
    case_figure,
    colour,
    training_curves,
)
from voxseg.io_utils import atomic_write_text
from voxseg.runlog import numeric, read_log

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
        raise InputError(
            "no log.jsonl, summary.json or settings.yaml found",
            path=path,
            fix="pass a run folder (fold_N) or a folder evaluated with `voxseg evaluate`",
        )
    return source


def _fmt(v, metric: str) -> str:
    if not numeric(v):
        return "&ndash;"
    return f"{v:.2f}" if metric == "HD95" else f"{v:.3f}"


def _dice_class(v) -> str:
    if not numeric(v):
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
            col = [v[m] for v in values if numeric(v.get(m))]
            spread = f"<span class='sd'>&plusmn; {_fmt(float(np.std(col)), m)}</span>" if len(col) > 1 else ""
            cells.append(
                f"<td class='num {_dice_class(means.get(m)) if m == 'Dice' else ''}'>{_fmt(means.get(m), m)} {spread}</td>"
            )
        n = sum(1 for v in values if v.get("n_ref", 0) > 0)
        swatch = f"<span class='swatch' style='background:{colour(key, i)}'></span>"
        rows.append(
            f"<tr><td>{swatch}{html.escape(names.get(key, key))} <span class='key'>{html.escape(key)}</span></td>"
            f"{''.join(cells)}<td class='num'>{n}/{len(values)}</td></tr>"
        )
    fg = summary.get("foreground_mean", {})
    foot = "".join(f"<td class='num'>{_fmt(fg.get(m), m)}</td>" for m in metrics)
    return (
        f"<table><thead><tr><th>class</th>{head}<th>cases with class</th></tr></thead><tbody>{''.join(rows)}</tbody>"
        f"<tfoot><tr><td>mean over classes</td>{foot}<td></td></tr></tfoot></table>"
    )


def _cards(summary: dict) -> str:
    fg = summary.get("foreground_mean", {})
    items = [("cases", str(len(summary.get("metric_per_case", []))), "")]
    items += [(f"mean {m}", _fmt(fg.get(m), m), "mm" if m == "HD95" else "") for m in _metrics_present(summary)]
    return (
        "<div class='cards'>"
        + "".join(
            f"<div class='card'><div class='label'>{html.escape(k)}</div><div class='value'>{v}<small>{u}</small></div></div>"
            for k, v, u in items
        )
        + "</div>"
    )


def _resolve(recorded: str, summary_path: Path, override_dir: Path | None, name: str) -> Path | None:
    candidates = ([override_dir / name] if override_dir else []) + [Path(recorded), summary_path.parent / Path(recorded).name]
    return next((p for p in candidates if p.is_file()), None)


def _case_section(
    case: dict, summary: dict, summary_path: Path, images_dir: Path | None, labels_dir: Path | None, tag: str
) -> str:
    ref_name = Path(case["reference_file"]).name
    case_id = case.get("case_id") or ref_name.split(".")[0]
    ending = ref_name[len(case_id) :]
    ref_path = _resolve(case["reference_file"], summary_path, labels_dir, ref_name)
    pred_path = _resolve(case["prediction_file"], summary_path, None, Path(case["prediction_file"]).name)
    names = summary.get("label_names", {})
    chips = "".join(
        f"<span class='chip {_dice_class(m.get('Dice'))}'>{html.escape(names.get(k, k))}: Dice {_fmt(m.get('Dice'), 'Dice')}"
        + (f", HD95 {_fmt(m.get('HD95'), 'HD95')} mm" if "HD95" in m else "")
        + "</span>"
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
        # JPEG datasets keep PNG labels beside .jpg images: look for the image under any ending.
        found = [p for d in (images_dir, sibling) if d is not None and d.is_dir() for p in sorted(d.glob(f"{case_id}_0000.*"))]
        image_path = next((p for p in found if p.name.endswith(ending)), found[0] if found else None)
        image = read_channels(image_path)[0][0].astype(np.float32) if image_path else None
        figure = f"<img src='{case_figure(image, ref, pred, geometry.spacing)}' alt='{html.escape(case_id)} overlay'>"
    return (
        f"<div class='case'><div class='case-head'><span class='tag {tag}'>{tag}</span><b>{html.escape(case_id)}</b>"
        f"<span class='muted'>mean Dice {_fmt(_case_score(case), 'Dice')}</span></div><div class='chips'>{chips}</div>{figure}</div>"
    )


def _summary_sections(summary_path: Path, label: str, images_dir: Path | None, labels_dir: Path | None, n_cases: int) -> str:
    summary = json.loads(summary_path.read_text())
    parts = [f"<section><h2>Evaluation &middot; {html.escape(label)}</h2>", _cards(summary), class_table(summary)]
    boxes = box_plots(summary, _metrics_present(summary))
    if boxes:
        parts.append(f"<h3>Distribution over cases</h3><img src='{boxes}' alt='box plots'>")
    parts.append("</section>")
    cases = [c for c in summary.get("metric_per_case", []) if numeric(_case_score(c))]
    if cases and n_cases > 0:
        ranked = sorted(cases, key=_case_score)
        worst = ranked[:n_cases]
        best = [c for c in ranked[::-1][:n_cases] if c not in worst]
        tiles = [_case_section(c, summary, summary_path, images_dir, labels_dir, "worst") for c in worst]
        tiles += [_case_section(c, summary, summary_path, images_dir, labels_dir, "best") for c in best]
        names = summary.get("label_names", {})
        legend = "".join(
            f"<span class='swatch' style='background:{colour(k, 0)}'></span>{html.escape(n)} &nbsp; "
            for k, n in names.items()
            if k.isdigit()
        )
        parts.append(
            f"<section><h2>Worst and best cases &middot; {html.escape(label)}</h2>"
            f"<p class='muted'>Ranked by mean Dice over classes; each shows the axis-0 slice with the most foreground "
            f"and disagreement. {legend}</p>"
            f"<div class='grid'>{''.join(tiles)}</div></section>"
        )
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
                note = ", ".join(f"{k} {last[k]:.4g}" for k in list(last)[:6] if numeric(last.get(k)))
                body.append(
                    f"<section><h2>Training &middot; {html.escape(_short(log.parent))}</h2>"
                    f"<p class='muted'>{len(records)} epochs logged; last: {html.escape(note)}</p><img src='{figure}' alt='training curves'></section>"
                )
        for summary_path in source.summaries:
            body.append(_summary_sections(summary_path, _short(summary_path.parent), images_dir, labels_dir, n_cases))
        if source.settings is not None:
            body.append(
                f"<section><h2>Settings &middot; {html.escape(_short(source.settings.parent))}</h2><details open><summary>settings.yaml</summary>"
                f"<pre>{html.escape(source.settings.read_text())}</pre></details></section>"
            )
    title = title or "voxseg report: " + ", ".join(_short(s.path) for s in sources)
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{_css()}</style></head><body>"
        f"<header><h1>{html.escape(title)}</h1><div class='meta'>generated {stamp} &middot; "
        f"{html.escape(' | '.join(str(s.path) for s in sources))}</div></header><main>{''.join(body)}</main>"
        f"<footer>voxseg &middot; metrics exclude ignore-label voxels; HD95 in millimetres</footer></body></html>"
    )
    out = Path(out)
    atomic_write_text(out, page)
    return out


def _css() -> str:
    return resources.files(__package__).joinpath("report.css").read_text()


def _short(path: Path) -> str:
    parts = path.resolve().parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else str(path)
