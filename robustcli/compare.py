"""``robust compare`` and ``robust quickstart`` as library calls.

``compare(paths, baseline=...)`` loads result documents (``robustcli.results.load_result``),
builds the metrics frame (rows = metrics, columns = models), the deltas against the baseline
column and, per row, the best and second-best model the way paper A's Table 1 marks them (best
bold, second underlined; direction per metric). ``comparison_frame`` gives the table to render
(``robustcli.render``), ``plot_comparison`` a grouped bar plot (matplotlib Agg),
``write_text`` / ``save_plot`` write atomically.

``quickstart(out)`` is the whole story offline: train a plain and a push-pull ResNet-20 on the
embedded digits, evaluate both on generated corruptions, attack both, compare.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from robustcli.errors import RobustError
from robustcli.io import atomic_write, check_output
from robustcli.results import is_percent, load_result, metric_direction, metrics_frame

MARK_STYLES = ("rich", "markdown", "plain", "none")


@dataclass
class Comparison:
    """Metrics of several models side by side (``values``: rows = metrics, columns = models)."""

    values: pd.DataFrame
    baseline: str | None = None
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return [str(c) for c in self.values.columns]

    @property
    def candidates(self) -> list[str]:
        """The columns compared against the baseline (all but the baseline)."""
        return [c for c in self.models if c != self.baseline]

    def deltas(self) -> pd.DataFrame:
        """``value - baseline`` per candidate column (raw difference, not direction-adjusted)."""
        if self.baseline is None:
            return pd.DataFrame(index=self.values.index)
        base = self.values[self.baseline]
        return pd.DataFrame({c: self.values[c] - base for c in self.candidates})

    def ranks(self) -> pd.DataFrame:
        """Per row and model: 1 = best, 2 = second best, 0 = neither. Ties share a rank; a
        second best is marked only among three or more measured models."""
        out = pd.DataFrame(0, index=self.values.index, columns=self.values.columns)
        for metric, row in self.values.iterrows():
            vals = row.dropna()
            if len(vals) < 2:
                continue
            lower = metric_direction(str(metric)) == "lower"
            distinct = sorted(set(vals.tolist()), reverse=not lower)
            if len(distinct) < 2:
                continue  # all equal: nothing stands out
            out.loc[metric, vals.index[vals == distinct[0]]] = 1
            if len(vals) >= 3:
                out.loc[metric, vals.index[vals == distinct[1]]] = 2
        return out


def compare(
    results: Sequence[str | os.PathLike[str] | Mapping[str, Any]],
    *,
    baseline: str | os.PathLike[str] | Mapping[str, Any] | None = None,
) -> Comparison:
    """Load ``results`` (paths or documents) and the optional ``baseline`` into a Comparison.

    The baseline's column is named after its model, plus `` (baseline)`` when a compared result
    has the same model name."""
    if not results:
        raise RobustError("nothing to compare: pass one or more result files")
    docs = [r if isinstance(r, Mapping) else load_result(r) for r in results]
    frame = metrics_frame(docs)
    sources = {str(c): "" for c in frame.columns}
    base_label = None
    if baseline is not None:
        bdoc = baseline if isinstance(baseline, Mapping) else load_result(baseline)
        bframe = metrics_frame([bdoc])
        if len(bframe.columns) != 1:
            raise RobustError(
                "the baseline holds several models: pass a result of one model as --baseline"
            )
        name = str(bframe.columns[0])
        base_label = name if name not in frame.columns else f"{name} (baseline)"
        bframe.columns = [base_label]
        frame = bframe.join(frame, how="outer")
        order = metrics_frame([*docs, bdoc]).index  # canonical row order over both
        frame = frame.reindex([r for r in order if r in frame.index])
        sources[base_label] = str(bdoc.get("_source", ""))
    return Comparison(frame, base_label, sources)


def _mark(text: str, rank: int, style: str) -> str:
    if rank == 0 or style in ("plain", "none"):
        return text
    if style == "rich":
        return f"[bold]{text}[/]" if rank == 1 else f"[underline]{text}[/]"
    return f"**{text}**" if rank == 1 else f"<ins>{text}</ins>"


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)  # "ddn[high]" is a metric name, not Rich markup


def _fmt(v: float, floatfmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return format(v, floatfmt)


def comparison_frame(cmp: Comparison, style: str = "plain", floatfmt: str = ".2f") -> pd.DataFrame:
    """The table to render.

    ``style="none"``: numbers (for CSV / JSON): ``metric``, ``better`` (higher / lower), one
    column per model, ``delta <model>`` per candidate, ``best`` and ``second`` (model names).
    Otherwise text cells with the best / second best marked (``rich``: bold / underline markup,
    ``markdown``: ``**bold**`` / ``<ins>underlined</ins>``, ``plain``: unmarked) and signed deltas.
    """
    if style not in MARK_STYLES:
        raise ValueError(f"style must be one of {MARK_STYLES}")
    vals, ranks, deltas = cmp.values, cmp.ranks(), cmp.deltas()
    rows: list[dict[str, Any]] = []
    for metric in vals.index:
        name = str(metric)
        row: dict[str, Any] = {"metric": _escape(name) if style == "rich" else name}
        if style == "none":
            row["better"] = metric_direction(str(metric))
        for col in vals.columns:
            v = float(vals.at[metric, col])
            if style == "none":
                row[str(col)] = v
            else:
                row[str(col)] = _mark(_fmt(v, floatfmt), int(ranks.at[metric, col]), style)
        for col in deltas.columns:
            d = float(deltas.at[metric, col])
            key = f"delta {col}"
            row[key] = d if style == "none" else ("-" if math.isnan(d) else f"{d:+.2f}")
        if style == "none":
            r = ranks.loc[metric]
            row["best"] = ", ".join(str(c) for c in r.index[r == 1]) or None
            row["second"] = ", ".join(str(c) for c in r.index[r == 2]) or None
        rows.append(row)
    return pd.DataFrame(rows)


def render_comparison(cmp: Comparison, fmt: str = "table", console: Any = None) -> str | None:
    """Render in ``table`` (printed; returns None), ``markdown``, ``csv`` or ``json``."""
    from robustcli.render import FORMATS, render

    if fmt not in FORMATS:
        raise RobustError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    style = {"table": "rich", "markdown": "markdown"}.get(fmt, "none")
    title = "robust compare" + (f" (baseline: {cmp.baseline})" if cmp.baseline else "")
    return render(comparison_frame(cmp, style), fmt, title=title, console=console)


LEGEND = (
    "best per row in bold, second best underlined (among three or more models); `delta` = "
    "value - baseline; accuracies in %, L2 in [0, 1] pixels; `:auc`, `:success`, `mce` and "
    "losses: lower is better."
)


def plot_comparison(cmp: Comparison, metrics: Sequence[str] | None = None) -> Any:
    """Grouped bars: one group per metric (percent metrics by default), one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(metrics) if metrics else [m for m in cmp.values.index if is_percent(str(m))]
    rows = [r for r in rows if r in cmp.values.index]
    if not rows:
        raise RobustError("no percent metrics to plot: pass train, eval-c or attack results")
    data = cmp.values.loc[rows]
    n_models = max(1, len(data.columns))
    width = 0.8 / n_models
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(rows) * max(2, n_models) / 2 + 2), 4.5))
    xs = range(len(rows))
    for i, col in enumerate(data.columns):
        ax.bar(
            [x - 0.4 + width * (i + 0.5) for x in xs],
            data[col].fillna(0.0).tolist(),
            width,
            label=str(col)
            + (" (baseline)" if col == cmp.baseline and "(baseline" not in str(col) else ""),
        )
    ax.set_xticks(list(xs))
    ax.set_xticklabels([str(r) for r in rows], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def save_plot(fig: Any, path: str | os.PathLike[str], force: bool = False) -> Path:
    """Save a figure atomically (format from the suffix: png, svg, pdf)."""
    import matplotlib.pyplot as plt

    p = check_output(path, force)
    fmt = p.suffix.lstrip(".").lower() or "png"
    with atomic_write(p, "wb") as fh:
        fig.savefig(fh, format=fmt, dpi=150)
    plt.close(fig)
    return p


def write_text(path: str | os.PathLike[str], text: str, *, append: bool = False) -> Path:
    """Write (or append to, e.g. ``$GITHUB_STEP_SUMMARY``) a text file; writes are atomic."""
    p = Path(path).expanduser()
    old = p.read_text() if append and p.exists() else ""
    with atomic_write(p) as fh:
        fh.write(old + ("\n" if old and not old.endswith("\n") else "") + text)
    return p
