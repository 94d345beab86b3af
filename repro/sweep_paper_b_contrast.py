"""Paper B on MNIST: accuracy under a fixed contrast reduction, per model and seed.

A cross-check of the contrast attack that needs no attack code: each image is blended towards
mid-grey, ``x' = (1 - eps) x + eps / 2`` (the direction Foolbox's contrast-reduction attack
searches along; its L2 is ``eps * ||x - 1/2||``), and the model's accuracy is counted at each
``eps`` of a fixed grid. A seed that the attack finds unusually robust must keep its accuracy
here to larger ``eps`` than the others. Reads ``RUNS/<model>-mnist-e<E>-s<seed>`` (the run
folders of ``repro/paper_b_mnist_train.sh``) and prints a Markdown table.

``--towards`` moves the blend target: 0 (black) only fades the strokes (the background stays
0), 1 (white) only lifts the background (the strokes stay 1), mid-grey does half of each; a
model that keeps its accuracy towards one target and not another tells which half of the
contrast change it ignores.

    python repro/sweep_paper_b_contrast.py docs/data/repro-b ../shared/data --seeds 0,1,2,3,4,5,6,7
    python repro/sweep_paper_b_contrast.py docs/data/repro-b ../shared/data --seeds 6,7 --towards 0
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
from summarize_paper_b import mean_ci, seed_agreement

from robustcli.data.load import load_dataset
from robustcli.errors import RobustError
from robustcli.models.loaded import LoadedModel, load_model


def contrast_accuracy(
    lm: LoadedModel,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: Sequence[float],
    batch: int = 1000,
    towards: float = 0.5,
) -> list[float]:
    """Accuracy (%) of ``lm`` on ``x`` (float, [0, 1]) blended towards the grey level
    ``towards`` by each eps: ``(1 - eps) x + eps * towards``."""
    accs = []
    with torch.no_grad():
        for e in eps:
            hits = 0
            for i in range(0, len(x), batch):
                xe = (1.0 - e) * x[i : i + batch] + e * towards
                hits += int((lm.model(lm.to_input(xe)).argmax(1) == y[i : i + batch]).sum())
            accs.append(100.0 * hits / len(x))
    return accs


def paired_table(
    acc: dict[str, list[list[float]]], eps: Sequence[float], reference: str
) -> list[str]:
    """Markdown rows: per model, the mean accuracy over the grid's eps > 0 (one number per seed:
    the area under its accuracy curve, per grid step), its mean +- std over seeds, and the paired
    difference against ``reference`` (same seeds) with a 95 % t-interval, the seeds ahead of
    ``reference`` and the Wilcoxon signed-rank p over seeds."""
    keep = [i for i, e in enumerate(eps) if e > 0]
    if not keep:
        raise ValueError("the eps grid has no eps > 0 to average over")
    area = {m: [sum(a[i] for i in keep) / len(keep) for a in runs] for m, runs in acc.items()}
    rows = [
        f"| model | mean accuracy % over eps > 0 (mean +- std) | per seed | - {reference} "
        "[95 % t over seeds] | seeds ahead | signed-rank p |",
        "|---|---|---|---|---|---|",
    ]
    for m, v in area.items():
        mean, std, _, _ = mean_ci(v)
        diff = ahead = p = ""
        if m != reference:
            d, _, lo, hi = mean_ci([a - r for a, r in zip(v, area[reference], strict=True)])
            diff = f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]"
            n_ahead, n, signed, _ = seed_agreement(v, area[reference])
            ahead, p = f"{n_ahead} of {n}", f"{signed:.3f}"
        per_seed = " / ".join(f"{a:.1f}" for a in v)
        rows.append(f"| {m} | {mean:.1f} +- {std:.1f} | {per_seed} | {diff} | {ahead} | {p} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, help="folder of <model>-mnist-e<E>-s<seed> run folders")
    ap.add_argument("data_dir", help="folder holding MNIST/raw")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    ap.add_argument("--models", default="bu-lenetfc,td-lenetfc", help="the first is the reference")
    ap.add_argument("--eps", default="0,0.1,0.15,0.2,0.25,0.3,0.35,0.4")
    ap.add_argument("-n", type=int, default=5000, help="the first N test images")
    ap.add_argument(
        "--towards", type=float, default=0.5, help="grey level blended towards, 0 (black) to 1"
    )
    args = ap.parse_args()
    if not 0.0 <= args.towards <= 1.0:
        raise SystemExit(f"error: --towards {args.towards} is outside [0, 1]; pass a grey level")
    eps = [float(e) for e in args.eps.split(",")]
    models = args.models.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    try:
        images, labels = load_dataset("mnist", "test", args.data_dir)
        x, y = images[: args.n].float() / 255.0, labels[: args.n]
        acc: dict[str, list[list[float]]] = {}
        for model in models:
            acc[model] = [
                contrast_accuracy(
                    load_model(args.runs / f"{model}-mnist-e{args.epochs}-s{seed}"),
                    x,
                    y,
                    eps,
                    towards=args.towards,
                )
                for seed in seeds
            ]
    except RobustError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(
        f"Accuracy % on the first {len(x)} MNIST test images, "
        f"blended towards grey level {args.towards:g} by eps:\n"
    )
    print("| model | seed | " + " | ".join(f"eps {e:g}" for e in eps) + " |")
    print("|---|---|" + "---|" * len(eps))
    for model, runs in acc.items():
        for seed, accs in zip(seeds, runs, strict=True):
            print(f"| {model} | {seed} | " + " | ".join(f"{a:.1f}" for a in accs) + " |")
    print()
    print("\n".join(paired_table(acc, eps, models[0])))


if __name__ == "__main__":
    main()
