"""`robust quickstart`: the whole story offline (train, eval-c, attack, compare)."""

from __future__ import annotations

from pathlib import Path

import typer

from robustcli.cli import options as opt
from robustcli.cli._common import console, err_console, guarded
from robustcli.render import styled

DEFAULT_OUT = Path("runs/quickstart")


@guarded
def quickstart_command(
    out: Path | None = opt.out_option(f"Default: {DEFAULT_OUT}."),
    force: bool = opt.force_option("Reuses an existing, non-empty --out."),
    fast: bool = typer.Option(
        False, "--fast", help="Smoke-test size (1 epoch, few images): seconds, not minutes."
    ),
    fmt: str = opt.format_option("The comparison at the end."),
    as_json: bool = opt.json_option(),
) -> None:
    """The whole story offline, in a few minutes on 2 CPU cores.

    Trains resnet20 and pp-resnet20 on the embedded digits (3 epochs), evaluates both on
    generated corruptions (15 common, severities 1,3,5, all 364 test images), attacks both
    (ddn 20 steps + contrast, 100 test images) and prints the comparison. Everything lands
    under --out: run folders, eval-c JSONs, attack/, compare.md, compare.csv, compare.png.
    """
    fmt = opt.output_format(fmt, as_json)  # before minutes of work
    from robustcli.compare import LEGEND, render_comparison
    from robustcli.quickstart import quickstart

    def log(msg: str) -> None:
        err_console.print(styled("quickstart:", "dim", msg))

    result = quickstart(out or DEFAULT_OUT, force=force, fast=fast, log=log)
    text = render_comparison(result.comparison, fmt, console=console)
    if text is not None:  # markdown, csv, json: stdout stays just the comparison
        typer.echo(text, nl=False)
    else:
        console.print(LEGEND, style="dim", highlight=False)
    done = (
        f"done in {result.seconds['total']:.0f} s; outputs under {result.out} "
        f"(compare.md, compare.csv, compare.png)"
    )
    (console if fmt == "table" else err_console).print(done, highlight=False)
