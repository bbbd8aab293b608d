"""The `voxseg` command: sub-commands registered by one module per command group.

Known user mistakes (VoxsegError) and a full disk or a folder we may not write to (OSError with
ENOSPC, EDQUOT, EACCES, EPERM, EROFS) become one `error: ...` line and exit code 1; `--debug` shows
the traceback instead. Outputs are written atomically, so after such an error the same command can
simply be run again.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from voxseg import __version__
from voxseg.errors import VoxsegError

COMMAND_MODULES = ("data", "plan", "train", "predict", "evaluate", "demo", "models", "settings")
_NO_SPACE = "free disk space (or write to another folder) and run the same command again; finished outputs are kept"
_NO_ACCESS = "check the permissions of that file or folder, or write somewhere else"
DEVICE_HELP = "where to compute; auto = a CUDA GPU if visible, else Apple's MPS if available, else the CPU"
OS_ERROR_FIXES = {
    errno.ENOSPC: _NO_SPACE,
    errno.EDQUOT: _NO_SPACE,
    errno.EACCES: _NO_ACCESS,
    errno.EPERM: _NO_ACCESS,
    errno.EROFS: _NO_ACCESS,
}


class HelpFormatter(argparse.HelpFormatter):
    """Ends every option's help with its default, unless the help already states it.

    Flags (store_true) are off unless given and say nothing; options whose default is None must
    say in their own words what happens without them (a test checks it).
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or action.nargs == 0
            or action.default in (None, argparse.SUPPRESS)
            or "default" in text.lower()
        ):
            return text
        shown = (
            (",".join(map(str, action.default)) or "none") if isinstance(action.default, (tuple, list)) else str(action.default)
        )
        return f"{text} (default: {shown.replace('%', '%%')})"


class Parser(argparse.ArgumentParser):
    """`voxseg`'s parser; sub-command parsers inherit its class, hence `HelpFormatter`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="voxseg",
        description="Self-configuring medical image segmentation: nnU-Net's data semantics "
        "(dataset.json, imagesTr/, labelsTr/), one command per stage. `voxseg COMMAND --help` describes each.",
    )
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
    except OSError as e:
        if args.debug or e.errno not in OS_ERROR_FIXES:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e} (fix: {OS_ERROR_FIXES[e.errno]})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
