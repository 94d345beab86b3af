"""`robust models`: list the model zoo."""

from __future__ import annotations

import json

import typer

from robustcli.cli import app
from robustcli.cli._common import console, guarded
from robustcli.errors import RobustError
from robustcli.render import FORMATS, check_format, render
from robustcli.zoo import models_table


@app.command("models")
@guarded
def models_command(
    pattern: str = typer.Argument(
        "*",
        help="Shell-style filter on names ('td-*', '*resnet20'); plain text matches anywhere.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (a list of model records)."),
    fmt: str = typer.Option(
        "table", "--format", "-f", help=f"Output format: {', '.join(FORMATS)}."
    ),
    macs: bool = typer.Option(True, "--macs/--no-macs", help="Count MACs (runs one forward each)."),
) -> None:
    """List registered models with parameter counts, MACs and their source paper/table.

    Examples:

      robust models                  # every model

      robust models 'td-*'           # paper B's top-down networks

      robust models resnet20 --json  # machine-readable
    """
    check_format(fmt)  # before counting MACs: a typo costs nothing
    df = models_table(pattern, macs=macs)
    if df.empty:
        raise RobustError(f"no model matches {pattern!r}: run `robust models` to see all names")
    if as_json:
        fmt = "json"
    if fmt == "json":
        typer.echo(json.dumps(df.to_dict(orient="records"), indent=2))
        return
    out = render(df, fmt, title=f"robustcli model zoo ({len(df)} models)", console=console)
    if out is not None:
        typer.echo(out, nl=False)
