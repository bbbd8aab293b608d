"""The `voxseg` command: sub-commands registered by one module per command group.

Known user mistakes (VoxsegError) become one `error: ...` line and exit code 1; `--debug` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from voxseg import __version__
from voxseg.errors import VoxsegError

COMMAND_MODULES = ("data", "plan", "train", "predict", "evaluate", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxseg", description="Self-configuring medical image segmentation.")
    parser.add_argument("--version", action="version", version=f"voxseg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"voxseg.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except VoxsegError as e:
        if args.debug:
            raise
        print(f"error: {e.one_line()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
