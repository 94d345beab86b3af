"""`robust study`: a grid of train / eval-c / attack / explain steps from one YAML file."""

from __future__ import annotations

from pathlib import Path

import typer

from robustcli.cli import options as opt
from robustcli.cli._common import (
    console,
    err_console,
    exit_with_gate_report,
    guarded,
    in_range,
)


@guarded
def study_command(
    file: Path = typer.Argument(
        ...,
        metavar="FILE",
        help="Study file (YAML, version 1; see docs/study.md and studies/).",
        show_default=False,
    ),
    profile: str | None = typer.Option(
        None, "--profile", "-p", help="A profile of the file (e.g. smoke, cpu, full)."
    ),
    out: Path | None = opt.out_option("The study folder; default: runs/study-<name>[-<profile>]."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the plan (runs, steps, cached, estimated time) and exit."
    ),
    jobs: int = typer.Option(
        1,
        "--jobs",
        "-j",
        help="Steps run in parallel worker processes (local executor); each gets cores // N "
        "torch threads.",
        callback=in_range("--jobs", 1, 256),
    ),
    executor: str = typer.Option(
        "local",
        "--executor",
        help="local (this machine) or ray (a Ray cluster; needs robustcli's ray extra).",
    ),
    address: str | None = typer.Option(
        None,
        "--address",
        help="Ray cluster address (e.g. auto, or HEAD:6379); default: a local Ray.",
    ),
    report_only: bool = typer.Option(
        False, "--report", help="Only print (and write) the report of what is done; run nothing."
    ),
    gates: Path | None = typer.Option(
        None,
        "--gates",
        help="Gates YAML (as robust compare --gates) checked on the report's means: exit 1 "
        "when one fails. max_drop rules compare with the study's report.baseline.",
    ),
    fmt: str = opt.format_option("The report (the plan with --dry-run)."),
    data_dir: Path | None = opt.data_dir_option(
        "Replaces the study's data_dir (not part of the step hashes)."
    ),
    progress: str = opt.progress_option("The bar is the study's overview (runs, ETA)."),
    no_progress: bool = opt.no_progress_option(),
) -> None:
    """Run a study: every step of the grid that is not already done, then its report.

    A step is done when its result exists and its stamp holds the same hash of its resolved
    configuration (and of the steps it depends on): an interrupted study resumes, a changed
    one reruns only what changed. Exit codes: 0 done, 1 a gate failed, 2 bad input or a
    failed step (what finished is kept).

    \b
    Examples:
      robust study studies/lelekas2020-fig6.yaml --profile smoke
      robust study studies/ranabhat2025-table1-resnet20.yaml --profile cpu --dry-run
      robust study studies/ranabhat2025-table1-resnet20.yaml -p full -j 2 --data-dir ~/data
      robust study studies/x.yaml --executor ray --address auto
      robust study studies/x.yaml --report --format markdown --gates gates.yaml
    """
    from robustcli.render import render
    from robustcli.study import (
        build_plan,
        build_report,
        check_executor,
        default_out,
        load_study,
        plan_frame,
        plan_summary,
        render_report,
        run_study,
        write_report,
    )
    from robustcli.study.report import gate_report

    fmt = opt.output_format(fmt)
    mode = opt.progress_mode(progress, no_progress)
    check_executor(executor)
    if gates is not None:  # a bad gates file costs nothing
        from robustcli.gates import load_gates

        load_gates(gates)
    study = load_study(file, profile)
    if data_dir is not None:
        study["data_dir"] = str(data_dir)
    root = out if out is not None else default_out(study)
    plan = build_plan(study, root)

    if dry_run:
        title = f"robust study {study['name']}" + (
            f" --profile {study['profile']}" if study.get("profile") else ""
        )
        text = render(plan_frame(plan), fmt, title=f"{title}: plan ({root})", console=console)
        if text is not None:
            typer.echo(text, nl=False)
        summary = plan_summary(plan, jobs)
        if fmt in ("table", "markdown"):
            typer.echo(summary)
        else:  # stdout stays machine-readable
            err_console.print(summary, highlight=False, soft_wrap=True)
        return

    if report_only:
        if not root.is_dir():
            from robustcli.errors import RobustError

            raise RobustError(f"{root} does not exist: run the study first (without --report)")
        rep = build_report(plan)
        if not rep.values:
            err_console.print(f"note: no finished step in {root} yet", highlight=False)
        paths = write_report(rep, root) if rep.values else {}
    else:
        show = mode == "rich"
        err_console.print(plan_summary(plan, jobs), highlight=False, soft_wrap=True)

        def log(line: str) -> None:
            if mode == "plain":  # with the bar, the line is printed above it
                err_console.print(line, highlight=False, soft_wrap=True)

        result = run_study(
            plan,
            executor=executor,
            jobs=jobs,
            address=address,
            console=err_console,
            progress=show,
            log=log,
        )
        err_console.print(
            f"study {study['name']}: ran {len(result['ran'])} step(s) in "
            f"{result['seconds']:.1f} s -> {root}",
            highlight=False,
        )
        rep = build_report(plan)
        paths = result["report"]
    text = render_report(rep, fmt, console=console)
    if text is not None:
        typer.echo(text, nl=not text.endswith("\n"))
    if paths:
        err_console.print(
            "report: " + ", ".join(str(p) for p in paths.values()), highlight=False, soft_wrap=True
        )
    if gates is not None:
        exit_with_gate_report(gate_report(rep, gates))
