"""`robust models`: list the model zoo."""

from __future__ import annotations

import json

import typer

from robustcli.cli import options as opt
from robustcli.cli._common import console, guarded
from robustcli.errors import RobustError


@guarded
def models_command(
    pattern: str = typer.Argument(
        "*",
        help="Shell-style filter on names ('td-*', '*resnet20'); plain text matches anywhere.",
    ),
    fmt: str = opt.format_option("json: a list of model records."),
    as_json: bool = opt.json_option(),
    macs: bool = typer.Option(True, "--macs/--no-macs", help="Count MACs (runs one forward each)."),
) -> None:
    """List registered models with parameter counts, MACs and their source paper/table.

    Examples:

      robust models                  # every model

      robust models 'td-*'           # paper B's top-down networks

      robust models resnet20 --json  # machine-readable
    """
    fmt = opt.output_format(fmt, as_json)  # before counting MACs: a typo costs nothing
    from robustcli.render import render
    from robustcli.zoo import models_table

    df = models_table(pattern, macs=macs)
    if df.empty:
        raise RobustError(f"no model matches {pattern!r}: run `robust models` to see all names")
    if fmt == "json":
        typer.echo(json.dumps(df.to_dict(orient="records"), indent=2))
        return
    out = render(df, fmt, title=f"robustcli model zoo ({len(df)} models)", console=console)
    if out is not None:
        typer.echo(out, nl=False)
