"""The settings reference (`voxseg settings`, docs/settings.md) and the docs' references to the code."""

import argparse
import dataclasses
import re
from pathlib import Path

from voxseg.cli.main import build_parser, main
from voxseg.training.settings import Settings
from voxseg.training.settings_doc import REGENERATE, missing_help, render_markdown, settings_reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]


def test_every_setting_has_a_help_text_and_every_group_a_page():
    assert missing_help() == [], "add field(metadata={'help': ...}) to these settings"
    groups = settings_reference()
    assert [g.name for g in groups] == [f.name for f in dataclasses.fields(Settings)]
    for g in groups:
        assert g.page and (DOCS / g.page).is_file(), g.name
    keys = {s.key for g in groups for s in g.settings}
    assert {
        "training.epochs",
        "sampling.oversample_foreground",
        "augmentation.gamma_p",
        "loss.class_weights",
        "model.architecture",
        "heads[].target",
        "logging.tensorboard",
    } <= keys


def test_docs_settings_md_is_generated_from_the_code():
    page = DOCS / "settings.md"
    assert page.is_file() and page.read_text() == render_markdown(), f"docs/settings.md is out of date: run `{REGENERATE}`"


def test_settings_command_prints_one_key_one_group_or_the_page(capsys):
    assert main(["settings", "training.epochs"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1:] == ["  training.epochs = 1000  (int)", "      epochs to train"]

    assert main(["settings", "sampling"]) == 0
    listed = re.findall(r"^  (\S+) = ", capsys.readouterr().out, flags=re.MULTILINE)
    assert listed == [f"sampling.{f.name}" for f in dataclasses.fields(Settings().sampling)]

    assert main(["settings", "heads.loss"]) == 0
    assert "heads[].loss = bce  (str)" in capsys.readouterr().out

    assert main(["settings", "--markdown"]) == 0
    assert capsys.readouterr().out == render_markdown()


def test_settings_command_names_the_closest_key(capsys):
    assert main(["settings", "trainng.epoch"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: unknown setting 'trainng.epoch' (fix: did you mean 'training.epochs'?)"


def test_docs_pages_named_in_the_code_exist():
    named = {m for path in (ROOT / "src" / "voxseg").rglob("*.py") for m in re.findall(r"docs/([\w-]+\.md)", path.read_text())}
    assert named, "the scan finds the references"
    assert sorted(n for n in named if not (DOCS / n).is_file()) == []


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_commands_and_flags_in_the_docs_exist():
    commands = _subcommands()
    global_flags = {o for a in build_parser()._actions for o in a.option_strings}
    wrong = []
    for page in PAGES:
        text = page.read_text().replace("\\\n", " ")
        for n, line in enumerate(text.splitlines(), 1):
            for m in re.finditer(r"\bvoxseg ([a-z][a-z-]*)([^`#\n]*)", line):
                name, rest = m.groups()
                if name not in commands:  # prose ("voxseg reads ...")
                    continue
                flags = {o for a in commands[name]._actions for o in a.option_strings} | global_flags
                wrong += [
                    f"{page.name}:{n}: voxseg {name} has no {f}"
                    for f in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", rest)
                    if f not in flags
                ]
    assert wrong == []


def test_setting_keys_in_the_docs_exist():
    """Every `group.key` the docs tell users to set (after --set, or in backticks) is a real setting."""
    keys = {s.key for g in settings_reference() for s in g.settings}
    groups = "|".join(g.name for g in settings_reference() if not g.is_list)
    mentioned, wrong = 0, []
    for page in PAGES:
        for n, line in enumerate(page.read_text().splitlines(), 1):
            for m in re.finditer(rf"(?:--set\s+'?|`)((?:{groups})\.[a-z_]+)(?=[=`'\s])", line):
                mentioned += 1
                if m.group(1) not in keys:
                    wrong.append(f"{page.name}:{n}: {m.group(1)}")
    assert mentioned > 50, "the scan finds the mentions"
    assert wrong == []
