"""The one Rich progress bar the library's long jobs show (train, eval-c, corrupt, attack)."""

from __future__ import annotations

import sys
import time
from typing import Any


def progress_bar(
    description: str = "{task.description}",
    *,
    description_style: str = "",
    stats_field: str | None = None,
    remaining: bool = True,
    remaining_label: str | None = None,
    console: Any = None,
    enabled: bool = True,
    transient: bool = False,
) -> Any:
    """A ``rich.progress.Progress``: description, bar, done/total, elapsed and (optionally)
    remaining time. ``stats_field`` adds a column showing that task field (e.g. loss and
    accuracy); ``remaining_label`` is printed before the remaining time. Descriptions and stats
    print as they are (a task named after ``run[1]`` is text, not Rich markup), in
    ``description_style``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[Any] = [
        TextColumn(description, style=description_style, markup=False),
        BarColumn(),
        MofNCompleteColumn(),
    ]
    if stats_field is not None:
        columns.append(TextColumn(f"{{task.fields[{stats_field}]}}", markup=False))
    columns.append(TimeElapsedColumn())
    if remaining:
        if remaining_label is not None:
            columns.append(TextColumn(remaining_label))
        columns.append(TimeRemainingColumn())
    return Progress(*columns, console=console, disable=not enabled, transient=transient)


class ProgressLines:
    """The bar's stand-in where nobody watches a terminal (logs, CI, ``nohup``): a line on
    ``stream`` (default stderr) each time the work moves on to a new part, at most one every
    ``every`` seconds within a part, and one at the end. A part is the first word of the task's
    description (``gaussian_noise`` of ``gaussian_noise s3``). Implements the part of
    ``rich.progress.Progress`` the long jobs use: ``add_task``, ``update``, ``advance`` and the
    context manager."""

    def __init__(self, name: str, *, stream: Any = None, every: float = 60.0) -> None:
        self.name, self.stream, self.every = name, stream, every
        self.total = 0.0
        self.done = 0.0
        self.part = ""
        self.t0 = self.last = 0.0

    def __enter__(self) -> ProgressLines:
        self.t0 = self.last = time.monotonic()
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None and self.done:
            self._line("done")

    def add_task(self, description: str, total: float | None = None, **_: Any) -> int:
        self.total = float(total or 0)
        self.part = description.split(" ", 1)[0]
        return 0

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def update(
        self, task: int, *, description: str | None = None, advance: float = 0, **_: Any
    ) -> None:
        part = self.part if description is None else description.split(" ", 1)[0]
        now = time.monotonic()
        if part != self.part or now - self.last >= self.every:
            self._line(part)
            self.last = now
        self.part = part
        self.done += advance

    def _line(self, what: str) -> None:
        elapsed = time.monotonic() - self.t0
        line = f"{self.name}: {what}, {self.done:,.0f}/{self.total:,.0f}"
        if self.total:
            line += f" ({100 * self.done / self.total:.1f} %)"
        line += f", {_clock(elapsed)} elapsed"
        if 0 < self.done < self.total:
            line += f", ~{_clock(elapsed * (self.total - self.done) / self.done)} left"
        print(line, file=self.stream or sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def resolve_mode(mode: bool | str) -> str:
    """``rich``, ``plain`` or ``none`` for a progress mode: ``auto`` is a bar when stderr is a
    terminal (where the bars go), lines otherwise; ``True`` / ``False`` are ``rich`` / ``none``.
    Anything else is refused in one line."""
    if mode is True or mode is False:
        return "rich" if mode else "none"
    if mode == "auto":
        return "rich" if sys.stderr.isatty() else "plain"
    if mode in ("rich", "plain", "none"):
        return str(mode)
    from robustcli.errors import RobustError

    raise RobustError(f"unknown progress mode {mode!r}: use auto, rich, plain or none")


def work_progress(mode: bool | str, name: str, description: str, **bar: Any) -> Any:
    """The display of a long job for a progress mode (:func:`resolve_mode`): a Rich bar
    (``bar``: :func:`progress_bar`'s options), lines (:class:`ProgressLines`) or nothing (a
    disabled bar)."""
    mode = resolve_mode(mode)
    if mode == "plain":
        return ProgressLines(name)
    return progress_bar(description, enabled=mode == "rich", **bar)
