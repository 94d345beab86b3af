"""Paper A, Table 1 over seeds: clean, noise, blur, mean over 19 corruptions, per corruption.

Each FILE is an eval-c JSON named ``evalc-<model>-...-s<seed>.json`` (as repro/paper_a_cifar.sh
writes them). Reports mean +- std over seeds per model, and paired differences (same seed)
against plain and PP ReLU (the study's first grid model and its ``report.baseline``: ``resnet20``
and ``pp-resnet20``; the DenseNet-40 study for DenseNet-40 files) with a 95 % t-interval over seeds;
an interval that contains 0 means the difference is not distinguishable from seed noise.
Where both JSONs of a pair hold per-image results (``eval-c --per-image``), each seed's
difference also gets a 95 % bootstrap interval over the evaluated images (the image-sampling
error, next to the seed-to-seed SD). Per corruption: mean +- std over seeds with the paper's value
beside it, and a check that the paper's printed averages are the means of its own rows. Writes
``OUT.md`` and a per-corruption bar chart ``OUT.png``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
from pathlib import Path

import numpy as np
from scipy import stats

from robustcli.corruptions.generate import CORRUPTIONS
from robustcli.plots import save_figure

# Table 1's columns, and the mean over the 15 common corruptions (the usual CIFAR-10-C average)
METRICS = ("clean_acc", "avg_noise_4", "avg_blur_5", "mean_all_19", "mean_common_15")
STUDIES = Path(__file__).resolve().parent.parent / "studies"
STUDY = STUDIES / "ranabhat2025-table1-resnet20.yaml"  # main(): DenseNet-40 files or --study


def load(files: list[Path]) -> dict[str, dict[int, dict]]:
    study = _study()
    derived = study["report"]["derived"]
    runs: dict[str, dict[int, dict]] = {}
    for f in files:
        m = re.match(r"evalc-(.+?)-e\d+-n\d+-s(\d+)\.json$", f.name)
        if not m:
            raise SystemExit(f"{f}: expected evalc-<model>-e<E>-n<N>-s<seed>.json")
        doc = json.loads(f.read_text())
        doc = doc.get("payload", doc)
        row = {
            "clean_acc": doc["clean_acc"],
            "mean_all_19": doc["mean_all_19"],
            "mean_common_15": doc.get("mean_common_15"),
            **{g: v for g, v in (doc.get("groups") or {}).items()},
            **{f"c:{c}": v for c, v in doc["per_corruption"].items()},
            **{f"sev:{k}": v for k, v in (doc.get("per_severity") or {}).items()},
        }
        # the paper's averages (Table 1): noise over 4 corruptions (with speckle), blur over 5
        # (with Gaussian blur), from the study's `report.derived`, as `robust study` computes them
        for name, parts in derived.items():
            vals = [row.get(p.replace("corruption:", "c:", 1)) for p in parts]
            row[name] = None if None in vals else float(np.mean(vals))
        row["_doc"] = {**doc, "_source": str(f)}
        runs.setdefault(m.group(1), {})[int(m.group(2))] = row
    # Table 1's row order (the study's grid); models not in it follow in file order
    order = [g["model"] for g in (study.get("grid") or {}).get("models") or []]
    rank = {name: i for i, name in enumerate(order)}
    return dict(sorted(runs.items(), key=lambda kv: rank.get(kv[0], len(order))))


@functools.cache
def _study() -> dict:
    from robustcli.io import read_yaml

    return read_yaml(STUDY, "study file", "restore it from git")


def _baselines() -> tuple[str, str]:
    """Plain (the study grid's first model) and PP ReLU (its ``report.baseline``)."""
    study = _study()
    return study["grid"]["models"][0]["model"], study["report"]["baseline"]


def _paper_values() -> dict[str, dict[str, float]]:
    """The published Table 1 numbers (paper A), as the study file records them."""
    return (_study().get("paper") or {}).get("values") or {}


def paired(runs: dict[str, dict[int, dict]], model: str, base: str, key: str) -> list[float]:
    """``model - base`` for ``key`` per seed both have (same seed: paired), in seed order."""
    return [
        runs[model][s][key] - runs[base][s][key] for s in sorted(set(runs[model]) & set(runs[base]))
    ]


def mean_ci(v: list[float]) -> tuple[float, float, float]:
    a = np.asarray(v, dtype=np.float64)
    if len(a) < 2:
        return float(a.mean()) if len(a) else math.nan, math.nan, math.nan
    h = stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a))
    return float(a.mean()), float(a.std(ddof=1)), float(h)


