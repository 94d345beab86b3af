"""The Typer app of ``robust``: the root options (--version) only.

Command modules define plain functions; ``robustcli.cli`` registers them here, so no command
module imports ``robustcli.cli`` (no import-order cycle).
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="robust",
    help=(
        "Train push-pull and top-down CNNs, measure them on CIFAR-10-C, attack them with "
        "Foolbox, compare runs and gate regressions in CI."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from robustcli import __version__

        typer.echo(f"robustcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Robustness of push-pull and top-down CNNs: train, eval-c, attack, compare."""
