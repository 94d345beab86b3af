"""The study's table and figure: rows = models (x override set), columns = metrics, mean and
standard deviation over seeds, the paper's numbers beside ours.

Metrics come from the result documents through ``robustcli.results.document_metrics`` (the
names ``robust compare`` and its gates use); the frame of means goes through
``robustcli.gates.evaluate_gates``, so a study gates CI exactly like ``robust compare``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pandas as pd

from robustcli.study.plan import Plan, Run

PAPER = "paper"


@dataclass
class StudyReport:
    """``values``: per row label, per metric, the list of per-seed values."""

    plan: Plan
    rows: list[str]
    metrics: list[str]
    values: dict[str, dict[str, list[float]]]
    paper: dict[str, dict[str, float]]
    seeds: dict[str, int]
    done: int
    total: int
    notes: list[str] = field(default_factory=list)

    @property
    def paper_source(self) -> str | None:
        return (self.plan.study.get("paper") or {}).get("source")

    def mean(self, row: str, metric: str) -> float:
        v = self.values.get(row, {}).get(metric, [])
        return statistics.fmean(v) if v else math.nan

    def std(self, row: str, metric: str) -> float:
        v = self.values.get(row, {}).get(metric, [])
        return statistics.stdev(v) if len(v) > 1 else math.nan

    def paper_metrics(self) -> list[str]:
        return [m for m in self.metrics if any(m in p for p in self.paper.values())]

    def frame(self) -> pd.DataFrame:
        """Numbers (for CSV and JSON): model, seeds, then per metric its mean, ``<m> sd`` and,
        where the paper gives it, ``<m> (paper)``."""
        paper_cols = set(self.paper_metrics())
        data: dict[str, list[Any]] = {"model": list(self.rows), "seeds": []}
        for r in self.rows:
            data["seeds"].append(self.seeds.get(r, 0))
        for m in self.metrics:
            data[m] = [self.mean(r, m) for r in self.rows]
            data[f"{m} sd"] = [self.std(r, m) for r in self.rows]
            if m in paper_cols:
                data[f"{m} ({PAPER})"] = [self.paper.get(r, {}).get(m, math.nan) for r in self.rows]
        return pd.DataFrame(data)

    def display_frame(self, floatfmt: str = ".2f") -> pd.DataFrame:
        """Text cells ``mean ± sd`` (table and Markdown), the paper's beside, marked."""
        paper_cols = set(self.paper_metrics())

        def cell(mean: float, sd: float) -> str:
            if math.isnan(mean):
                return "-"
            text = format(mean, floatfmt)
            return text if math.isnan(sd) else f"{text} ± {format(sd, floatfmt)}"

        data: dict[str, list[Any]] = {"model": list(self.rows)}
        data["seeds"] = [self.seeds.get(r, 0) for r in self.rows]
        for m in self.metrics:
            data[m] = [cell(self.mean(r, m), self.std(r, m)) for r in self.rows]
            if m in paper_cols:
                data[f"{m} ({PAPER})"] = [
                    _fmt(self.paper.get(r, {}).get(m), floatfmt) for r in self.rows
                ]
        return pd.DataFrame(data)

    def gate_frame(self) -> pd.DataFrame:
        """Rows = metrics, columns = report rows, values = means over seeds (for the gates)."""
        return pd.DataFrame(
            {r: [self.mean(r, m) for m in self.metrics] for r in self.rows},
            index=pd.Index(self.metrics, name="metric"),
            dtype=float,
        )

    def title(self) -> str:
        s = self.plan.study
        prof = f", profile {s['profile']}" if s.get("profile") else ""
        src = f"; '{PAPER}' columns: {self.paper_source}" if self.paper else ""
        return (
            f"study {s['name']}{prof}: mean ± sd over seeds ({self.done}/{self.total} steps "
            f"done){src}"
        )

    def baseline_row(self) -> str | None:
        base = self.plan.study["report"].get("baseline")
        if base is None:
            return None
        for r in self.plan.runs:
            if base in (r.model, r.label):
                return r.row
        return None


def _fmt(v: float | None, floatfmt: str) -> str:
    return "-" if v is None or math.isnan(v) else format(v, floatfmt)


