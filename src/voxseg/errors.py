"""Error types for user mistakes.

Every error a user can cause carries the offending path and the fix, so the CLI can print one line
instead of a traceback. Bugs in voxseg itself stay ordinary exceptions. Each type also derives from
the matching built-in (ValueError, or FileNotFoundError for `NotFoundError`), so library users can
write ``except ValueError`` as they would for any other bad input.
"""

from __future__ import annotations

from pathlib import Path


class VoxsegError(Exception):
    """A mistake in the user's input: names the file (if any) and how to fix it."""

    def __init__(self, message: str, *, path: str | Path | None = None, fix: str | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.fix:
            text += f" (fix: {self.fix})"
        return text

    def __str__(self) -> str:
        return self.one_line()


class DatasetError(VoxsegError, ValueError):
    """The raw dataset (dataset.json, image or label files) is malformed."""


class PlanError(VoxsegError, ValueError):
    """Planning inputs or overrides cannot be satisfied."""


class SettingsError(VoxsegError, ValueError):
    """A training/inference setting is unknown or has a bad value."""


class InputError(VoxsegError, ValueError):
    """A command-line argument or input folder is wrong."""


class CheckpointError(VoxsegError, ValueError):
    """A checkpoint, run folder or model file is missing parts or incompatible."""


class NotFoundError(VoxsegError, FileNotFoundError):
    """A file or folder the user named (or a stage needs) does not exist."""
