"""Progress reporting that reads well on a terminal and in a log file.

On a terminal this is a plain tqdm bar. When the stream (stderr) is not a terminal -- a batch job's
log, ``| tee``, CI -- tqdm's carriage-return redraws pile up into one endless line; there a plain
line is printed every `LOG_INTERVAL_S` seconds instead (count/total, rate, ETA), formatted by
tqdm's own `format_meter`, plus a closing line for tasks that ran long enough to be reported.

`Progress.sub(total)` reports progress within the current item (the tiles of a case): on a
terminal as a second bar under the first; in a log as part of the line, and there the ETA counts
the finished fraction of the current item, so a cohort of a few large cases still gets a moving
ETA. Only the plain-line policy is ours; the bars and time formats are tqdm's.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sized
from typing import TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")
LOG_INTERVAL_S = 10.0


def _rate(per_second: float, unit: str) -> str:
    if per_second <= 0:
        return f"? {unit}/s"
    return f"{per_second:.3g} {unit}/s" if per_second >= 1 else f"{1 / per_second:.3g} s/{unit}"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """A progress bar over `total` items (None: unknown), shown on `stream` (default stderr).

    Args:
        total: number of items, or None when unknown (no percentage or ETA).
        desc: what is being counted, e.g. "predict".
        unit: the item's name, e.g. "case".
        enabled: False shows nothing (e.g. on non-main ranks).
        stream: where to write; a terminal gets a tqdm bar, anything else plain lines.
        interval: seconds between plain lines.

    Example:
        >>> with Progress(len(cases), "predict", unit="case") as bar:   # doctest: +SKIP
        ...     for case in cases:
        ...         with bar.sub(n_tiles, unit="tile") as tiles:
        ...             for tile in range(n_tiles):
        ...                 tiles.update()
        ...         bar.update()
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        unit: str = "it",
        enabled: bool = True,
        stream: TextIO | None = None,
        interval: float = LOG_INTERVAL_S,
    ):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.n = 0
        self._part = 0.0  # finished fraction of the current item (from sub-progress)
        self._sub = ""
        self._postfix = ""
        self._start = self._last_line = time.monotonic()
        self._lines = 0
        self._lock = threading.Lock()
        self._closed = False
        self._bar = None
        if enabled and _is_terminal(self.stream):
            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=False, file=self.stream, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        """`n` more items finished."""
        if not self.enabled:
            return
        with self._lock:
            self.n += n
            self._part, self._sub = 0.0, ""
            if self._bar is not None:
                self._bar.update(n)
            else:
                self._maybe_line()

    def set_postfix(self, text: str) -> None:
        """Text shown after the counts, e.g. ``"loss=0.512"``."""
        if not self.enabled:
            return
        with self._lock:
            self._postfix = text
            if self._bar is not None:
                self._bar.set_postfix_str(text, refresh=False)

    def sub(self, total: int, unit: str = "it") -> SubProgress:
        """Progress within the current item; `update()` the outer bar when the item is done."""
        return SubProgress(self, total, unit)

    def close(self) -> None:
        if not self.enabled or self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._lines:
            # A task long enough to be reported also says that it finished.
            elapsed = time.monotonic() - self._start
            count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
            self._write(
                f"{self.desc}: {count} {self.unit} in {tqdm.format_interval(elapsed)} "
                f"({_rate(self.n / elapsed if elapsed > 0 else 0.0, self.unit)})"
            )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plain lines -------------------------------------------------------------------------------
    def _sub_progress(self, done: int, total: int, unit: str) -> None:
        with self._lock:
            self._part = min(done / total, 1.0) if total else 0.0
            self._sub = f"{unit} {done}/{total}"
            self._maybe_line()

    def _maybe_line(self) -> None:
        now = time.monotonic()
        if now - self._last_line < self.interval:
            return
        self._last_line = now
        self._lines += 1
        self._write(self.line(now - self._start))

    def line(self, elapsed: float) -> str:
        """The plain progress line after `elapsed` seconds (what a log file shows)."""
        position = self.n + self._part
        rate = position / elapsed if elapsed > 0 else 0.0
        if self.total:
            text = f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * position / self.total:.0f}%)"
        else:
            text = f"{self.desc}: {self.n} {self.unit}"
        if self._sub:
            text += f" [{self._sub}]"
        text += f", {_rate(rate, self.unit)}"
        if self.total and rate > 0:
            text += f", ETA {tqdm.format_interval((self.total - position) / rate)}"
        return text + (f", {self._postfix}" if self._postfix else "")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken log stream must not stop the work
            pass


class SubProgress:
    """Progress within the current item of a `Progress` (e.g. tiles of one case)."""

    def __init__(self, parent: Progress, total: int, unit: str):
        self.parent, self.total, self.unit = parent, total, unit
        self.n = 0
        self._bar = None
        if parent._bar is not None:
            self._bar = tqdm(total=total, desc=f"  {unit}s", unit=unit, leave=False, file=parent.stream, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        if not self.parent.enabled:
            return
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        else:
            self.parent._sub_progress(self.n, self.total, self.unit)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> SubProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(
    items: Iterable[T],
    desc: str,
    *,
    total: int | None = None,
    unit: str = "it",
    enabled: bool = True,
    stream: TextIO | None = None,
    interval: float = LOG_INTERVAL_S,
) -> Iterator[T]:
    """Yield `items`, counting one step each (the drop-in for ``tqdm(items, ...)``).

    Example:
        >>> results = [f(x) for x in track(cases, "evaluate", unit="case")]   # doctest: +SKIP
    """
    if total is None:
        total = len(items) if isinstance(items, Sized) else None
    with Progress(total, desc, unit=unit, enabled=enabled, stream=stream, interval=interval) as bar:
        for item in items:
            yield item
            bar.update()
