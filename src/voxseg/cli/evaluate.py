"""`voxseg evaluate` (metrics of a prediction folder) and `voxseg report` (one HTML page)."""

from __future__ import annotations

import argparse
from pathlib import Path

from voxseg.errors import InputError
from voxseg.evaluation.metrics import ALL_METRICS


def _metric_list(text: str) -> tuple[str, ...]:
    names = tuple(m.strip().lower() for m in text.split(",") if m.strip())
    unknown = [m for m in names if m not in ALL_METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown metrics {unknown or text!r}; choose from {','.join(ALL_METRICS)}")
    return names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="Dice, IoU, HD95, NSD of a prediction folder -> summary.json + .csv",
        description=(
            "Compare every predicted label file with the reference file of the same name and write per-case and mean "
            "metrics (per class, or per region for region datasets; the ignore label is left out) to summary.json and a "
            "CSV beside it, in nnU-Net's summary layout."
        ),
    )
    p.add_argument("pred_dir", type=Path, help="folder of predicted label files")
    p.add_argument("ref_dir", type=Path, help="folder of reference label files with the same names (e.g. labelsTr)")
    p.add_argument("-d", "--dataset-json", type=Path, required=True, help="dataset.json (labels, regions, ignore, file_ending)")
    p.add_argument("-o", "--output", type=Path, default=None, help="summary file (default PRED_DIR/summary.json)")
    p.add_argument(
        "--metrics", type=_metric_list, default=ALL_METRICS, help=f"comma list from {','.join(ALL_METRICS)} (default all)"
    )
    p.add_argument("--nsd-tolerance", type=float, default=1.0, metavar="MM", help="surface Dice tolerance in mm (default 1)")
    p.add_argument("-j", "--workers", type=int, default=1, help="parallel processes (default 1)")
    p.set_defaults(func=run_evaluate)

    p = sub.add_parser(
        "report",
        help="one self-contained HTML report of run and/or prediction folders",
        description=(
            "Write one HTML file (no external files) showing training curves and settings of run folders and the "
            "metrics of evaluated prediction folders, with overlays of the worst and best cases when the images are "
            "given; open it in a browser or attach it to a message."
        ),
    )
    p.add_argument(
        "inputs", type=Path, nargs="+", help="run folders (log.jsonl, settings.yaml), prediction folders or summary.json files"
    )
    p.add_argument("-o", "--output", type=Path, default=Path("report.html"), help="HTML file (default report.html)")
    p.add_argument(
        "--images", type=Path, default=None, help="image folder (CASE_0000<ending>) for the case overlays (default: no overlays)"
    )
    p.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="reference label folder, if moved since evaluation (default: the one evaluated against)",
    )
    p.add_argument("--cases", type=int, default=2, help="how many worst and best cases to show (default 2)")
    p.add_argument("--title", default=None, help="page title (default: voxseg report: <inputs>)")
    p.set_defaults(func=run_report)


def run_evaluate(args: argparse.Namespace) -> int:
    from voxseg.evaluation.evaluate import evaluate_folders

    if args.workers < 1:
        raise InputError(f"-j {args.workers} must be >= 1", fix="pass the number of processes, e.g. -j 4")
    summary = evaluate_folders(
        args.pred_dir,
        args.ref_dir,
        args.dataset_json,
        output=args.output,
        metrics=args.metrics,
        nsd_tolerance=args.nsd_tolerance,
        num_workers=args.workers,
    )
    out = args.output or args.pred_dir / "summary.json"
    names = summary["label_names"]
    for key, means in summary["mean"].items():
        print(
            f"{names.get(key, key):>20s} "
            + "  ".join(f"{m} {v:.4f}" for m, v in means.items() if m in ("Dice", "IoU", "HD95", "NSD"))
        )
    fg = summary["foreground_mean"]
    print(f"{'mean':>20s} " + "  ".join(f"{m} {v:.4f}" for m, v in fg.items() if m in ("Dice", "IoU", "HD95", "NSD")))
    print(f"wrote {out} and {Path(out).with_suffix('.csv')}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from voxseg.evaluation.report import build_report

    out = build_report(
        args.inputs, args.output, images_dir=args.images, labels_dir=args.labels, n_cases=args.cases, title=args.title
    )
    print(f"wrote {out}")
    return 0
