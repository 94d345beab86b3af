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


def _register() -> None:
    # Each subcommand lives in its own module and registers itself on `app`.
    from robustcli.cli import models  # noqa: F401


_register()


def main() -> None:
    app()
