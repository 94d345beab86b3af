"""``robust compare`` and ``robust quickstart`` as library calls.

``compare(paths, baseline=...)`` loads result documents (``robustcli.results.load_result``),
builds the metrics frame (rows = metrics, columns = models), the deltas against the baseline
column and, per row, the best and second-best model the way paper A's Table 1 marks them (best
bold, second underlined; direction per metric). ``comparison_frame`` gives the table to render
(``robustcli.render``), ``plot_comparison`` a grouped bar plot (matplotlib Agg),
``write_text`` / ``save_plot`` write atomically. Results measured on different inputs (dataset,
corruptions, severities, images, attacks, epsilons: ``input_mismatches``) are refused unless
``allow_mismatch=True``, and then every rendering says so.

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
from robustcli.results import (
    is_percent,
    load_result,
    metric_direction,
    metrics_frame,
    result_conditions,
)

MARK_STYLES = ("rich", "markdown", "plain", "none")


@dataclass
class Comparison:
    """Metrics of several models side by side (``values``: rows = metrics, columns = models)."""

    values: pd.DataFrame
    baseline: str | None = None
    sources: dict[str, str] = field(default_factory=dict)
    #: How the inputs differ (one line each); non-empty only with ``allow_mismatch=True``.
    mismatches: list[str] = field(default_factory=list)
    #: ``paired=True``: per candidate column, the bootstrap interval over images of its delta
    #: (``ci_low`` / ``ci_high`` per metric; ``robustcli.evaluate.paired``).
    intervals: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def mismatch_note(self) -> str | None:
        """The warning every output of a mismatched comparison carries, or None."""
        if not self.mismatches:
            return None
        return "WARNING: compared across mismatched inputs (--allow-mismatch): " + "; ".join(
            self.mismatches
        )

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


def _label(doc: Mapping[str, Any], fallback: str) -> str:
    src = doc.get("_source")
    return str(src) if src else fallback


def _show(values: Sequence[str]) -> str:
    return (
        ", ".join(values) if len(values) <= 6 else f"{', '.join(values[:5])}, ... ({len(values)})"
    )


def _difference(key: str, a: Any, b: Any, la: str, lb: str) -> str | None:
    """How condition ``key`` differs between side ``la`` (value ``a``) and ``lb``, or None."""
    if isinstance(a, list) and isinstance(b, list):
        only_a = [x for x in a if x not in b]
        only_b = [x for x in b if x not in a]
        if not only_a and not only_b:
            return None  # the same set, perhaps in another order
        parts = [
            f"{la} has {_show(only_a)}" if only_a else "",
            f"{lb} has {_show(only_b)}" if only_b else "",
        ]
        return f"{key} differ: only " + "; only ".join(p for p in parts if p)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        diffs = [
            f"{name} {k}={a[name].get(k)!r} vs {b[name].get(k)!r}"
            for name in a
            if name in b
            for k in sorted({*a[name], *b[name]})
            if a[name].get(k) != b[name].get(k)
        ]
        if not diffs:
            return None
        return f"{key} differ: {', '.join(diffs)} ({la} vs {lb})"
    if a == b:
        return None
    verb = "differ" if key.endswith("s") else "differs"
    return f"{key} {verb}: {la} has {a}, {lb} has {b}"


def input_mismatches(
    docs: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any] | None = None
) -> list[str]:
    """One line per way the documents were measured on different inputs (see
    ``robustcli.results.result_conditions``).

    The dataset must agree across every document; the other conditions (corruptions,
    severities, images, attacks, epsilons, attack settings) among documents of the same kind,
    since a model's train, eval-c and attack results legitimately differ in them. Each document
    is held against the baseline (or the first document of its kind) as the reference."""
    labelled = [(_label(d, f"result {i + 1}"), d) for i, d in enumerate(docs)]
    if baseline is not None:
        labelled.insert(0, ("baseline " + _label(baseline, "(given)"), baseline))
    conds = [(label, str(d.get("kind")), result_conditions(d)) for label, d in labelled]
    out: list[str] = []
    # (kind or "*", condition) -> the reference: its position, label and value
    refs: dict[tuple[str, str], tuple[int, str, Any]] = {}
    for i, (label, kind, cond) in enumerate(conds):
        for key, value in cond.items():
            scope = "*" if key == "dataset" else kind
            ref = refs.setdefault((scope, key), (i, label, value))
            if ref[0] == i:
                continue
            diff = _difference(key, ref[2], value, ref[1], label)
            if diff and diff not in out:
                out.append(diff)
    return out


def compare(
    results: Sequence[str | os.PathLike[str] | Mapping[str, Any]],
    *,
    baseline: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    allow_mismatch: bool = False,
    paired: bool = False,
) -> Comparison:
    """Load ``results`` (paths or documents) and the optional ``baseline`` into a Comparison.

    The baseline's column is named after its model, plus `` (baseline)`` when a compared result
    has the same model name. Results measured on different inputs (another dataset, other
    corruptions, severities, number of images, attacks, epsilons; ``input_mismatches``) are
    refused with one line naming both sides, unless ``allow_mismatch``: then the Comparison
    carries the differences in ``mismatches`` and every rendering says so.

    ``paired``: every result and the baseline are eval-c documents with per-image results
    (``eval-c --per-image``) on the same images; each delta then gets a 95 % bootstrap interval
    over images (``intervals``), the image-sampling error of that one pair of runs."""
    if not results:
        raise RobustError("nothing to compare: pass one or more result files")
    docs = [r if isinstance(r, Mapping) else load_result(r) for r in results]
    bdoc = None
    if baseline is not None:
        bdoc = baseline if isinstance(baseline, Mapping) else load_result(baseline)
    mismatches = input_mismatches(docs, bdoc)
    if mismatches and not allow_mismatch:
        raise RobustError(
            f"results measured on different inputs: {'; '.join(mismatches)}; compare results "
            "of the same dataset and settings, or pass --allow-mismatch"
        )
    if paired and (bdoc is None or allow_mismatch):
        raise RobustError(
            "--paired compares each result with the baseline on the same images: pass "
            "--baseline (and drop --allow-mismatch)"
        )
    frame = metrics_frame(docs)
    intervals = _paired_intervals(docs, bdoc, [str(c) for c in frame.columns]) if paired else {}
    sources = {str(c): "" for c in frame.columns}
    base_label = None
    if bdoc is not None:
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
    return Comparison(frame, base_label, sources, mismatches, intervals)


def _paired_intervals(
    docs: Sequence[Mapping[str, Any]], bdoc: Mapping[str, Any] | None, columns: Sequence[str]
) -> dict[str, pd.DataFrame]:
    """Per result column, the bootstrap interval over images of ``result - baseline``."""
    from robustcli.evaluate.paired import paired_bootstrap

    assert bdoc is not None
    for doc in (*docs, bdoc):
        if doc.get("kind") != "eval-c":
            raise RobustError(
                f"--paired compares eval-c results image by image: "
                f"{_label(doc, 'a result')} is a {doc.get('kind')} result; drop it or --paired"
            )
    # each eval-c document opens its own column, in order (metrics_frame)
    return {
        col: paired_bootstrap(doc, bdoc)[["ci_low", "ci_high"]]
        for col, doc in zip(columns, docs, strict=True)
    }


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
            ci = cmp.intervals.get(str(col))
            lo, hi = (
                (float(ci.at[metric, "ci_low"]), float(ci.at[metric, "ci_high"]))
                if ci is not None and metric in ci.index
                else (math.nan, math.nan)
            )
            if style == "none":
                row[key] = d
                if ci is not None:
                    row[f"ci_low {col}"], row[f"ci_high {col}"] = lo, hi
            else:
                text = "-" if math.isnan(d) else f"{d:+.2f}"
                if not (math.isnan(d) or math.isnan(lo)):
                    text += f" [{lo:+.2f}, {hi:+.2f}]"
                row[key] = text
        if style == "none":
            r = ranks.loc[metric]
            row["best"] = ", ".join(str(c) for c in r.index[r == 1]) or None
            row["second"] = ", ".join(str(c) for c in r.index[r == 2]) or None
        rows.append(row)
    return pd.DataFrame(rows)


def render_comparison(cmp: Comparison, fmt: str = "table", console: Any = None) -> str | None:
    """Render in ``table`` (printed; returns None), ``markdown``, ``csv`` or ``json``."""
    from robustcli.render import check_format, render

    check_format(fmt)
    style = {"table": "rich", "markdown": "markdown"}.get(fmt, "none")
    title = "robust compare" + (f" (baseline: {cmp.baseline})" if cmp.baseline else "")
    note = cmp.mismatch_note
    if note and fmt == "table":
        title += " - ACROSS MISMATCHED INPUTS"
    if fmt == "table":
        title = _escape(title)  # a model or file name such as "run[1]" is not Rich markup
    frame = comparison_frame(cmp, style)
    text = render(frame, fmt, title=title, console=console, markup=fmt == "table")
    if note and fmt == "markdown" and text is not None:
        # CSV / JSON stay machine-readable: the CLI prints the warning on stderr for them
        text = f"> **{note}**\n\n{text}"
    return text


LEGEND = (
    "best per row in bold, second best underlined (among three or more models); `delta` = "
    "value - baseline (--paired: with its [95 % bootstrap interval over images]); accuracies "
    "in %, L2 in [0, 1] pixels; `:auc`, `:success`, `mce` and losses: lower is better."
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


def check_plot_path(path: str | os.PathLike[str], force: bool = False) -> tuple[Path, str]:
    """``(path, format)`` of a plot output, checked before any work: not an existing file
    (unless ``force``), a writable place, a suffix matplotlib writes (none: png)."""
    from matplotlib.figure import Figure

    p = check_output(path, force)
    fmt = p.suffix.lstrip(".").lower() or "png"
    known = Figure().canvas.get_supported_filetypes()
    if fmt not in known:
        raise RobustError(
            f"cannot write a plot as {p.suffix!r} ({p}): use .png, .svg or .pdf "
            f"(or {', '.join('.' + k for k in sorted(known) if k not in ('png', 'svg', 'pdf'))})"
        )
    return p, fmt


def save_plot(fig: Any, path: str | os.PathLike[str], force: bool = False) -> Path:
    """Save a figure atomically and close it (format from the suffix: png, svg, pdf)."""
    from robustcli.plots import save_figure

    p, _ = check_plot_path(path, force)  # refuses a format matplotlib cannot write
    return save_figure(fig, p, force=force)[0]


def check_summary_path(path: str | os.PathLike[str]) -> Path:
    """A file ``write_text(..., append=True)`` can append to: not a folder, in a writable place."""
    from robustcli.io import check_writable

    p = Path(path).expanduser()
    if p.exists() and not p.is_file():
        raise RobustError(f"summary {p} is not a file: pass a file to append the summary to")
    return check_writable(p)


def write_text(path: str | os.PathLike[str], text: str, *, append: bool = False) -> Path:
    """Write (or append to, e.g. ``$GITHUB_STEP_SUMMARY``) a text file; writes are atomic."""
    p = Path(path).expanduser()
    old = p.read_text() if append and p.exists() else ""
    with atomic_write(p) as fh:
        fh.write(old + ("\n" if old and not old.endswith("\n") else "") + text)
    return p
