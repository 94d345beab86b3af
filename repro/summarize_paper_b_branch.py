"""Paper B, Fig. 5 over seeds: which input of a TD network is the vulnerable one.

Each BRANCH_DIR is the output of one ``robust attack -c TD --branch all,high,mid,low`` (one
seed). Prints a Markdown table, one row per attack: (a) test accuracy (%) when the perturbation
the attack found on the whole model is fed to one input only, the other inputs clean (paper
B's measurement), mean +- std over seeds; (b) the median minimal L2 when the attack may perturb
only that input (``inf``: never fooled within the pixel range; ``-``: not attacked alone), per
seed. Both are read from the attack's own ``attack.json`` (the numbers ``robust attack``
printed), nothing recomputed.
A second table names each cell's (attack and seed) vulnerable input by both measurements:
(a) the single input with the largest accuracy drop from clean, if that drop is at least
``--min-drop`` points; (b) the single input with the smallest median L2; and counts the cells
(the worst case left out) where it is the high-resolution input. ``--png PATH`` draws (a) as
bars, one panel per attack: clean, all inputs, and each input alone, mean over seeds with each
seed as a dot.

    python repro/summarize_paper_b_branch.py runs/repro-b/cifar/branch-td-nin-light-e3-s0 \
        runs/repro-b/cifar/branch-td-nin-light-e3-s1 runs/repro-b/cifar/branch-td-nin-light-e3-s2
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from summarize_paper_b import mean_ci

from robustcli.attacks.results import read_attack_result
from robustcli.errors import RobustError
from robustcli.plots import save_figure
from robustcli.results import document_metrics

INPUTS = ("all", "high", "mid", "low")


def branch_seed(path: Path) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """One seed's (a) transfer accuracy and (b) per-input median L2: attack -> input -> value.
    (b) comes from the per-input summary rows as ``robust compare`` reads them
    (``document_metrics``: ``attack:<attack>[<input>]:median_l2``, ``inf`` decoded)."""
    doc, _ = read_attack_result(path)
    rows = (doc.get("branch_transfer") or {}).get("rows") or []
    if not rows:
        raise RobustError(
            f"{path} holds no branch test: run `robust attack -c TD --branch all,high,mid,low`"
        )
    transfer = {r["attack"]: {b: float(r[b]) for b in ("clean", *INPUTS)} for r in rows}
    metrics = document_metrics(doc).get(rows[0]["model"], {})
    l2 = {
        a: {
            b: metrics[f"attack:{a}[{b}]:median_l2"]
            for b in INPUTS[1:]
            if f"attack:{a}[{b}]:median_l2" in metrics
        }
        for a in transfer
    }
    return transfer, l2


def _l2_cell(value: float | None) -> str:
    """A median L2 as printed, ``-`` for an input that was not attacked alone."""
    return "-" if value is None else f"{value:.2f}"


def branch_table(seeds: list[tuple[dict, dict]]) -> list[str]:
    """Markdown rows over seeds (the attacks of the first seed, in its order)."""
    head = (
        " | ".join(f"(a) {b}" for b in INPUTS) + " | " + " | ".join(f"(b) {b}" for b in INPUTS[1:])
    )
    rows = [f"| attack | {head} |", "|---|" + "---|" * (len(INPUTS) * 2 - 1)]
    for attack in seeds[0][0]:
        cells = []
        for b in INPUTS:
            mean, std, _, _ = mean_ci([t[attack][b] for t, _ in seeds])
            cells.append(f"{mean:.1f}" + (f" +- {std:.1f}" if math.isfinite(std) else ""))
        for b in INPUTS[1:]:
            cells.append(" / ".join(_l2_cell(l2.get(attack, {}).get(b)) for _, l2 in seeds))
        rows.append(f"| {attack} | " + " | ".join(cells) + " |")
    return rows


def _unique_best(values: dict[str, float], best: float) -> str:
    """The one input holding ``best``, or ``tie`` when several do."""
    holders = [b for b, v in values.items() if v == best]
    return holders[0] if len(holders) == 1 else "tie"


def vulnerable(
    transfer: dict[str, float], l2: dict[str, float], min_drop: float
) -> tuple[str, str]:
    """One cell's vulnerable input by (a) and by (b): ``high``, ``mid``, ``low``, ``tie`` or
    ``none`` ((a): no input's accuracy drop from clean reaches ``min_drop`` points; (b): no input
    was ever fooled, every median ``inf``)."""
    # rounded: attack.json files written before the fix of d609244 carry float32 noise
    # (60.0000006), which must not break a tie
    drops = {b: round(transfer["clean"] - transfer[b], 4) for b in INPUTS[1:]}
    top = max(drops.values())
    by_a = _unique_best(drops, top) if top >= min_drop else "none"
    finite = {b: v for b, v in l2.items() if math.isfinite(v)}
    by_b = _unique_best(finite, min(finite.values())) if finite else "none"
    return by_a, by_b


def vulnerable_table(seeds: list[tuple[dict, dict]], min_drop: float) -> list[str]:
    """Markdown rows: per attack, each seed's vulnerable input as ``(a) / (b)``; then the counts
    of cells (attacks other than the worst case, times seeds) where it is the high input."""
    head = " | ".join(f"seed {i}: (a) / (b)" for i in range(len(seeds)))
    rows = [f"| attack | {head} |", "|---|" + "---|" * len(seeds)]
    n = high_a = high_b = 0
    for attack in seeds[0][0]:
        cells = [vulnerable(t[attack], l2.get(attack, {}), min_drop) for t, l2 in seeds]
        rows.append(f"| {attack} | " + " | ".join(f"{a} / {b}" for a, b in cells) + " |")
        if attack != "worst-case":
            n += len(cells)
            high_a += sum(a == "high" for a, _ in cells)
            high_b += sum(b == "high" for _, b in cells)
    rows.append("")
    rows.append(f"high input the vulnerable one: (a) {high_a} of {n} cells, (b) {high_b} of {n}")
    return rows


BARS = ("clean", *INPUTS)
BAR_COLORS = ("0.6", "0.15", "tab:green", "tab:olive", "tab:cyan")


def branch_figure(seeds: list[tuple[dict, dict]]) -> Figure:
    """(a) as bars: per attack, test accuracy with the perturbation fed to no input (clean), to
    all, and to each input alone; bar = mean over seeds, dots = the seeds. Built without pyplot,
    like ``robustcli.plots``."""
    attacks = list(seeds[0][0])
    fig = Figure(figsize=(2.6 * len(attacks), 2.8))
    axes = fig.subplots(1, len(attacks), squeeze=False, sharey=True)[0]
    x = np.arange(len(BARS))
    for ax, attack in zip(axes, attacks, strict=True):
        values = np.array([[t[attack][b] for b in BARS] for t, _ in seeds])
        ax.bar(x, values.mean(axis=0), color=BAR_COLORS, width=0.7)
        for row in values:
            ax.plot(x, row, "o", color="black", markersize=2.5, linestyle="none")
        ax.set_xticks(x, ["clean", "all", "high", "medium", "low"], fontsize=7, rotation=30)
        ax.set_title(attack, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("test accuracy (%)", fontsize=8)
    fig.suptitle(f"perturbation fed to one input ({len(seeds)} seeds)", fontsize=9)
    fig.tight_layout()
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="one branch-test attack folder per seed")
    ap.add_argument(
        "--min-drop",
        type=float,
        default=5.0,
        help="(a): the smallest accuracy drop (points) that names a vulnerable input (default 5)",
    )
    ap.add_argument("--png", type=Path, help="also draw (a) as bars into this PNG (overwritten)")
    args = ap.parse_args()
    try:
        seeds = [branch_seed(d) for d in args.dirs]
    except RobustError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(
        f"Fig. 5 over {len(seeds)} seed(s): (a) test accuracy % with the whole-model perturbation "
        "fed to one input (mean +- std over seeds); (b) median minimal L2 when only that input "
        "is attacked (per seed)\n"
    )
    print("\n".join(branch_table(seeds)))
    print(
        f"\nVulnerable input per cell: (a) largest accuracy drop from clean, at least "
        f"{args.min_drop:g} points ('none' below); (b) smallest median L2\n"
    )
    print("\n".join(vulnerable_table(seeds, args.min_drop)))
    if args.png:
        save_figure(branch_figure(seeds), args.png, force=True, dpi=120)


if __name__ == "__main__":
    main()
