"""Paper A: is a 10,000-image eval-c the 1,000-image one extended? Per image, on the images
both evaluated.

The 1,000-image run (``--generate -n 1000``) takes every 10th test image (the JPEG mirror's
tree is sorted by class: ``robustcli.evaluate.sources.subset_indices``); the 10,000-image run
reads a folder written by ``robust corrupt`` from all of them. Random corruptions are drawn per
batch of 1,000 images, so they differ between the two runs for the same image; deterministic
ones (blur kernels, brightness, contrast, pixelate, JPEG, saturate) and the clean images must
give exactly the same right/wrong bit per image. Prints, per pair of files, whether clean and
which corruptions agree image for image, and the 10,000 - 1,000 difference of the mean over 19.

With ``--baseline MODEL`` it also prints, per model and seed, the mean-over-19 difference to
MODEL (same seed) three ways: in the 1,000-image runs, in the 10,000-image runs restricted to
those 1,000 images, and on all 10,000. The first two differ only by the random corruptions'
draw, the last two only by the images: which of the two moved a difference from 1,000 to 10,000.

    python repro/check_paper_a_subsets.py docs/data/repro-a10k docs/data/repro-a
    python repro/check_paper_a_subsets.py docs/data/repro-a10k docs/data/repro-a-e15 \
        --baseline pp-resnet20
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch

from robustcli.evaluate.paired import PerImage, per_image_results
from robustcli.evaluate.sources import subset_indices


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("big", type=Path, help="folder of evalc-*-n10000-s*.json")
    ap.add_argument("small", type=Path, help="folder of the evalc-*-n1000-s*.json")
    ap.add_argument(
        "--baseline",
        metavar="MODEL",
        help="also print each model's mean-19 difference to MODEL (same seed) on 1,000 images, "
        "on the same 1,000 images of the 10,000-image run, and on all 10,000",
    )
    args = ap.parse_args()
    print("| file | clean per image | corruptions identical per image | mean 19: 10,000 - 1,000 |")
    print("|---|---|---|---|")
    for path in sorted(args.big.glob("evalc-*-n10000-s*.json")):
        other = args.small / path.name.replace("-n10000-", "-n1000-")
        if not other.exists():
            continue
        big_doc, small_doc = (json.loads(p.read_text()) for p in (path, other))
        big, small = per_image_results(big_doc), per_image_results(small_doc)
        idx = small_run_images(big.n, small.n)
        names = big_doc["corruptions"]
        assert names == small_doc["corruptions"], f"{path} and {other}: other corruptions"
        same = [
            name
            for i, name in enumerate(names)
            if np.array_equal(big.cells[i][:, idx], small.cells[i])
        ]
        clean = "identical" if np.array_equal(big.clean[idx], small.clean) else "DIFFERENT"
        gap = big_doc["mean_all_19"] - small_doc["mean_all_19"]
        agree = f"{len(same)} of {len(names)}: {', '.join(same)}"
        print(f"| {path.name} | {clean} | {agree} | {gap:+.2f} |")
    if args.baseline:
        print_baseline_differences(args.big, args.small, args.baseline)


def small_run_images(big_n: int, small_n: int) -> np.ndarray:
    """The indices of the images the small run took among the big run's."""
    # the tree is sorted by class, so any sorted labels give the same subset
    return subset_indices(torch.zeros(big_n, dtype=torch.long), small_n)[0].numpy()


def mean_19(result: PerImage, images: np.ndarray | None = None) -> float:
    """Mean accuracy (%) over every (corruption, severity) cell, on ``images`` or all."""
    cells = result.cells if images is None else result.cells[:, :, images]
    return float(cells.mean() * 100)


def print_baseline_differences(big_dir: Path, small_dir: Path, baseline: str) -> None:
    print(
        f"\n| model | seed | minus {baseline}: 1,000-image runs | 10,000-image runs on those 1,000 "
        "images | all 10,000 |"
    )
    print("|---|---|---|---|---|")
    pattern = re.compile(r"evalc-(?P<model>.+)-(?P<tag>e\d+)-n10000-s(?P<seed>\d+)\.json")
    for path in sorted(big_dir.glob("evalc-*-n10000-s*.json")):
        m = pattern.fullmatch(path.name)
        if m is None or m["model"] == baseline:
            continue
        base_name = f"evalc-{baseline}-{m['tag']}-n10000-s{m['seed']}.json"
        files = [
            path,
            big_dir / base_name,
            small_dir / path.name.replace("-n10000-", "-n1000-"),
            small_dir / base_name.replace("-n10000-", "-n1000-"),
        ]
        if not all(f.exists() for f in files):
            continue
        big, big_base, small, small_base = (
            per_image_results(json.loads(f.read_text())) for f in files
        )
        idx = small_run_images(big.n, small.n)
        print(
            f"| {m['model']} | {m['seed']} | {mean_19(small) - mean_19(small_base):+.2f} | "
            f"{mean_19(big, idx) - mean_19(big_base, idx):+.2f} | "
            f"{mean_19(big) - mean_19(big_base):+.2f} |"
        )


if __name__ == "__main__":
    main()
