"""Paper B, Exp. 2 over seeds: TD vs BU per attack, mean +- std and paired differences.

Each ATTACK_DIR is the output of one ``robust attack -c TD --vs BU`` (one seed: both models of
that seed, the same images). Per attack and seed it takes the median minimal L2 of each model
(over the images it classifies correctly; failures at infinity) and the mean accuracy loss over
[0, E] (``auc``, lower = more robust), then reports mean +- std over seeds and the paired
difference TD - BU with a 95 % t-interval over seeds; beside it, how many seeds have TD ahead,
the signed-rank p over seeds and whether TD and BU vary as much from seed to seed
(``seed_agreement``). Per seed it also gives TD - BU over the images BOTH models classify
correctly (the last column, ``joint=True``): each model's own median is over its own correct
images, so the less accurate model leaves out images near its decision boundary (small L2),
which lifts its median by itself; the joint set removes that selection. Writes a Markdown table
and a figure of the accuracy-loss curves (mean over seeds, TD green, BU red, as paper B's
Fig. 6).

    python repro/summarize_paper_b.py runs/repro-b/attack-s0 runs/repro-b/attack-s1 \
        --out docs/figures/paper_b_mnist

``--attacks salt-pepper`` keeps only the named attacks: for seeds that ran different attack sets
(their worst cases are over different sets, so they are not pooled). Naming ``worst-case`` among
them recomputes each seed's worst case over exactly the other named attacks.

``--against DIR ...`` takes a second group of seeds (say, the same attacks after 12 instead of
30 epochs) and adds a table of the difference between the groups' mean TD - BU median L2, with a
95 % Welch interval (the groups are different seeds, so the comparison is unpaired), and the
same for each model's own median L2. With ``--paired`` the second group is the same seeds, in
the same order, on the same images (say, each seed trained again at another length), and the
table gives the per-seed difference instead: its mean with a t interval over seeds, how many
seeds lie above 0, and the signed-rank p.

``--level 0.975`` sets the confidence of every interval over seeds (default 0.95), for a
decision rule that splits its alpha, such as a second look at the same question.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from robustcli.attacks.metrics import split_distances
from robustcli.attacks.results import read_attack_result
from robustcli.attacks.runner import AttackOutcome, complete_attacks, worst_case
from robustcli.plots import save_figure


def median_l2(distances: np.ndarray, correct: np.ndarray) -> float:
    _, _, d = split_distances(distances, correct)
    return float(np.median(d)) if len(d) else math.nan


def joint_correct(td_ok: np.ndarray, bu_ok: np.ndarray) -> np.ndarray:
    """The images both models classify correctly (the joint set)."""
    return np.asarray(td_ok, dtype=bool) & np.asarray(bu_ok, dtype=bool)


def median_diff_ci(
    td: np.ndarray,
    td_ok: np.ndarray,
    bu: np.ndarray,
    bu_ok: np.ndarray,
    n_boot: int = 2000,
    joint: bool = False,
) -> tuple[float, float]:
    """95 % bootstrap interval over images of median L2 (TD) - median L2 (BU), one seed.

    Both models were attacked on the same images, so the images are resampled together (paired);
    each model's median is over the resampled images it classifies correctly (failures at
    infinity), as ``median_l2``; with ``joint``, both medians are over the resampled images BOTH
    classify correctly. This is the image-sampling error of one seed's difference; the interval
    over seeds (the other column) adds training-seed noise.
    """
    if joint:
        td_ok = bu_ok = joint_correct(td_ok, bu_ok)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(td), size=(n_boot, len(td)))
    a = np.where(td_ok, td, np.nan)[idx]
    b = np.where(bu_ok, bu, np.nan)[idx]
    with np.errstate(all="ignore"):
        d = np.nanmedian(a, axis=1) - np.nanmedian(b, axis=1)
    d = d[np.isfinite(d)]
    if not len(d):
        return math.nan, math.nan
    return float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))


def diff_cell(td: AttackOutcome, bu: AttackOutcome, joint: bool = False) -> str:
    """One seed's TD - BU median L2 with its image interval, e.g. ``+0.54 [-0.05, +1.27]``; with
    ``joint``, over the images both classify correctly, their number appended."""
    td_ok, bu_ok = td.clean_correct, bu.clean_correct
    if joint:
        td_ok = bu_ok = joint_correct(td_ok, bu_ok)
    d = median_l2(td.distances, td_ok) - median_l2(bu.distances, bu_ok)
    lo, hi = median_diff_ci(td.distances, td_ok, bu.distances, bu_ok)
    return f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]" + (f" ({int(td_ok.sum())})" if joint else "")


def loss_curve(distances: np.ndarray, correct: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Accuracy loss (%) at each L2 of ``grid`` (paper B's y axis)."""
    n, n_correct, d = split_distances(distances, correct)
    if not len(d):
        return np.full(len(grid), math.nan)
    clean = 100.0 * n_correct / n
    return clean * (d[None, :] <= grid[:, None]).mean(axis=1)


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """Mean, std (ddof 1), and the t-interval of the mean at ``level`` (two-sided)."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return (math.nan,) * 4
    m = float(v.mean())
    if len(v) < 2:
        return m, math.nan, math.nan, math.nan
    s = float(v.std(ddof=1))
    h = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * s / math.sqrt(len(v)))
    return m, s, m - h, m + h


def level_label(level: float) -> str:
    """A confidence level as the table headers print it: 0.95 -> "95 %", 0.975 -> "97.5 %"."""
    return f"{100 * level:g} %"


def fmt(v: float) -> str:
    """A table value: three decimals, or n/a where there is none."""
    return f"{v:.3f}" if math.isfinite(v) else "n/a"


def format_p(p: float) -> str:
    """A p value for the table: as `fmt`, but two significant digits below 0.001 (with 13 seeds
    all but one alike the exact signed-rank p is 0.00049, which three decimals print as 0)."""
    return f"{p:.1e}" if math.isfinite(p) and p < 0.001 else fmt(p)


def seed_agreement(td: list[float], bu: list[float]) -> tuple[int, int, float, float]:
    """How the seeds agree, beside the t-interval (which one outlying seed can widen): the
    number of seeds with TD ahead (TD > BU), the seeds compared, the Wilcoxon signed-rank p of
    TD - BU, and the Brown-Forsythe p that TD's and BU's spread over seeds are equal."""
    t, b = np.asarray(td, dtype=np.float64), np.asarray(bu, dtype=np.float64)
    ok = np.isfinite(t) & np.isfinite(b)
    t, b = t[ok], b[ok]
    ahead = int((t > b).sum())
    if len(t) < 3 or np.all(t == b):
        return ahead, len(t), math.nan, math.nan
    signed = float(stats.wilcoxon(t - b).pvalue)
    with np.errstate(all="ignore"):
        spread = float(stats.levene(t, b, center="median").pvalue)
    return ahead, len(t), signed, spread


def welch_ci(
    a: list[float], b: list[float], level: float = 0.95
) -> tuple[float, float, float, float]:
    """mean(a) - mean(b) for two groups of different seeds (unpaired), with its Welch interval
    at ``level`` (unequal variances) and two-sided p; non-finite values are left out, and a group
    of fewer than two leaves the interval and p undefined."""
    x = np.asarray([v for v in a if math.isfinite(v)], dtype=np.float64)
    y = np.asarray([v for v in b if math.isfinite(v)], dtype=np.float64)
    if not (len(x) and len(y)):
        return (math.nan,) * 4
    d = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return d, math.nan, math.nan, math.nan
    r = stats.ttest_ind(x, y, equal_var=False)
    ci = r.confidence_interval(level)
    return d, float(ci.low), float(ci.high), float(r.pvalue)


def seed_medians(table: dict[str, dict[str, list]]) -> dict[str, dict[str, list[float]]]:
    """attack -> {"TD - BU": [per seed], "TD": [...], "BU": [...]}: median minimal L2 per seed
    (each model over the images it classifies correctly), from ``collect``'s table."""
    out = {}
    for attack, sides in table.items():
        pairs = list(zip(sides["td"], sides["bu"], strict=False))
        td = [median_l2(t.distances, t.clean_correct) for t, _ in pairs]
        bu = [median_l2(b.distances, b.clean_correct) for _, b in pairs]
        out[attack] = {"TD - BU": [t - b for t, b in zip(td, bu, strict=True)], "TD": td, "BU": bu}
    return out


