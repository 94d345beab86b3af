"""The one Rich progress bar the library's long jobs show (train, eval-c, corrupt, attack)."""

from __future__ import annotations

from typing import Any


def progress_bar(
    description: str = "{task.description}",
    *,
    stats_field: str | None = None,
    remaining: bool = True,
    remaining_label: str | None = None,
    console: Any = None,
    enabled: bool = True,
    transient: bool = False,
) -> Any:
    """A ``rich.progress.Progress``: description, bar, done/total, elapsed and (optionally)
    remaining time. ``stats_field`` adds a column showing that task field (e.g. loss and
    accuracy); ``remaining_label`` is printed before the remaining time."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[Any] = [TextColumn(description), BarColumn(), MofNCompleteColumn()]
    if stats_field is not None:
        columns.append(TextColumn(f"{{task.fields[{stats_field}]}}"))
    columns.append(TimeElapsedColumn())
    if remaining:
        if remaining_label is not None:
            columns.append(TextColumn(remaining_label))
        columns.append(TimeRemainingColumn())
    return Progress(*columns, console=console, disable=not enabled, transient=transient)
