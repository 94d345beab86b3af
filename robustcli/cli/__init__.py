"""The `robust` command: a thin Typer layer over the robustcli library.

Each command lives in its own module as a plain function; this module registers them on the
app (robustcli.cli.app) in the order ``robust --help`` lists them. Command modules import only
light modules at the top (typer, rich, robustcli.cli.options): torch, pandas and Foolbox load
inside the command that needs them, so ``--help``, ``--version`` and usage errors stay fast.
"""

from __future__ import annotations

import sys
import warnings

import typer

from robustcli.cli.app import app, reflow_help
from robustcli.cli.attack import attack_command
from robustcli.cli.compare import compare_command
from robustcli.cli.corrupt import corrupt_command
from robustcli.cli.eval_c import eval_c_command
from robustcli.cli.explain import explain_command
from robustcli.cli.models import models_command
from robustcli.cli.quickstart import quickstart_command
from robustcli.cli.study import study_command
from robustcli.cli.train import train_command

__all__ = ["app", "main"]

for _name, _command in (
    ("quickstart", quickstart_command),
    ("train", train_command),
    ("eval-c", eval_c_command),
    ("corrupt", corrupt_command),
    ("attack", attack_command),
    ("explain", explain_command),
    ("compare", compare_command),
    ("study", study_command),
    ("models", models_command),
):
    app.command(_name, help=reflow_help(_command.__doc__))(_command)


def warning_line(
    message: Warning | str, category: type[Warning], *args: object, **kw: object
) -> str:
    """A warning as the CLI prints it: one line, ``warning: ...``, without Python's file, line
    number and source line (``warnings.formatwarning``'s signature)."""
    return f"warning: {' '.join(str(message).split())}\n"


def main() -> None:
    """Entry point of ``robust``: usage errors (bad option values, unknown options) are one line
    on stderr with exit code 2, like every other error of the tool; warnings are one line too."""
    warnings.formatwarning = warning_line
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
        # command_path starts with the program's name: "robust" or "robust train"
        where = f" ({exc.ctx.command_path} --help)" if exc.ctx else ""
        msg = " ".join(exc.format_message().split())
        print(f"error: {msg}{where}", file=sys.stderr)
        sys.exit(2)
    except aborts:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)
