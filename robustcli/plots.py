"""Figures: matplotlib ``Figure`` objects built without pyplot (no display, no global backend
change, safe in notebooks); ``save_figure`` is the one figure saver every command uses (atomic,
reproducible bytes, closes the figure).

Attack figure (``plot_attack_curves`` / ``save_attack_figure``): paper B's Fig. 6, one panel per
attack, accuracy loss (%) against L2 distance in [0, 1] pixel units, one curve per model (and
branch): TD models in green, BU and other models in red, as in the paper.
"""

from __future__ import annotations

import io
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from robustcli.io import atomic_write_bytes, check_output

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from robustcli.attacks.runner import AttackOutcome

_TD_COLORS = ("#1a9850", "#66bd63", "#006837", "#a6d96a")
_BU_COLORS = ("#d73027", "#f46d43", "#a50026", "#fdae61")
_BRANCH_STYLES = {"all": "-", "high": "--", "mid": "-.", "low": ":"}


def _attack_xmax(outcomes: Sequence[AttackOutcome], epsilons: Sequence[float] | None) -> float:
    finite = np.concatenate(
        [o.distances[np.isfinite(o.distances) & (o.distances > 0)] for o in outcomes]
        or [np.zeros(0)]
    )
    top = float(np.quantile(finite, 0.98)) * 1.05 if len(finite) else 0.0
    if epsilons:
        top = max(top, float(max(epsilons)))
    return top if top > 0 else 1.0


def plot_attack_curves(
    outcomes: Sequence[AttackOutcome],
    *,
    epsilons: Sequence[float] | None = None,
    title: str | None = None,
    ncols: int = 4,
) -> Figure:
    """One panel per attack (in first-seen order) with an accuracy-loss step curve per model and
    branch. Dotted vertical lines mark ``epsilons``. Returns the figure (not shown)."""
    from matplotlib.figure import Figure

    from robustcli.attacks.metrics import loss_steps

    attacks = list(dict.fromkeys(o.attack for o in outcomes))
    if not attacks:
        raise ValueError("no attack outcome to plot")
    ncols = max(1, min(ncols, len(attacks)))
    nrows = math.ceil(len(attacks) / ncols)
    fig = Figure(figsize=(3.6 * ncols, 3.0 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    colors: dict[str, str] = {}
    td_i = bu_i = 0
    for o in outcomes:
        if o.model in colors:
            continue
        if o.topdown:
            colors[o.model] = _TD_COLORS[td_i % len(_TD_COLORS)]
            td_i += 1
        else:
            colors[o.model] = _BU_COLORS[bu_i % len(_BU_COLORS)]
            bu_i += 1

    for ax, attack in zip(axes.flat, attacks, strict=False):
        runs = [o for o in outcomes if o.attack == attack]
        xmax = _attack_xmax(runs, epsilons)
        for o in runs:
            xs, ys = loss_steps(o.distances)
            xs = np.concatenate([xs, [xmax]])
            ys = np.concatenate([ys, ys[-1:]])
            cut = f", {o.n_cut} cut" if o.n_cut else ""
            ax.plot(
                xs,
                ys,
                drawstyle="steps-post",
                color=colors[o.model],
                linestyle=_BRANCH_STYLES.get(o.branch, "-"),
                linewidth=1.6,
                label=f"{o.label}{cut}",
            )
        for eps in epsilons or ():
            ax.axvline(eps, color="0.8", linewidth=0.8, linestyle=":", zorder=0)
        ax.set_xlim(0, xmax)
        ax.set_ylim(bottom=0)
        ax.set_title(attack, fontsize=10)
        ax.set_xlabel("L2 distance ([0,1] pixels)", fontsize=8)
        ax.set_ylabel("accuracy loss (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, linewidth=0.5)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(attacks) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def save_attack_figure(
    fig: Figure, stem: str | os.PathLike[str], *, force: bool = False, dpi: int = 150
) -> dict[str, Path]:
    """Write ``fig`` as ``<stem>.png`` and ``<stem>.svg`` (``save_figure``; existing files need
    ``force``)."""
    formats = ("png", "svg")
    paths = save_figure(fig, stem, formats=formats, force=force, dpi=dpi)
    return dict(zip(formats, paths, strict=True))


#: savefig options per format that keep the bytes reproducible (no creation date)
_REPRODUCIBLE: dict[str, dict[str, Any]] = {
    "svg": {"metadata": {"Date": None}},
    "pdf": {"metadata": {"CreationDate": None}},
}


def save_figure(
    fig: Figure,
    path: str | os.PathLike[str],
    *,
    formats: Sequence[str] | None = None,
    force: bool = False,
    dpi: int = 150,
) -> list[Path]:
    """The project's one figure saver: write ``fig`` atomically, then close it.

    ``formats=None``: one file, ``path``, in the format its suffix names (PNG without one).
    Otherwise ``path`` is a stem and ``<stem>.<format>`` is written per format, e.g.
    ``("png", "svg")``. Every path is checked first (``check_output``: an existing file needs
    ``force``), so a refused one leaves all of them untouched. Returns the paths written.
    """
    path = Path(path)
    if formats is None:
        targets = [(path.suffix.lstrip(".").lower() or "png", path)]
    else:
        targets = [(fmt, path.with_suffix(f".{fmt}")) for fmt in formats]
    for _, p in targets:
        check_output(p, force)
    import matplotlib

    try:
        # a fixed salt: SVG element ids are otherwise random, so equal figures would differ
        with matplotlib.rc_context({"svg.hashsalt": "robustcli"}):
            for fmt, p in targets:
                buf = io.BytesIO()
                fig.savefig(buf, format=fmt, dpi=dpi, **_REPRODUCIBLE.get(fmt, {}))
                atomic_write_bytes(p, buf.getvalue())
    finally:
        _close(fig)
    return [p for _, p in targets]


def _close(fig: Figure) -> None:
    # Only a figure made by pyplot is registered with it (and would leak until closed); the
    # Figure objects built here are not, and importing pyplot just to close them would pick a
    # GUI backend.
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)