def main() -> None:
    global STUDY  # read by _study(); set once, before the first read
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("paper_a_summary"))
    ap.add_argument(
        "--study",
        type=Path,
        help="the Table 1 study file: its paper values, noise / blur groups and baselines "
        "(default: the DenseNet-40 study when the files are DenseNet-40 runs, else the ResNet-20 "
        f"one, {STUDY.name})",
    )
    args = ap.parse_args()
    dense = {"densenet40" in f.name for f in args.files}
    if len(dense) > 1:  # paired differences across backbones would compare unlike models
        ap.error("the files mix DenseNet-40 and ResNet-20 runs: summarise each backbone on its own")
    if args.study:
        STUDY = args.study
    elif dense == {True}:
        STUDY = STUDIES / "ranabhat2025-table1-densenet40.yaml"
    runs = load(args.files)
    lines = ["| model | seeds | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 2) + "|"]
    for model, seeds in runs.items():
        cells = []
        for k in METRICS:
            m, s, _ = mean_ci([r[k] for r in seeds.values() if r.get(k) is not None])
            cells.append(f"{m:.2f} +- {s:.2f}" if math.isfinite(s) else f"{m:.2f}")
        lines.append(f"| {model} | {len(seeds)} | " + " | ".join(cells) + " |")
    paper = _paper_values()
    for model in runs:
        if model in paper:
            cells = [f"{paper[model][k]:.2f}" if k in paper[model] else "-" for k in METRICS]
            lines.append(f"| {model} (paper, Table 1) | - | " + " | ".join(cells) + " |")
    for base in _baselines():
        if base not in runs:
            continue
        lines += ["", f"Paired difference vs {base} (same seed), mean [95 % CI]:", ""]
        lines += ["| model | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
        for model in runs:
            if model == base:
                continue
            cells = []
            for k in METRICS:
                m, _, h = mean_ci(paired(runs, model, base, k))
                if math.isfinite(h):
                    tag = " *" if abs(m) > h else ""
                    cells.append(f"{m:+.2f} [{m - h:+.2f}, {m + h:+.2f}]{tag}")
                else:  # one common seed: no interval over seeds
                    cells.append(f"{m:+.2f}")
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("\n`*`: the 95 % interval excludes 0 (none where only one seed is common).")
        lines += seeds_needed(runs, base)
        lines += image_intervals(runs, base)
        lines += by_severity(runs, base)
    lines += per_corruption(runs, paper)
    lines += profile_agreement(runs, paper, _baselines()[1])
    lines += printed_averages(paper)
    md = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(md)
    print(md)
    _bars(runs, args.out.with_suffix(".png"))


def by_severity(runs: dict[str, dict[int, dict]], base: str) -> list[str]:
    """The paired difference per severity (each the mean over the evaluated corruptions):
    mean [95 % CI over seeds] and the lowest / highest seed, to show where a gain or a cost
    sits (push-pull: behind at low severities, ahead at high ones)."""
    sevs = sorted(
        {k for seeds in runs.values() for r in seeds.values() for k in r if k[:4] == "sev:"}
    )
    if not sevs:
        return []
    lines = [
        "",
        f"By severity (mean over the corruptions), difference vs {base}: mean [95 % CI "
        "over seeds] (lowest / highest seed):",
        "",
    ]
    lines += [
        "| model | " + " | ".join(f"severity {k[4:]}" for k in sevs) + " |",
        "|---" * (len(sevs) + 1) + "|",
    ]
    for model in runs:
        if model == base or not paired(runs, model, base, sevs[0]):
            continue  # the baseline itself, or no seed in common with it
        cells = []
        for k in sevs:
            v = paired(runs, model, base, k)
            m, _, h = mean_ci(v)
            ci = f" [{m - h:+.2f}, {m + h:+.2f}]" if math.isfinite(h) else ""
            cells.append(f"{m:+.2f}{ci} ({min(v):+.2f} / {max(v):+.2f})")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def seeds_needed(runs: dict[str, dict[int, dict]], base: str, target: float = 1.0) -> list[str]:
    """How many seeds a 95 % t-interval of +-``target`` points would take, at the seed-to-seed
    SD of each paired difference measured here (a planning number: the SD is itself uncertain)."""
    rows = []
    for model, seeds in runs.items():
        common = sorted(set(seeds) & set(runs[base])) if model != base else []
        if len(common) < 2:
            continue
        cells = []
        for k in METRICS:
            sd = float(np.std(paired(runs, model, base, k), ddof=1))
            n = 2
            while stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) > target and n < 10_000:
                n += 1
            cells.append(f"{n} (SD {sd:.2f})")
        rows.append(f"| {model} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    head = f"Seeds a 95 % interval of +-{target:g} point on the difference vs {base} would need"
    lines = ["", head + ", at the seed-to-seed SD measured here:", ""]
    lines += ["| model | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    return lines + rows


def image_intervals(runs: dict[str, dict[int, dict]], base: str) -> list[str]:
    """Per model and seed whose eval-c JSONs (this model's and ``base``'s) hold per-image
    results (``eval-c --per-image``): the paired difference with its 95 % bootstrap interval
    over the evaluated images, and the median half-width next to the seed-to-seed SD."""
    from robustcli.evaluate.paired import bootstrap_mean, paired_metrics

    derived = _study()["report"]["derived"]
    rows, halves, seed_sd = [], {k: [] for k in METRICS}, {k: [] for k in METRICS}
    for model, seeds in runs.items():
        if model == base:
            continue
        common = sorted(set(seeds) & set(runs[base]))
        for k in METRICS:
            d = paired(runs, model, base, k)
            if len(d) > 1:
                seed_sd[k].append(float(np.std(d, ddof=1)))
        for s in common:
            a, b = seeds[s]["_doc"], runs[base][s]["_doc"]
            if "per_image" not in a or "per_image" not in b:
                continue
            ma, mb = paired_metrics(a, b)
            for frame in (ma, mb):
                for name, parts in derived.items():
                    frame[name] = frame[list(parts)].mean(axis=1)
            r = bootstrap_mean((ma - mb)[list(METRICS)])
            cells = []
            for k in METRICS:
                lo, hi = r.at[k, "ci_low"], r.at[k, "ci_high"]
                halves[k].append((hi - lo) / 2)
                cells.append(f"{r.at[k, 'delta']:+.2f} [{lo:+.2f}, {hi:+.2f}]")
            rows.append(f"| {model} | {s} | {len(ma)} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    head = f"Image-sampling error: each seed's difference vs {base}, [95 % bootstrap over images]"
    lines = ["", head + ":", "", "| model | seed | images | " + " | ".join(METRICS) + " |"]
    lines += ["|---" * (len(METRICS) + 3) + "|", *rows, ""]
    half = " / ".join(f"{np.median(halves[k]):.2f}" for k in METRICS)
    lines.append(f"Median half-width over images: {half} ({', '.join(METRICS)}).")
    if all(seed_sd[k] for k in METRICS):
        sd = " / ".join(f"{np.median(seed_sd[k]):.2f}" for k in METRICS)
        lines.append(f"Median seed-to-seed SD of the same differences: {sd}.")
    return lines


def per_corruption(runs: dict[str, dict[int, dict]], paper: dict[str, dict]) -> list[str]:
    """Corruptions as rows, models as columns: ``mean +- std`` over seeds, the paper's value in
    parentheses where Table 1 gives one (keyed ``corruption:<name>`` in the study file)."""
    head = "Per corruption, mean +- std over seeds (the paper's Table 1 value in parentheses):"
    lines = ["", head]
    lines += ["", "| corruption | " + " | ".join(runs) + " |", "|---" * (len(runs) + 1) + "|"]
    for c in ["clean", *CORRUPTIONS]:
        key, metric = ("clean_acc", "clean_acc") if c == "clean" else (f"c:{c}", f"corruption:{c}")
        cells = []
        for model, seeds in runs.items():
            vals = [r[key] for r in seeds.values() if r.get(key) is not None]
            if not vals:
                cells.append("-")
                continue
            m, s, _ = mean_ci(vals)
            cell = f"{m:.1f} +- {s:.1f}" if math.isfinite(s) else f"{m:.1f}"
            if metric in paper.get(model, {}):
                cell += f" ({paper[model][metric]:.1f})"
            cells.append(cell)
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return lines


def profile_agreement(
    runs: dict[str, dict[int, dict]], paper: dict[str, dict], base: str
) -> list[str]:
    """Does each variant gain and lose on the same corruptions as in the paper? Per variant, the
    19 per-corruption differences from ``base`` (ours: mean over common seeds; the paper's: from
    its Table 1 rows): how many have the paper's sign, and their correlation across corruptions.
    Scale-free, so it compares profiles even where our absolute numbers (4 epochs) are lower."""
    if base not in runs or base not in paper:
        return []
    rows = []
    for model, seeds in runs.items():
        common = sorted(set(seeds) & set(runs[base]))
        keys = [f"corruption:{c}" for c in CORRUPTIONS]
        if model == base or not common or any(k not in paper.get(model, {}) for k in keys):
            continue
        per_seed = np.array([paired(runs, model, base, f"c:{c}") for c in CORRUPTIONS]).T
        ours = per_seed.mean(axis=0)
        theirs = np.array([paper[model][k] - paper[base][k] for k in keys])
        agree = int(np.sum(np.sign(ours) == np.sign(theirs)))
        r = float(np.corrcoef(ours, theirs)[0, 1])
        r_seed = " / ".join(f"{np.corrcoef(d, theirs)[0, 1]:+.2f}" for d in per_seed)
        both = [c for c, a, b in zip(CORRUPTIONS, ours, theirs, strict=True) if a > 0 and b > 0]
        rows.append(
            f"| {model} | {len(common)} | {agree} / 19 | {r:+.2f} | {r_seed} | "
            f"{', '.join(both) or '-'} |"
        )
    if not rows:
        return []
    head = f"Per-corruption profile of each variant's difference from {base}, ours vs the paper's:"
    cols = "| model | seeds | same sign | correlation | per seed | gains in both |"
    return ["", head, "", cols, "|---" * 6 + "|", *rows]


def printed_averages(paper: dict[str, dict]) -> list[str]:
    """The paper's printed averages against the means of its own per-corruption values: the
    ones that differ by more than 0.05 (rounding of 2-decimal values stays well under that)."""
    parts = dict(_study()["report"]["derived"])
    parts["mean_all_19"] = [f"corruption:{c}" for c in CORRUPTIONS]
    lines = []
    for model, v in paper.items():
        for name, keys in parts.items():
            if name not in v or any(k not in v for k in keys):
                continue
            rows = float(np.mean([v[k] for k in keys]))
            if abs(rows - v[name]) > 0.05:
                lines.append(f"| {model} | {name} | {v[name]:.2f} | {rows:.2f} |")
    if not lines:
        return []
    head = "The paper's printed averages that are not the means of its own per-corruption rows:"
    table = ["| model | average | printed | mean of its rows |", "|---|---|---|---|", *lines]
    return ["", head, "", *table]


def _bars(runs: dict[str, dict[int, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for seeds in runs.values() for r in seeds.values()]
    corr = sorted({k[2:] for r in rows for k in r if k.startswith("c:")})
    fig, ax = plt.subplots(figsize=(14, 4))
    width = 0.8 / max(1, len(runs))
    for i, (model, seeds) in enumerate(runs.items()):
        vals = np.array([[r[f"c:{c}"] for c in corr] for r in seeds.values()])
        err = vals.std(axis=0, ddof=1) if len(vals) > 1 else None
        ax.bar(np.arange(len(corr)) + i * width, vals.mean(axis=0), width, yerr=err, label=model)
    ax.set_xticks(np.arange(len(corr)) + 0.4 - width / 2, corr, rotation=45, ha="right")
    ax.set_ylabel("accuracy (%)")
    # above the axes: inside, the legend hid the tallest bars (JPEG, pixelate)
    ax.legend(fontsize=8, ncol=min(len(runs), 6), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    save_figure(fig, path, force=True, dpi=120)
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
