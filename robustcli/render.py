"""One renderer per output format for result tables (pandas DataFrames).

Every command builds a DataFrame and hands it here, so the terminal table, CSV, Markdown and JSON
always show the same numbers.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from robustcli.errors import RobustError

FORMATS = ("table", "json", "csv", "markdown")


def check_format(fmt: str, choices: Sequence[str] = FORMATS, option: str = "--format") -> str:
    """``fmt`` if it is one of ``choices``; else a one-line ``RobustError`` naming them.

    Commands call this before any work, so ``--format xml`` costs nothing and writes nothing."""
    if fmt not in choices:
        raise RobustError(f"unknown {option} {fmt!r}: choose one of {', '.join(choices)}")
    return fmt


def _cell(value: Any, floatfmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return format(value, floatfmt)
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def to_rich_table(df: pd.DataFrame, title: str | None = None, floatfmt: str = ".2f") -> Table:
    table = Table(title=title, header_style="bold", show_lines=False)
    for col in df.columns:
        numeric = pd.api.types.is_numeric_dtype(df[col])
        table.add_column(str(col), justify="right" if numeric else "left")
    for row in df.itertuples(index=False):
        table.add_row(*(_cell(v, floatfmt) for v in row))
    return table


def to_markdown(df: pd.DataFrame, floatfmt: str = ".2f") -> str:
    cols = [str(c) for c in df.columns]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
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
) -> str | None:
    """Render ``df`` in ``fmt``; "table" prints to ``console`` and returns None.

    An unknown ``fmt`` raises ``RobustError`` (exit 2 in the CLI), not a traceback."""
    check_format(fmt)
    if fmt == "table":
        (console or Console()).print(to_rich_table(df, title, floatfmt))
        return None
    if fmt == "markdown":
        return to_markdown(df, floatfmt)
    if fmt == "csv":
        return to_csv(df)
    return to_json(df)