def recorded_indices(doc: dict) -> list | None:
    """The test-image indices an attack.json records (``provenance.data.indices``), or None."""
    return (doc.get("provenance") or {}).get("data", {}).get("indices")


def common_images(spec: str, results: list[tuple[dict, list]]) -> list[list]:
    """Each part's outcomes restricted to the test images every part attacked, found by the
    indices its attack.json records (``provenance.data.indices``): runs of one seed with
    different ``-n`` (a draw of 100 is a subset of the draw of 200 with the same ``--seed``)
    are then compared on the same images. Parts on identical images come back unchanged; parts
    of different sizes without recorded indices cannot be matched and stop the script."""
    outs = [o for _, o in results]
    if len(results) < 2:
        return outs
    idx = [recorded_indices(doc) for doc, _ in results]
    if any(i is None for i in idx):
        sizes = {o[0].n for o in outs if o}
        if len(sizes) > 1:
            raise SystemExit(
                f"{spec}: the parts attacked different numbers of images ({sorted(sizes)}) and "
                "not all record their image indices: join only runs on the same images"
            )
        return outs
    common = functools.reduce(np.intersect1d, idx)
    if not len(common):
        raise SystemExit(f"{spec}: the parts share no test image: join runs of the same --seed")
    if all(len(i) == len(common) for i in idx):
        return outs
    sizes_text = ", ".join(str(len(i)) for i in idx)
    print(
        f"{spec}: restricted to the {len(common)} images of all parts (of {sizes_text})",
        file=sys.stderr,
    )
    return [[o.select(np.isin(i, common)) for o in part] for i, part in zip(idx, outs, strict=True)]


