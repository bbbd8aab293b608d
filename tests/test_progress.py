"""voxseg.progress: tqdm on a terminal, periodic plain lines in logs."""

import io
import re
import subprocess
import sys
import time

from voxseg.progress import Progress, track


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_have_count_rate_eta_and_no_carriage_returns():
    log = io.StringIO()
    with Progress(4, "predict", unit="case", stream=log, interval=0) as bar:
        for _ in range(4):
            time.sleep(0.002)
            bar.set_postfix("loss=0.5")
            bar.update()
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 5, lines  # one per update (interval 0) and the closing line
    assert re.fullmatch(r"predict: 2/4 case \(50%\), [\d.]+ case/s, ETA \d\d:\d\d, loss=0\.5", lines[1])
    assert re.fullmatch(r"predict: 4/4 case in \d\d:\d\d \([\d.]+ case/s\)", lines[-1])


def test_sub_progress_moves_the_cohort_eta_within_a_case():
    log = io.StringIO()
    with Progress(2, "predict", unit="case", stream=log, interval=0) as bar:
        with bar.sub(4, unit="tile") as tiles:
            for _ in range(2):
                time.sleep(0.002)
                tiles.update()
        bar.update()
    lines = log.getvalue().splitlines()
    assert lines[1].startswith("predict: 0/2 case (25%) [tile 2/4], ")  # 2 of 4 tiles of case 1 of 2
    assert "ETA" in lines[1]
    assert lines[2].startswith("predict: 1/2 case (50%), "), "a finished case replaces its tile count"


def test_lines_are_rate_limited_and_short_tasks_print_nothing():
    log = io.StringIO()
    start = time.monotonic()
    for _ in track(range(40), "preprocess", unit="case", stream=log, interval=0.05):
        time.sleep(0.005)
    elapsed = time.monotonic() - start
    lines = log.getvalue().splitlines()
    assert 1 <= len(lines) <= elapsed / 0.05 + 2
    quiet = io.StringIO()
    assert list(track(range(3), "verify", stream=quiet, interval=3600)) == [0, 1, 2]
    assert quiet.getvalue() == "", "a task shorter than the interval stays silent"


def test_unknown_total_and_disabled_bars():
    log = io.StringIO()
    assert list(track(iter("abc"), "scan", unit="file", stream=log, interval=0)) == ["a", "b", "c"]
    assert log.getvalue().splitlines()[1].startswith("scan: 2 file, ")
    off = io.StringIO()
    with Progress(3, "epoch 0", stream=off, interval=0, enabled=False) as bar:
        bar.update()
        bar.sub(2).update()
    assert off.getvalue() == ""


def test_a_terminal_gets_a_tqdm_bar():
    tty = Terminal()
    with Progress(3, "epoch 0", unit="it", stream=tty, interval=0) as bar:
        for _ in range(3):
            bar.update()
    assert "\r" in tty.getvalue() and "epoch 0" in tty.getvalue()


def test_cli_output_to_a_log_file_has_no_carriage_returns(demo_dataset, tmp_path):
    # stderr is a pipe here, as in a batch job's log: tqdm's \r redraws would pile up in one line.
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "voxseg",
            "plan",
            str(demo_dataset),
            "-o",
            str(tmp_path / "work"),
            "--configs",
            "3d_fullres",
            "-j",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stderr and "\r" not in out.stdout
