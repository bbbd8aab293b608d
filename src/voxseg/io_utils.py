"""Atomic file writes: a crash or full disk never leaves a half-written file a later run trusts.

Temp files are named ``.<stem>.<random>.tmp<suffixes>`` beside the target, so a killed run's
leftovers are recognisable (glob ``.*.tmp*``) and can be removed by the next run. They are created
with the mode a plain ``open()`` gives (0o666 minus the umask, plus any default ACL of the folder):
the kernel applies the umask at creation, so colleagues can read the outputs as they can read the
user's other files -- unlike `tempfile.mkstemp`'s 0o600 -- and nothing has to read the umask
(``os.umask`` can only read it by changing it, which races with other threads).

A full disk is reported as one ``OSError(ENOSPC, filename=<final path>)`` whatever library was
writing: numpy, torch and ITK each fail differently on a full disk (a short-write OSError without
errno, a RuntimeError, or -- ITK's NIfTI writer -- only a message on stderr and a truncated file).
So after a failed write, and after a "successful" one, the free space of the target's filesystem is
checked; with less than `FULL_DISK_BYTES` left the temp file is dropped and ENOSPC raised.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from voxseg.errors import InputError

FULL_DISK_BYTES = 32 << 10  # after a short write a filesystem has ~0 bytes left; this leaves slack for metadata
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _create_temp(path: Path) -> Path:
    # Keep the real suffix last so libraries that pick a format by extension still work.
    for _ in range(100):
        tmp = path.parent / f".{path.stem}.{secrets.token_hex(4)}.tmp{''.join(path.suffixes)}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path))


def _disk_full(folder: Path) -> bool:
    if not hasattr(os, "statvfs"):
        return False
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    if st.f_blocks == 0:  # a filesystem that reports no size at all (some FUSE mounts)
        return False
    # f_bavail (space for unprivileged users): root writing into the reserved blocks is told the
    # disk is full a little early, as `df` would show it.
    return st.f_bavail * st.f_frsize < FULL_DISK_BYTES


def _no_space(path: Path, code: int = errno.ENOSPC) -> OSError:
    return OSError(code, os.strerror(code), str(path))


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    Raises ``OSError(ENOSPC)`` (or EDQUOT) naming `path` when the disk is (nearly) full, see the
    module docs.

    Args:
        path: the final file; its folder is created.

    Example:
        >>> with atomic_path(out / "model.pt") as tmp:   # doctest: +SKIP
        ...     torch.save(state, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_temp(path)
    try:
        try:
            yield tmp_path
        except Exception as e:
            if isinstance(e, OSError) and e.errno in _NO_SPACE:
                raise _no_space(path, e.errno) from e  # named by the final path, not the temp file
            if _disk_full(path.parent):
                raise _no_space(path) from e
            raise
        if _disk_full(path.parent):
            raise _no_space(path)  # the file may be truncated by a writer that hid the error
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array))


def remove_temp_files(folder: str | Path, stem: str = "") -> None:
    """Delete temp files an interrupted atomic write left in `folder` (those of outputs whose name
    starts with `stem`, when given: a process must not touch another's files in flight)."""
    for p in Path(folder).glob(f".{stem}*.tmp*"):
        p.unlink(missing_ok=True)


def check_replaceable(folder: Path, marker: str, what: str, overwrite: bool) -> None:
    """Refuse (InputError) to write `what` into `folder` unless it is absent, empty, or -- with
    `overwrite` -- an earlier `what` (it holds the file `marker`): nothing else is ever replaced."""
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return
    if not (folder / marker).is_file():
        raise InputError(
            f"output folder exists and is not {what}", path=folder, fix="choose a new -o folder (voxseg replaces nothing else)"
        )
    if not overwrite:
        raise InputError(f"output folder already holds {what}", path=folder, fix="pass --overwrite or another -o folder")


@contextmanager
def staged_folder(folder: Path) -> Iterator[Path]:
    """A temporary folder to build `folder` in; when the block succeeds it replaces `folder` (an
    earlier one or an empty one) with one rename, so a crash never leaves a half-written folder.

    The staging folder sits beside `folder`, on the same filesystem, so the rename is atomic.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.staging-", dir=folder.parent))
    try:
        yield staging
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