def seed_outcomes(spec: str, only: set[str] | None = None) -> list:
    """The outcomes of one seed: one attack folder, or several joined by commas (the seed's
    attack set split over parallel processes, same models; parts on different draws of images
    are restricted to the images they share, ``common_images``). A split seed's per-part
    worst cases are dropped and the worst case over all its attacks recomputed per model, over
    one attack set for all models (``complete_attacks``), as ``robust attack`` does. With
    ``only`` (attack names), the other attacks are dropped first and the worst case is over
    ``only``."""
    parts = [Path(p) for p in spec.split(",")]
    outcomes = [
        o for outs in common_images(spec, [read_attack_result(p) for p in parts]) for o in outs
    ]
    if len(parts) == 1 and only is None:
        return outcomes
    outcomes = [o for o in outcomes if o.attack != "worst-case" and o.branch == "all"]
    if only is not None:
        outcomes = [o for o in outcomes if o.attack in only]
    groups = [
        [o for o in outcomes if o.model == m] for m in dict.fromkeys(o.model for o in outcomes)
    ]
    common = complete_attacks(groups)
    return [o for g in groups for o in g + [worst_case(g, include=common)]]


def collect(dirs: list[str], only: set[str] | None = None) -> dict[str, dict[str, list]]:
    """attack -> {"td": [outcome per seed], "bu": [...]} (paired by folder)."""
    table: dict[str, dict[str, list]] = {}
    for d in dirs:
        for o in seed_outcomes(d, only):
            if o.branch != "all":
                continue
            side = "td" if o.topdown else "bu"
            table.setdefault(o.attack, {"td": [], "bu": []})[side].append(o)
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "dirs", nargs="+", help="attack folders, one per seed (DIR1,DIR2: one seed split)"
    )
    ap.add_argument("--out", type=Path, default=Path("paper_b_summary"))
    ap.add_argument("--max-l2", type=float, default=5.0, help="x range of the curves")
    ap.add_argument(
        "--attacks",
        help="comma-separated attacks to report (default: all); use it when the seeds ran "
        "different attack sets, since a worst case over different sets is not comparable; "
        "naming worst-case recomputes it over the other named attacks",
    )
    ap.add_argument(
        "--against",
        nargs="+",
        metavar="DIR",
        help="a second group of seeds (attack folders, e.g. the same attacks after a different "
        "training length): adds a table of the difference of the mean TD - BU median L2 between "
        "the two groups, with a 95 %% Welch interval (different seeds, so unpaired), and the same "
        "for each model's own median",
    )
    ap.add_argument(
        "--paired",
        action="store_true",
        help="--against holds the same seeds, in the same order, on the same images (e.g. each "
        "seed trained again at another length): report the per-seed difference with a t "
        "interval and the signed-rank p instead of the Welch comparison",
    )
    ap.add_argument(
        "--level",
        type=float,
        default=0.95,
        help="confidence of every interval over seeds (default 0.95; e.g. 0.975 for a second "
        "look that splits alpha over two)",
    )
    args = ap.parse_args()
    if not 0 < args.level < 1:
        ap.error(f"--level {args.level} is not a confidence between 0 and 1: e.g. 0.95")
    if args.paired and not args.against:
        ap.error("--paired compares with the --against folders: give them")
    if args.paired and len(args.against) != len(args.dirs):
        ap.error(
            f"--paired needs one --against folder per seed folder ({len(args.dirs)}), "
            f"got {len(args.against)}: list the same seeds in the same order"
        )
    wanted = args.attacks.split(",") if args.attacks else None
    # a worst case asked for by name is recomputed over the other named attacks only
    only = set(wanted) - {"worst-case"} if wanted and "worst-case" in wanted else None
    if only == set():
        ap.error("--attacks worst-case needs the attacks it is over: e.g. blur,contrast,worst-case")
    table = collect(args.dirs, only)
    if wanted:
        missing = [a for a in wanted if a not in table]
        if missing:
            ap.error(f"no results for {', '.join(missing)} in these folders: check --attacks")
        table = {a: table[a] for a in wanted}
    grid = np.linspace(0.0, args.max_l2, 201)
    level = level_label(args.level)
    lines = [
        "| attack | seeds | TD clean % | BU clean % | TD median L2 | BU median L2 | "
        f"TD - BU median L2 [{level} CI] | TD auc % | BU auc % | TD - BU auc [{level} CI] | "
        "verdict | "
        "seeds with TD ahead (median L2) | signed-rank p | equal seed spread, p | "
        "TD - BU median L2 per seed [95 % bootstrap CI over images] | "
        "the same over the images both classify correctly (n) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    curves: dict[str, dict[str, np.ndarray]] = {}
    medians = seed_medians(table)
    for attack, sides in table.items():
        pairs = list(zip(sides["td"], sides["bu"], strict=False))
        if not pairs:
            continue
        med = medians[attack]
        cols: dict[str, list[float]] = {"tdm": med["TD"], "bum": med["BU"], "dm": med["TD - BU"]}
        cols.update({k: [] for k in ("tdc", "buc", "tda", "bua", "da")})
        per_seed: list[str] = []
        per_seed_joint: list[str] = []
        curves[attack] = {"td": [], "bu": []}
        for td, bu in pairs:
            tdl = loss_curve(td.distances, td.clean_correct, grid)
            bul = loss_curve(bu.distances, bu.clean_correct, grid)
            tda, bua = float(np.mean(tdl)), float(np.mean(bul))
            cols["tdc"].append(100 * td.clean_correct.mean())
            cols["buc"].append(100 * bu.clean_correct.mean())
            per_seed.append(diff_cell(td, bu))
            per_seed_joint.append(diff_cell(td, bu, joint=True))
            cols["tda"].append(tda)
            cols["bua"].append(bua)
            cols["da"].append(tda - bua)
            curves[attack]["td"].append(tdl)
            curves[attack]["bu"].append(bul)

        def ms(key: str, cols: dict[str, list[float]] = cols) -> str:
            m, s, _, _ = mean_ci(cols[key])
            return f"{fmt(m)} +- {fmt(s)}"

        def diff(key: str, cols: dict[str, list[float]] = cols) -> tuple[str, float, float]:
            m, _, lo, hi = mean_ci(cols[key], args.level)
            return f"{fmt(m)} [{fmt(lo)}, {fmt(hi)}]", lo, hi

        dm, lo, hi = diff("dm")
        da, alo, ahi = diff("da")
        if not (math.isfinite(lo) and math.isfinite(alo)):
            verdict = "inconclusive (too few seeds)"
        elif lo > 0 and ahi < 0:
            verdict = "TD more robust"
        elif hi < 0 and alo > 0:
            verdict = "BU more robust"
        else:
            verdict = "no significant difference" if lo <= 0 <= hi else "mixed"
        ahead, n_seeds, signed, spread = seed_agreement(cols["tdm"], cols["bum"])
        lines.append(
            f"| {attack} | {len(pairs)} | {ms('tdc')} | {ms('buc')} | {ms('tdm')} | {ms('bum')} "
            f"| {dm} | {ms('tda')} | {ms('bua')} | {da} | {verdict} | {ahead} of {n_seeds} "
            f"| {format_p(signed)} | {format_p(spread)} | "
            + " / ".join(per_seed)
            + " | "
            + " / ".join(per_seed_joint)
            + " |"
        )
    if args.against:
        if args.paired:
            for a, b in zip(args.dirs, args.against, strict=True):
                if not same_images(a, b):
                    raise SystemExit(
                        f"--paired: {a} and {b} attacked different images: pair folders of "
                        "the same seed and the same --seed and -n"
                    )
        other = seed_medians(collect(args.against, only))
        lines += ["", *group_lines(medians, other, args.level, paired=args.paired)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    md = "\n".join(lines) + "\n"
    args.out.with_suffix(".md").write_text(md)
    print(md)
    _figure(curves, grid, args.out.with_suffix(".png"))


def group_lines(
    these: dict[str, dict[str, list]],
    other: dict[str, dict[str, list]],
    level: float = 0.95,
    paired: bool = False,
) -> list:
    """The Markdown rows comparing two groups of seeds (``seed_medians`` of each), per attack
    both groups have: the TD - BU difference, then each model's own median (which moved).
    Different seeds (default): the difference of the means with its Welch interval and p.
    ``paired`` (the same seeds in both, in seed order): the per-seed difference this - other,
    its mean with a t interval over seeds, the seeds above 0 and the signed-rank p."""
    lines = [
        "| attack | median L2 of | seeds | mean +- std | "
        + (
            f"mean +- std, --against | paired difference [{level_label(level)} t CI] | "
            "seeds above 0 | signed-rank p |"
            if paired
            else "seeds, --against | mean +- std, --against | difference of the means "
            f"[{level_label(level)} Welch CI] | Welch p |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for attack in [a for a in these if a in other]:
        for what, values in these[attack].items():
            base = other[attack][what]
            m, s, _, _ = mean_ci(values)
            mo, so, _, _ = mean_ci(base)
            if paired:
                d, _, lo, hi = mean_ci([a - b for a, b in zip(values, base, strict=True)], level)
                above, n, p, _ = seed_agreement(values, base)
                cells = [str(n), f"{fmt(m)} +- {fmt(s)}", f"{fmt(mo)} +- {fmt(so)}",
                         f"{fmt(d)} [{fmt(lo)}, {fmt(hi)}]", f"{above} of {n}"]  # fmt: skip
            else:
                d, lo, hi, p = welch_ci(values, base, level)
                cells = [str(len(values)), f"{fmt(m)} +- {fmt(s)}", str(len(base)),
                         f"{fmt(mo)} +- {fmt(so)}", f"{fmt(d)} [{fmt(lo)}, {fmt(hi)}]"]  # fmt: skip
            lines.append(f"| {attack} | {what} | " + " | ".join(cells) + f" | {format_p(p)} |")
    return lines


def same_images(a: str, b: str) -> bool:
    """Whether two seed folders (each one folder or several joined by commas) attacked the same
    test images, by the indices their attack.json files record; without recorded indices, by
    the number of images."""

    def images(spec: str) -> object:
        docs = [read_attack_result(p) for p in spec.split(",")]
        idx = [recorded_indices(doc) for doc, _ in docs]
        if any(i is None for i in idx):
            return {o.n for _, outs in docs for o in outs}
        return sorted(set.intersection(*map(set, idx)))

    return images(a) == images(b)


def _figure(curves: dict[str, dict[str, list]], grid: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(curves)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, (attack, sides) in zip(axes.flat, curves.items(), strict=False):
        for side, color in (("td", "tab:green"), ("bu", "tab:red")):
            c = np.asarray(sides[side])
            m = np.nanmean(c, axis=0)
            ax.plot(grid, m, color=color, label=side.upper())
            if len(c) > 1:
                s = np.nanstd(c, axis=0, ddof=1)
                ax.fill_between(grid, m - s, m + s, color=color, alpha=0.2, linewidth=0)
        ax.set_title(attack, fontsize=9)
        ax.set_xlabel("L2 distance", fontsize=8)
        ax.set_ylabel("accuracy loss (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path, force=True, dpi=120)
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
