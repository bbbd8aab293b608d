"""JSON files read strictly: a key given twice in one object is an error, not a silent overwrite.

Python's json (and so nnU-Net) keeps the last of two equal keys, so a dataset.json with two
"labels" blocks, or a class name listed twice, trains on whichever came last without a word.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from voxseg.errors import DatasetError


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _key_lines(text: str, key: str) -> list[int]:
    """Line numbers where `key` appears as an object key (best effort, for the error message)."""
    pattern = re.compile(re.escape(json.dumps(key)) + r"\s*:")
    return [text.count("\n", 0, m.start()) + 1 for m in pattern.finditer(text)]


def loads_strict(text: str, path: Path, fix: str) -> object:
    """Parse `text` (the contents of `path`); DatasetError naming the line or duplicated key."""
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicates)
    except _DuplicateKey as dup:
        lines = sorted(set(_key_lines(text, dup.key)))
        where = f" (the key appears on line{'s' if len(lines) > 1 else ''} {', '.join(map(str, lines))})" if lines else ""
        raise DatasetError(
            f"duplicate key '{dup.key}'{where}: JSON keeps only the last one", path=path, fix=f"keep one '{dup.key}' entry"
        ) from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}", path=path, fix=fix) from None


def load_strict(path: Path, fix: str = "fix the JSON syntax") -> object:
    """Read and parse a JSON file strictly (see module docstring)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DatasetError("not a UTF-8 text file", path=path, fix=fix) from None
    return loads_strict(text, Path(path), fix)
