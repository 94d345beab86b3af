"""Paper B, Exp. 1 (Fig. 4): clean test accuracy of BU and the TD arrangements over seeds.

Reads ``RUNS/<model>-<dataset>-e<E>-s<seed>/result.json`` (``repro/paper_b_mnist_train.sh``'s run
folders) for every model and seed, and prints a Markdown table: mean +- std per model and the
paired difference against ``--reference`` (same seeds) with a 95 % t-interval over seeds.

    python repro/summarize_paper_b_clean.py docs/data/repro-b --epochs 12 --seeds 0,1,2 \
        --models bu-lenetfc,td-lenetfc,td-uni-lenetfc,td-rev-lenetfc --reference td-lenetfc
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from summarize_paper_b import mean_ci

from robustcli.errors import DataError
from robustcli.results import document_metrics, load_result


def test_accuracy(run: Path) -> float:
    """Test accuracy (%) of one finished run folder (its ``result.json``, read as
    ``robust compare`` reads it)."""
    try:
        (metrics,) = document_metrics(load_result(run)).values()
    except DataError as exc:
        raise SystemExit(f"error: {exc}") from None
    return metrics["train:test_acc"]


def fmt(v: float, sign: str = "") -> str:
    """``v`` with two decimals (``sign="+"`` forces one); ``n/a`` when undefined (one seed)."""
    return f"{v:{sign}.2f}" if math.isfinite(v) else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, help="folder holding the run folders")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--dataset", default="mnist", help="as in the run folder names: mnist, cifar10")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, the same for all")
    ap.add_argument("--models", default="bu-lenetfc,td-lenetfc,td-uni-lenetfc,td-rev-lenetfc")
    ap.add_argument("--reference", default="bu-lenetfc", help="model the differences are against")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    models = args.models.split(",")
    if args.reference not in models:
        ap.error(f"--reference {args.reference} is not one of --models")
    acc = {
        m: [test_accuracy(args.runs / f"{m}-{args.dataset}-e{args.epochs}-s{s}") for s in seeds]
        for m in models
    }
    ref = acc[args.reference]
    lines = [
        f"| model | seeds | test accuracy % (mean +- std) | per seed | "
        f"- {args.reference} [95 % CI over seeds] |",
        "|---|---|---|---|---|",
    ]
    for m in models:
        mean, std, _, _ = mean_ci(acc[m])
        per_seed = " / ".join(f"{a:.2f}" for a in acc[m])
        diff = ""
        if m != args.reference:
            d, _, lo, hi = mean_ci([a - r for a, r in zip(acc[m], ref, strict=True)])
            diff = f"{fmt(d, '+')} [{fmt(lo, '+')}, {fmt(hi, '+')}]"
        lines.append(f"| {m} | {args.seeds} | {fmt(mean)} +- {fmt(std)} | {per_seed} | {diff} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
