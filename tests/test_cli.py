"""The `voxseg` command line: self-describing sub-commands, plan-and-preprocess, one-line errors."""

import argparse
import json
import shutil

import pytest

from voxseg.cli.main import build_parser, main


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_command_describes_itself_and_every_option_states_its_default():
    missing = []
    for name, p in _subcommands().items():
        if not p.description or len(p.description.split()) < 12:
            missing.append(f"{name}: no one-paragraph description=")
        formatter = p._get_formatter()
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            text = formatter._get_help_string(action) if action.help else ""
            if not text:
                missing.append(f"{label}: no help")
            elif action.option_strings and action.nargs != 0 and not action.required and "default" not in text.lower():
                missing.append(f"{label}: help does not state the default: {text!r}")
    assert not missing, "\n".join(missing)


def test_help_shows_the_description_and_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        main(["preprocess", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # undo line wrapping
    assert "Cases already stored with the same plan are kept" in out
    assert "(default: all cores)" in out and "(default: every planned configuration)" in out


def test_plan_and_preprocess_takes_the_options_of_both():
    commands = _subcommands()

    def options(name: str) -> set[str]:
        return {o for a in commands[name]._actions for o in a.option_strings}

    assert options("plan-and-preprocess") == options("plan") | (options("preprocess") - {"--configs"})


def test_plan_and_preprocess_runs_both_steps(demo_dataset, tmp_path, capsys):
    work = tmp_path / "work"
    assert (
        main(
            [
                "plan-and-preprocess",
                str(demo_dataset),
                "-o",
                str(work),
                "--configs",
                "3d_fullres",
                "--patch-size",
                "16,32,32",
                "-j",
                "1",
            ]
        )
        == 0
    )
    plans = json.loads((work / "plans.json").read_text())
    assert list(plans["configurations"]) == ["3d_fullres"]
    stored = sorted(p.stem for p in (work / "store" / "3d_fullres").glob("*.json"))
    assert stored == sorted(p.name[: -len("_0000.nii.gz")] for p in (demo_dataset / "imagesTr").iterdir())
    assert (work / "splits.json").is_file()
    assert "4 case(s) preprocessed" in capsys.readouterr().out


@pytest.mark.parametrize("broken", [1, 2])
def test_plan_reports_each_verify_problem_once(demo_dataset, tmp_path, capsys, broken):
    raw = tmp_path / "raw"
    shutil.copytree(demo_dataset, raw)
    labels = sorted((raw / "labelsTr").iterdir())[:broken]
    for label in labels:
        label.unlink()
    assert main(["plan", str(raw), "-o", str(tmp_path / "work"), "-j", "1"]) == 1
    err = capsys.readouterr().err
    for label in labels:
        assert err.count(label.name) == 1, err
    error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1
    assert f"{broken} problem{'s' if broken > 1 else ''} in the dataset, listed above" in error_lines[0]
