"""One renderer per output format for result tables (pandas DataFrames).

Every command builds a DataFrame and hands it here, so the terminal table, CSV, Markdown and JSON
always show the same numbers.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from robustcli.errors import RobustError

if TYPE_CHECKING:  # pandas is imported where a table is built: the CLI starts without it
    import pandas as pd

FORMATS = ("table", "json", "csv", "markdown")


def check_format(fmt: str, choices: Sequence[str] = FORMATS, option: str = "--format") -> str:
    """``fmt`` if it is one of ``choices``; else a one-line ``RobustError`` naming them.

    Commands call this before any work, so ``--format xml`` costs nothing and writes nothing."""
    if fmt not in choices:
        raise RobustError(f"unknown {option} {fmt!r}: choose one of {', '.join(choices)}")
    return fmt


def make_console(stderr: bool = False) -> Console:
    """The terminal console every command prints through. It prints text as it is: no Rich
    markup (a path ``run[1]`` or a label ``td-nin [high]`` is not a style tag) and no ``:name:``
    emoji codes (``package.module:factory:`` is not an emoji). A styled message is built with
    :func:`styled`."""
    return Console(stderr=stderr, emoji=False, markup=False)


def styled(label: str, style: str, text: str = "") -> Text:
    """``label`` in ``style``, then `` text`` as it is (user text: never markup), e.g.
    ``styled("error:", "bold red", str(exc))``."""
    return Text.assemble((label, style), f" {text}" if text else "")


def _cell(value: Any, floatfmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return format(value, floatfmt)
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _text(text: str, markup: bool) -> Text:
    return Text.from_markup(text, emoji=False) if markup else Text(text)


def _is_number(text: str) -> bool:
    """A cell that must not wrap: a formatted number (``1,234``, ``91.20``, ``-inf``, ``12%``)
    or a stand-in for one (``-``: none, ``cut``: left out by a time budget)."""
    try:
        float(text.replace(",", "").removesuffix("%"))
    except ValueError:
        return text in ("-", "cut")
    return True


def to_rich_table(
    df: pd.DataFrame, title: str | None = None, floatfmt: str = ".2f", *, markup: bool = False
) -> Table:
    """A Rich table of ``df``. Cells, headers and title print literally (a model label
    ``td-nin [high]`` or a path ``run[1]`` is text, not Rich markup), unless ``markup`` is True:
    then cells and title are Rich markup, and the caller escapes what is not (``robust compare``
    marks the best value in bold); headers stay literal.

    Nothing is cut to fit a narrow terminal: numbers (numeric columns, and text columns of
    formatted numbers such as ``robust compare``'s) keep every digit, their column as wide as
    the widest; text wraps within its cell (see :func:`print_table` for the rest)."""
    from pandas.api.types import is_numeric_dtype

    table = Table(
        title=None if title is None else _text(title, markup), header_style="bold", show_lines=False
    )
    rows = [[_text(_cell(v, floatfmt), markup) for v in row] for row in df.itertuples(index=False)]
    for i, col in enumerate(df.columns):
        cells = [row[i].plain for row in rows]
        header = Text(str(col))  # column names (model labels in robust compare) never markup
        if is_numeric_dtype(df[col]) or (cells and all(map(_is_number, cells))):
            widest = max(map(len, cells), default=1)
            table.add_column(header, justify="right", no_wrap=True, min_width=widest)
        else:
            table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def print_table(table: Table, console: Console | None = None) -> None:
    """Print ``table`` whole. Rich fits a table to the terminal by cutting cells once its
    columns' minimum widths no longer fit (``1234.5`` img/s showed as ``1.23…``, model names as
    ``td-…``; a log or pipe counts as 80 columns). Here a table whose words fit wraps its text
    columns, as Rich does; on a terminal, one whose numbers fit with at least
    ``_FOLD_MIN`` characters per text column folds its long words within their cells; any other
    is printed at its natural width (longer lines, nothing cut: what logs and pipes get)."""
    from rich.measure import Measurement
    from rich.segment import Segments

    console = console or make_console()
    needs = Measurement.get(console, console.options.update_width(10_000), table)
    if needs.minimum <= console.width or (
        console.is_terminal and _fold_width(table) <= console.width
    ):
        console.print(table)
        return
    lines = console.render(table, console.options.update_width(needs.maximum))
    console.print(Segments(lines), crop=False, soft_wrap=True)


_FOLD_MIN = 8  # the narrowest text column worth folding into on a terminal


def _fold_width(table: Table) -> int:
    """Width of ``table`` with its number columns whole and its text columns ``_FOLD_MIN``
    wide (padding and borders included)."""

    def width(c: Any) -> int:
        if not c.no_wrap:
            return _FOLD_MIN
        header = c.header.cell_len if isinstance(c.header, Text) else len(str(c.header))
        return max(c.min_width or 0, header)

    return sum(width(c) + 3 for c in table.columns) + 1  # + padding 2 and a border each


def _md_cell(text: str) -> str:
    """A Markdown table cell: ``|`` escaped and line breaks as spaces (either would end it)."""
    return " ".join(text.replace("|", "\\|").split("\n"))


def to_markdown(df: pd.DataFrame, floatfmt: str = ".2f") -> str:
    """A GitHub Markdown table; numeric columns right-aligned, cells escaped (``|``)."""
    from pandas.api.types import is_numeric_dtype

    cols = [_md_cell(str(c)) for c in df.columns]
    numeric = [is_numeric_dtype(df[c]) for c in df.columns]
    lines = [
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_md_cell(_cell(v, floatfmt)) for v in row) + " |")
    return "\n".join(lines) + "\n"


def to_csv(df: pd.DataFrame) -> str:
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    return buf.getvalue()


def to_json(df: pd.DataFrame) -> str:
    records = json.loads(df.to_json(orient="records"))
    return json.dumps(records, indent=2) + "\n"


def render(
    df: pd.DataFrame,
    fmt: str = "table",
    *,
    title: str | None = None,
    console: Console | None = None,
    floatfmt: str = ".2f",
    markup: bool = False,
) -> str | None:
    """Render ``df`` in ``fmt``; "table" prints to ``console`` and returns None (``markup``: see
    :func:`to_rich_table`).

    An unknown ``fmt`` raises ``RobustError`` (exit 2 in the CLI), not a traceback."""
    check_format(fmt)
    if fmt == "table":
        print_table(to_rich_table(df, title, floatfmt, markup=markup), console)
        return None
    if fmt == "markdown":
        return to_markdown(df, floatfmt)
    if fmt == "csv":
        return to_csv(df)
    return to_json(df)
