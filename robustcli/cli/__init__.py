"""The `robust` command: a thin Typer layer over the robustcli library."""

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


def _register() -> None:
    # Each subcommand lives in its own module and registers itself on `app`.
    from robustcli.cli import (  # noqa: F401
        attack,
        compare,
        eval_c,
        explain,
        models,
        study,
        train,
    )


_register()


def main() -> None:
    """Entry point of ``robust``: usage errors (bad option values, unknown options) are one line
    on stderr with exit code 2, like every other error of the tool."""
    import sys

    # Typer >= 0.20 vendors click; the base class is found the same way in both layouts.
    usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
    aborts = tuple(
        c
        for c in (typer.Abort, sys.modules.get(usage_error.__module__).__dict__.get("Abort"))
        if c is not None
    )
    try:
        rv = app(standalone_mode=False, prog_name="robust")
    except usage_error as exc:
        where = f" (robust {exc.ctx.command_path.split(' ', 1)[-1]} --help)" if exc.ctx else ""
        msg = " ".join(exc.format_message().split())
        print(f"error: {msg}{where}", file=sys.stderr)
        sys.exit(2)
    except aborts:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)
