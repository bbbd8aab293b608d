"""`voxseg report`: the HTML content, and that headless Chromium renders a non-blank page."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from voxseg.cli.evaluate import register
from voxseg.data.io import Geometry, write_image
from voxseg.errors import InputError, NotFoundError
from voxseg.evaluation.evaluate import evaluate_folders
from voxseg.evaluation.report import build_report

GEOMETRY = Geometry((3.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as training leaves it, with its validation predictions evaluated."""
    tmp_path = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    fold = tmp_path / "run" / "fold_0"
    fold.mkdir(parents=True)
    with (fold / "log.jsonl").open("w") as f:
        for e in range(12):
            f.write(
                json.dumps(
                    {
                        "epoch": e,
                        "train/loss": 1 / (e + 1),
                        "val/loss": 1.2 / (e + 1) + 0.05,
                        "val/dice/liver": 1 - 0.5 / (e + 1),
                        "val/dice/tumour": 0.8 - 0.6 / (e + 1),
                        "lr": 0.01 * (1 - e / 12) ** 0.9,
                        "epoch_time": 30 + e % 3,
                        "data_wait": 0.5,
                        "note": "text is skipped",
                    }
                )
                + "\n"
            )
        f.write('{"epoch": 12, "train/lo')  # torn line of a run still going
    (fold / "settings.yaml").write_text("training:\n  epochs: 12\n  optimizer: sgd  # <b>escaped</b>\n")
    images, labels, preds = tmp_path / "imagesTr", tmp_path / "labelsTr", fold / "validation"
    zz, yy, xx = np.indices((8, 32, 32))
    for i, quality in enumerate((0.0, 1.0, 2.5, 4.0)):
        ref = np.zeros((8, 32, 32), np.uint8)
        body = (yy - 16) ** 2 + (xx - 16) ** 2 < 100
        ref[body] = 1
        ref[((yy - 14) ** 2 + (xx - 18) ** 2 < 12) & (zz > 1) & (zz < 6)] = 2
        pred = ref.copy()
        pred[((yy - 16) ** 2 + (xx - 16 - quality) ** 2 < 100) & (pred == 0)] = 1
        if quality > 3:
            pred[pred == 2] = 1
        write_image(labels / f"case{i}.nrrd", ref, GEOMETRY)
        write_image(preds / f"case{i}.nrrd", pred, GEOMETRY)
        write_image(images / f"case{i}_0000.nrrd", (ref * 40 + rng.normal(0, 10, ref.shape)).astype(np.float32), GEOMETRY)
    (tmp_path / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2}, "file_ending": ".nrrd"})
    )
    evaluate_folders(preds, labels, tmp_path / "dataset.json", progress=False)
    return tmp_path / "run"


@pytest.fixture(scope="module")
def report(run_dir):
    return build_report([run_dir], run_dir.parent / "report.html", images_dir=run_dir.parent / "imagesTr", n_cases=1)


def test_html_is_self_contained_with_tables_figures_and_settings(report):
    page = report.read_text()
    assert page.startswith("<!DOCTYPE html>")
    images = re.findall(r"<img src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    # training curves + box plots + worst + best case overlays
    assert len(images) == 4 and all(len(i) > 2000 for i in images)
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", page), "no external assets"
    assert "<table>" in page and "liver" in page and "tumour" in page and "HD95 (mm)" in page
    assert "12 epochs logged" in page
    assert "&lt;b&gt;escaped&lt;/b&gt;" in page and "<b>escaped</b>" not in page
    assert page.count("class='tag worst'") == 1 and page.count("class='tag best'") == 1
    assert "case3" in page and "case0" in page  # worst (tumour missed, shifted) and best (perfect)


def test_report_without_images_and_from_a_summary_file(run_dir, tmp_path):
    summary = run_dir / "fold_0" / "validation" / "summary.json"
    out = build_report([summary], tmp_path / "r.html", n_cases=1, title="Liver <CT>")
    page = out.read_text()
    assert "Liver &lt;CT&gt;" in page and "Training" not in page
    assert page.count("alt='case") == 2  # overlays of the labels even without images


def test_bad_inputs_and_cli(run_dir, tmp_path, capsys):
    with pytest.raises(InputError, match=r"no log\.jsonl"):
        build_report([run_dir.parent / "imagesTr"], tmp_path / "x.html")
    with pytest.raises(NotFoundError, match="not found"):
        build_report([run_dir], tmp_path / "x.html", images_dir=tmp_path / "missing")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["report", str(run_dir), "-o", str(tmp_path / "cli.html"), "--cases", "0"])
    assert args.func(args) == 0 and (tmp_path / "cli.html").is_file()
    assert "wrote" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")
def test_chromium_renders_a_non_blank_page(report, tmp_path):
    import matplotlib.image

    out = report
    shot = tmp_path / "shot.png"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--hide-scrollbars",
        "--window-size=1280,2400",
        f"--screenshot={shot}",
        out.as_uri(),
    ]
    subprocess.run(cmd, check=True, timeout=120, capture_output=True)
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000
    colours = np.unique((pixels.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colours) > 200, "a rendered report has text, charts and overlays, not a blank page"
    assert pixels.std() > 0.1
