"""`voxseg settings [KEY] [--markdown]`: every training setting with its default and meaning."""

from __future__ import annotations

import argparse

from voxseg.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "settings",
        help="list the training settings with their defaults and meanings",
        description=(
            "Print the settings `voxseg train` accepts (in a --settings YAML file or as --set group.key=value): every "
            "group, one group or one key, each with its type, default and meaning. The texts come from the settings "
            "dataclasses, as docs/settings.md does; --markdown prints that page."
        ),
    )
    p.add_argument(
        "key",
        nargs="?",
        default=None,
        help="a group (training, sampling, augmentation, loss, model, heads, logging) or one key such as "
        "training.epochs (default: every setting)",
    )
    p.add_argument(
        "--markdown", action="store_true", help="print the whole reference as Markdown, the source of docs/settings.md"
    )
    p.set_defaults(func=run_settings)


def run_settings(args: argparse.Namespace) -> int:
    from voxseg.training.settings_doc import render_markdown, render_text, select

    if args.markdown:
        if args.key is not None:
            raise InputError("--markdown prints the whole reference", fix=f"drop '{args.key}' or --markdown")
        print(render_markdown(), end="")
        return 0
    print(render_text(select(args.key)), end="")
    return 0
