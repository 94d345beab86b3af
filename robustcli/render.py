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
    emoji codes (``package.module:factory:`` is not an emoji). A message styled with markup says
    so (``print(..., markup=True)``) and escapes the user text in it."""
    return Console(stderr=stderr, emoji=False, markup=False)


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


def to_rich_table(
    df: pd.DataFrame, title: str | None = None, floatfmt: str = ".2f", *, markup: bool = False
) -> Table:
    """A Rich table of ``df``. Cells, headers and title print literally (a model label
    ``td-nin [high]`` or a path ``run[1]`` is text, not Rich markup), unless ``markup`` is True:
    then they are Rich markup, and the caller escapes what is not (``robust compare`` marks the
    best value in bold)."""
    table = Table(
        title=None if title is None else _text(title, markup), header_style="bold", show_lines=False
    )
    from pandas.api.types import is_numeric_dtype

    for col in df.columns:
        numeric = is_numeric_dtype(df[col])
        table.add_column(_text(str(col), markup), justify="right" if numeric else "left")
    for row in df.itertuples(index=False):
        table.add_row(*(_text(_cell(v, floatfmt), markup) for v in row))
    return table


def to_markdown(df: pd.DataFrame, floatfmt: str = ".2f") -> str:
    cols = [str(c) for c in df.columns]
    from pandas.api.types import is_numeric_dtype

    numeric = [is_numeric_dtype(df[c]) for c in df.columns]
    lines = [
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, floatfmt) for v in row) + " |")
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
        (console or make_console()).print(to_rich_table(df, title, floatfmt, markup=markup))
        return None
    if fmt == "markdown":
        return to_markdown(df, floatfmt)
    if fmt == "csv":
        return to_csv(df)
    return to_json(df)
