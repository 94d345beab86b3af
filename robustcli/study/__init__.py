"""``robust study``: a whole experiment grid from one YAML file, resumable, local or on Ray.

    study = load_study("studies/x.yaml", profile="smoke")   # validated, profile applied
    plan = build_plan(study, "runs/study-x-smoke")           # runs, steps, hashes, what is done
    run_study(plan)                                          # the pending steps, then the report
    report = build_report(plan)

The folder of a study (``--out``)::

    study.json                      the resolved study and its plan (rewritten at each run)
    runs/<run>/train/               robust train's run folder (model.safetensors, result.json)
    runs/<run>/eval-c.json (.csv)   robust eval-c's result
    runs/<run>/attack/              robust attack's outputs (attack.json, curves)
    runs/<run>/explain/             robust explain's outputs
    runs/<run>/<step>.step.json     the stamp: step hash, result sha256, seconds, units
    report.md/.csv/.json/.png       the study's table and figure
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from robustcli.errors import OutputExistsError, RobustError
from robustcli.study.executors import EXECUTORS, Hooks, check_executor, run_plan
from robustcli.study.plan import (
    Plan,
    Run,
    Step,
    build_plan,
    estimate_seconds,
    expand_grid,
    fmt_seconds,
    measured_throughputs,
    refresh_status,
)
from robustcli.study.report import StudyReport, build_report, render_report, write_report
from robustcli.study.schema import SCHEMA_VERSION, StudyError, load_study

__all__ = [
    "EXECUTORS",
    "SCHEMA_VERSION",
    "Hooks",
    "Plan",
    "Run",
    "Step",
    "StudyError",
    "StudyReport",
    "build_plan",
    "build_report",
    "check_executor",
    "default_out",
    "expand_grid",
    "load_study",
    "plan_frame",
    "plan_summary",
    "prepare_out",
    "render_report",
    "run_study",
    "write_report",
]

STUDY_FILE = "study.json"


def default_out(study: Mapping[str, Any]) -> Path:
    """``runs/study-<name>[-<profile>]``."""
    prof = f"-{study['profile']}" if study.get("profile") else ""
    return Path("runs") / f"study-{study['name']}{prof}"


def prepare_out(plan: Plan) -> None:
    """Refuse a folder that is not this study's (a file, another study, a non-empty folder
    without study.json), then write study.json. Nothing is written before the checks."""
    out = plan.out
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} is a file: choose a folder for --out")
    marker = out / STUDY_FILE
    if out.is_dir() and any(out.iterdir()):
        if not marker.is_file():
            raise OutputExistsError(
                f"{out} is not empty and holds no {STUDY_FILE}: choose another --out for the study"
            )
        try:
            name = json.loads(marker.read_text()).get("study", {}).get("name")
        except (OSError, ValueError, AttributeError):
            name = None
        if name != plan.study["name"]:
            raise OutputExistsError(
                f"{out} holds study {name!r}, not {plan.study['name']!r}: choose another --out"
            )
    from robustcli.io import atomic_write_json, check_writable

    check_writable(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        marker,
        {
            "schema": "robustcli-study",
            "schema_version": SCHEMA_VERSION,
            "study": plan.study,
            "steps": [s.to_dict() for s in plan.steps],
        },
    )


def plan_frame(plan: Plan) -> Any:
    """One row per step: run, step, cached or why it runs, its hash, the estimated time."""
    import pandas as pd

    rates = measured_throughputs(plan)
    rows = []
    for s in plan.steps:
        est = None if s.status == "done" else estimate_seconds(s, rates)
        rows.append(
            {
                "run": s.run,
                "step": s.kind,
                "status": "cached" if s.status == "done" else f"run ({s.reason})",
                "hash": s.hash,
                "estimate": "-" if s.status == "done" else fmt_seconds(est),
            }
        )
    return pd.DataFrame(rows)


def plan_summary(plan: Plan, jobs: int = 1) -> str:
    rates = measured_throughputs(plan)
    pending = plan.pending
    ests = [estimate_seconds(s, rates) for s in pending]
    known = [e for e in ests if e is not None]
    unknown = len(ests) - len(known)
    total = sum(known)
    if not pending:
        eta = "nothing to run"
    elif unknown == len(ests):
        eta = "estimated time unknown (no measured throughput of these models yet)"
    else:
        eta = f"estimated time {fmt_seconds(total / max(1, jobs))}"
        if jobs > 1:
            eta += f" with --jobs {jobs} (serial {fmt_seconds(total)})"
        if unknown:
            eta += f" + {unknown} step(s) of unknown time"
    runs_left = len({s.run for s in pending})
    return (
        f"{len(plan.runs)} runs, {len(plan.steps)} steps: "
        f"{len(plan.steps) - len(pending)} cached, {len(pending)} to run "
        f"({runs_left} runs); {eta}"
    )


class Overview:
    """One Rich bar over the whole study (steps; runs done / running / left, ETA) with a line
    per finished step above it."""

    def __init__(self, plan: Plan, console: Any = None, enabled: bool = True) -> None:
        from robustcli.progress import progress_bar

        self.plan = plan
        self.enabled = enabled
        self.console = console
        self.bar = progress_bar(
            "{task.description}", console=console, enabled=enabled, remaining_label="ETA"
        )
        self.total = len(plan.pending)
        self.left_of: dict[str, int] = {}
        for s in plan.pending:
            self.left_of[s.run] = self.left_of.get(s.run, 0) + 1
        self.running: dict[str, int] = {}
        self.task = self.bar.add_task(self._describe(), total=max(1, self.total))
        self.log: list[str] = []

    def _describe(self) -> str:
        done = sum(1 for r in self.plan.runs if self.left_of.get(r.id, 0) == 0)
        running = sum(1 for r, n in self.running.items() if n > 0)
        left = len(self.plan.runs) - done - running
        return f"study {self.plan.study['name']}: runs {done} done, {running} running, {left} left"

    def _print(self, text: str) -> None:
        self.log.append(text)
        if self.enabled:
            self.bar.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def start(self, s: Step) -> None:
        self.running[s.run] = self.running.get(s.run, 0) + 1
        self.bar.update(self.task, description=self._describe())

    def done(self, s: Step, stamp: Mapping[str, Any]) -> None:
        self.running[s.run] -= 1
        self.left_of[s.run] -= 1
        self.bar.update(self.task, advance=1, description=self._describe())
        self._print(f"done {s.key} in {stamp.get('seconds', 0):.1f} s -> {s.result}")

    def failed(self, s: Step, exc: BaseException) -> None:
        self.running[s.run] = max(0, self.running.get(s.run, 1) - 1)
        self.bar.update(self.task, description=self._describe())
        self._print(f"FAILED {s.key}: {' '.join(str(exc).split())[:200]}")

    def hooks(self) -> Hooks:
        return Hooks(start=self.start, done=self.done, failed=self.failed)


def run_study(
    plan: Plan,
    *,
    executor: str = "local",
    jobs: int = 1,
    threads: int | None = None,
    address: str | None = None,
    console: Any = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the pending steps of ``plan`` (under a lock on the study folder), then write the
    report. Returns ``{"ran": [step keys], "seconds": wall time, "report": paths}``."""
    from robustcli.io import output_lock

    check_executor(executor)
    if jobs < 1:
        raise RobustError(f"--jobs must be at least 1, got {jobs}")
    prepare_out(plan)
    t0 = time.perf_counter()
    ran: list[str] = []
    with output_lock(plan.out):
        refresh_status(plan)  # another driver may have finished steps meanwhile
        overview = Overview(plan, console=console, enabled=progress)
        hooks = overview.hooks()
        inner_done = hooks.done

        def done(s: Step, stamp: Mapping[str, Any]) -> None:
            ran.append(s.key)
            inner_done(s, stamp)
            if log is not None:
                log(overview.log[-1])

        hooks.done = done
        try:
            with overview.bar:
                run_plan(
                    plan,
                    executor=executor,
                    jobs=jobs,
                    threads=threads,
                    address=address,
                    hooks=hooks,
                )
        finally:
            refresh_status(plan)
        report = build_report(plan)
        paths = write_report(report, plan.out)
    return {"ran": ran, "seconds": time.perf_counter() - t0, "report": paths, "plan": plan}


def cpu_count() -> int:
    return os.cpu_count() or 1