def _load(path: Path) -> dict[str, Any] | None:
    from robustcli.results import load_result

    return load_result(path) if path.is_file() else None


def _attack_step_for(plan: Plan, run: Run) -> Any:
    """The attack step that attacked ``run``'s model: its own, or its twin's (``vs``)."""
    for s in plan.steps:
        if s.kind != "attack" or s.status != "done":
            continue
        other = plan.runs[[r.id for r in plan.runs].index(s.run)]
        same = other.seed == run.seed and other.override == run.override
        if same and run.model in s.config["models"]:
            return s
    return None


def run_metrics(plan: Plan, run: Run) -> dict[str, float]:
    from robustcli.results import document_metrics

    out: dict[str, float] = {}
    for s in plan.steps:
        if s.run != run.id or s.kind not in ("train", "eval-c") or s.status != "done":
            continue
        doc = _load(plan.out / s.result)
        if doc is not None:
            for metrics in document_metrics(doc).values():
                out.update(metrics)
    a = _attack_step_for(plan, run)
    if a is not None:
        doc = _load(plan.out / a.result)
        if doc is not None:
            out.update(document_metrics(doc).get(run.model, {}))
    for name, parts in plan.study["report"]["derived"].items():
        vals = [out.get(p, math.nan) for p in parts]
        if vals and not any(math.isnan(v) for v in vals):
            out[name] = statistics.fmean(vals)
    return {k: v for k, v in out.items() if not math.isnan(v)}


def _select(patterns: Sequence[str], available: Sequence[str]) -> list[str]:
    chosen: list[str] = []
    for p in patterns:
        for m in available:
            if m not in chosen and (m == p or fnmatchcase(m, p)):
                chosen.append(m)
    return chosen


def build_report(plan: Plan) -> StudyReport:
    from robustcli.results import _attack_sort, _row_key

    values: dict[str, dict[str, list[float]]] = {}
    seeds: dict[str, int] = {}
    rows: list[str] = []
    for run in plan.runs:
        if run.row not in rows:
            rows.append(run.row)
        metrics = run_metrics(plan, run)
        if metrics:
            seeds[run.row] = seeds.get(run.row, 0) + 1
        for k, v in metrics.items():
            values.setdefault(run.row, {}).setdefault(k, []).append(v)
    available = sorted({m for r in values.values() for m in r}, key=_row_key)
    attack = [m for m in available if m.startswith("attack:")]
    available = [m for m in available if not m.startswith("attack:")] + _attack_sort(attack)
    rep = plan.study["report"]
    patterns = [*rep["metrics"], *rep["derived"]]
    paper = (plan.study.get("paper") or {}).get("values", {})
    # the paper's values are keyed by model name, label or report row
    paper_rows: dict[str, dict[str, float]] = {}
    for run in plan.runs:
        for key in (run.row, run.label, run.model):
            if key in paper:
                paper_rows[run.row] = paper[key]
                break
    metrics = _select(patterns, available)
    for m in _select(patterns, sorted({k for p in paper_rows.values() for k in p})):
        if m not in metrics:
            metrics.append(m)
    done = sum(s.status == "done" for s in plan.steps)
    return StudyReport(plan, rows, metrics, values, paper_rows, seeds, done, len(plan.steps))


def render_report(report: StudyReport, fmt: str, console: Any = None) -> str | None:
    from robustcli.render import render

    if fmt == "table":
        # metric names are long (attack:contrast:median_l2): one part per header line, so the
        # numbers, not the names, decide the width of a column in the terminal
        frame = report.display_frame()
        width = getattr(console, "width", None) or 80
        if 11 * len(frame.columns) > width:
            # too many metrics for the terminal: metrics as rows (as robust compare prints)
            t = frame.set_index("model").T.reset_index().rename(columns={"index": "metric"})
            return render(t, fmt, title=report.title(), console=console)
        frame.columns = [
            str(c).replace(":", "\n").replace(" (paper)", "\n(paper)") for c in frame.columns
        ]
        return render(frame, fmt, title=report.title(), console=console)
    if fmt == "markdown":
        text = render(report.display_frame(), fmt, title=report.title(), console=console)
        return f"**{report.title()}**\n\n{text}"
    return render(report.frame(), fmt)


