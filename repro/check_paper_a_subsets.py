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
import functools
import json
import re
from pathlib import Path

import numpy as np
import torch

from robustcli.evaluate.paired import PerImage, per_image_metrics, per_image_results
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
        other = small_twin(args.small, path.name)
        if not other.exists():
            continue
        (big_doc, big), (small_doc, small) = load(path), load(other)
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


def small_twin(small_dir: Path, big_name: str) -> Path:
    """The 1,000-image run's file in ``small_dir`` for a 10,000-image run's file name."""
    return small_dir / big_name.replace("-n10000-", "-n1000-")


def small_run_images(big_n: int, small_n: int) -> np.ndarray:
    """The indices of the images the small run took among the big run's."""
    # the tree is sorted by class, so any sorted labels give the same subset
    return subset_indices(torch.zeros(big_n, dtype=torch.long), small_n)[0].numpy()


@functools.cache
def load(path: Path) -> tuple[dict, PerImage]:
    """An eval-c document and its per-image bits, decoded once per file."""
    doc = json.loads(path.read_text())
    return doc, per_image_results(doc)


@functools.cache
def corruption_accuracy(path: Path) -> np.ndarray:
    """Per image, the run's ``corruptions_acc`` (%): the mean over 19 for a full run."""
    return per_image_metrics(load(path)[1])["corruptions_acc"].to_numpy()


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
            small_twin(small_dir, path.name),
            small_twin(small_dir, base_name),
        ]
        if not all(f.exists() for f in files):
            continue
        big, big_base, small, small_base = (corruption_accuracy(f) for f in files)
        idx = small_run_images(big.size, small.size)
        print(
            f"| {m['model']} | {m['seed']} | {small.mean() - small_base.mean():+.2f} | "
            f"{big[idx].mean() - big_base[idx].mean():+.2f} | "
            f"{big.mean() - big_base.mean():+.2f} |"
        )


if __name__ == "__main__":
    main()
