"""The Typer app of ``robust``: the root options (--version) only.

Command modules define plain functions; ``robustcli.cli`` registers them here, so no command
module imports ``robustcli.cli`` (no import-order cycle).
"""

from __future__ import annotations

import inspect

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


def reflow_help(doc: str | None) -> str:
    """A command's docstring as the help text Typer's rich formatter shows well.

    That formatter keeps every line break of a paragraph and then wraps it to the terminal:
    prose wrapped at 100 columns in the source came out as ragged lines. Prose paragraphs become
    one line each (the terminal wraps them); a paragraph marked with a ``\\b`` line (Click's
    "keep as is") or holding indented lines (examples) keeps its lines, without the marker.
    """
    paragraphs = []
    for para in inspect.cleandoc(doc or "").split("\n\n"):
        lines = para.split("\n")
        if lines[0].strip() == "\b":
            paragraphs.append("\n".join(lines[1:]))
        elif any(line[:1].isspace() for line in lines):
            paragraphs.append(para)
        else:
            paragraphs.append(" ".join(line.strip() for line in lines))
    return "\n\n".join(paragraphs)