# --------------------------------------------------------------------------------------------
# Figure
# --------------------------------------------------------------------------------------------


def _family(model: str) -> str | None:
    from robustcli.registry import get_model_spec

    try:
        return str(get_model_spec(model).family)
    except Exception:
        return None


def plot_report(report: StudyReport) -> Any:
    """Accuracy per corruption group (mean ± sd over seeds) and, with attack results, the mean
    accuracy loss vs L2 of each model's worst case (TD green, BU red). ``None``: nothing to
    plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    overall = [m for m in ("clean_acc", "corruptions_acc") if m in report.metrics]
    groups = overall + sorted(m for m in report.metrics if m.startswith("group:"))
    curves = _loss_curves(report)
    panels = int(bool(groups)) + int(bool(curves))
    if panels == 0:
        return None
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.2), squeeze=False)
    ax_i = 0
    if groups:
        ax = axes[0][ax_i]
        ax_i += 1
        width = 0.8 / max(1, len(report.rows))
        x = np.arange(len(groups))
        for i, row in enumerate(report.rows):
            means = [report.mean(row, g) for g in groups]
            sds = [0 if math.isnan(report.std(row, g)) else report.std(row, g) for g in groups]
            ax.bar(x + i * width, means, width, yerr=sds, capsize=2, label=row)
        ax.set_xticks(x + width * (len(report.rows) - 1) / 2)
        ax.set_xticklabels([g.removeprefix("group:") for g in groups], rotation=30)
        ax.set_ylabel("accuracy (%)")
        ax.set_title("clean, corrupted and per-group accuracy (mean ± sd over seeds)")
        ax.legend(fontsize=7)
    if curves:
        ax = axes[0][ax_i]
        for row, (attack, family, eps, loss) in curves.items():
            color = {"td": "tab:green", "bu": "tab:red"}.get(family or "")
            ax.plot(eps, loss, marker="o", color=color, label=f"{row} ({attack})")
        ax.set_xlabel("L2 perturbation ([0,1] pixels)")
        ax.set_ylabel("accuracy loss (%)")
        ax.set_title("attack: accuracy loss vs L2 (TD green, BU red)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _loss_curves(
    report: StudyReport,
) -> dict[str, tuple[str, str | None, list[float], list[float]]]:
    out: dict[str, tuple[str, str | None, list[float], list[float]]] = {}
    model_of = {r.row: r.model for r in report.plan.runs}
    for row in report.rows:
        have = {m for m in report.values.get(row, {}) if m.startswith("attack:")}
        attacks = sorted({m.split(":")[1] for m in have})
        if not attacks:
            continue
        attack = next((a for a in attacks if a.startswith("worst")), attacks[0])
        pts = []
        for m in have:
            parts = m.split(":")
            if parts[1] == attack and parts[2].startswith("robust_acc@"):
                try:
                    pts.append((float(parts[2].split("@", 1)[1]), report.mean(row, m)))
                except ValueError:
                    continue
        clean = report.mean(row, f"attack:{attack}:clean_acc")
        if not pts or math.isnan(clean):
            continue
        pts.sort()
        out[row] = (
            attack,
            _family(model_of[row]),
            [0.0] + [e for e, _ in pts],
            [0.0] + [clean - a for _, a in pts],
        )
    return out


def write_report(report: StudyReport, out: Path) -> dict[str, Path]:
    """report.md, report.csv, report.json and report.png (when there is something to plot)."""
    from robustcli.compare import save_plot, write_text

    paths = {
        "markdown": write_text(out / "report.md", render_report(report, "markdown") or ""),
        "csv": write_text(out / "report.csv", render_report(report, "csv") or ""),
        "json": write_text(out / "report.json", render_report(report, "json") or ""),
    }
    fig = plot_report(report)
    if fig is not None:
        paths["png"] = save_plot(fig, out / "report.png", force=True)
    return paths


def gate_report(report: StudyReport, gates: str | Path) -> Any:
    from robustcli.gates import evaluate_gates, load_gates

    rules = load_gates(gates)
    return evaluate_gates(report.gate_frame(), rules, baseline=report.baseline_row())


def paper_values(study: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    return dict((study.get("paper") or {}).get("values") or {})
