"""`robust compare`: results side by side, deltas, gates for CI."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from robustcli.cli import options as opt
from robustcli.cli._common import console, err_console, exit_with_gate_report, guarded
from robustcli.render import styled

STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"


@guarded
def compare_command(
    results: list[Path] = typer.Argument(
        ...,
        help="Result files or folders: train run folders (result.json), eval-c JSONs, attack "
        "output folders (attack.json).",
        show_default=False,
    ),
    baseline: Path | None = typer.Option(
        None, "--baseline", help="The reference result: deltas and max-drop gates against it."
    ),
    fmt: str = opt.format_option(),
    as_json: bool = opt.json_option(),
    plot: Path | None = typer.Option(
        None, "--plot", help="Grouped bar plot of the percent metrics (.png, .svg, .pdf)."
    ),
    max_drop: list[str] = typer.Option(
        [],
        "--max-drop",
        help="METRIC=POINTS: at most this much worse than the baseline "
        "(repeatable; METRIC may be a pattern such as 'corruption:*').",
    ),
    minimum: list[str] = typer.Option([], "--min", help="METRIC=VALUE: a floor (repeatable)."),
    maximum: list[str] = typer.Option([], "--max", help="METRIC=VALUE: a ceiling (repeatable)."),
    gates: Path | None = typer.Option(None, "--gates", help="YAML file of gate rules."),
    summary: Path | None = typer.Option(
        None,
        "--summary",
        help="Append a Markdown summary (verdict + table) to this file, e.g. "
        '"$GITHUB_STEP_SUMMARY".',
    ),
    github_summary: bool = typer.Option(
        False,
        "--github-summary",
        help=f"Also append the summary to ${STEP_SUMMARY_ENV} (when that variable is set).",
    ),
    force: bool = opt.force_option("compare writes only the --plot file."),
    allow_mismatch: bool = typer.Option(
        False,
        "--allow-mismatch",
        help="Compare results measured on different inputs (dataset, corruptions, severities, "
        "images, attacks, epsilons) anyway; every output then says so.",
    ),
    paired: bool = typer.Option(
        False,
        "--paired",
        help="eval-c results written with --per-image, on the same images: each delta gets a "
        "95 % bootstrap interval over images (how much it depends on the test images drawn; "
        "seed-to-seed spread comes on top). Needs --baseline.",
    ),
) -> None:
    """Results of train, eval-c and attack side by side; gate regressions for CI.

    Rows are metrics (clean_acc, corruption:<name>, group:<name>, corruptions_acc,
    attack:<attack>:robust_acc@<eps>, ...; docs/results-schema.md), columns are models. Best
    per row in bold, second best underlined. Results measured on different inputs (another
    dataset, other corruptions, severities, number of images, attacks or epsilons) are refused
    unless --allow-mismatch. Exit codes: 0 pass, 1 a gate was violated (one line per violation
    on stderr), 2 bad input.

    Example (CI):
      robust compare new.json --baseline baseline/eval-c.json --gates gates.yaml \\
          --max-drop 'corruption:*=2' --min clean_acc=80 --summary "$GITHUB_STEP_SUMMARY"
    """
    from robustcli.compare import (
        LEGEND,
        check_plot_path,
        check_summary_path,
        compare,
        comparison_frame,
        plot_comparison,
        render_comparison,
        save_plot,
        write_text,
    )
    from robustcli.gates import collect_rules, evaluate_gates, markdown_summary

    fmt = opt.output_format(fmt, as_json)
    from robustcli.render import to_markdown

    rules = collect_rules(max_drop=max_drop, minimum=minimum, maximum=maximum, gates_file=gates)
    if plot is not None:
        check_plot_path(plot, force)
    targets = [summary] if summary is not None else []
    env_summary = os.environ.get(STEP_SUMMARY_ENV)
    if github_summary and env_summary and Path(env_summary) not in targets:
        targets.append(Path(env_summary))
    for t in targets:  # appended to at the end: refuse an unwritable one before any output
        check_summary_path(t)
    cmp = compare(results, baseline=baseline, allow_mismatch=allow_mismatch, paired=paired)
    if cmp.mismatch_note:
        err_console.print(styled(cmp.mismatch_note, "bold yellow"), soft_wrap=True)
    report = evaluate_gates(cmp.values, rules, baseline=cmp.baseline) if rules else None
    # the figure before any output: "no percent metrics to plot" must not follow a printed table
    fig = plot_comparison(cmp) if plot is not None else None

    text = render_comparison(cmp, fmt, console=console)
    if text is not None:
        typer.echo(text, nl=False)
    elif fmt == "table":
        console.print(LEGEND, style="dim", highlight=False)

    if plot is not None:
        path = save_plot(fig, plot, force=force)
        err_console.print(f"plot: {path}", highlight=False)

    if targets:
        title = "robust compare" + (f" vs {cmp.baseline}" if cmp.baseline else "")
        table_md = to_markdown(comparison_frame(cmp, "markdown")) + "\n" + LEGEND + "\n"
        md = markdown_summary(table_md, report, title, note=cmp.mismatch_note)
        for t in targets:
            write_text(t, md, append=True)

    if report is not None:
        exit_with_gate_report(report)
