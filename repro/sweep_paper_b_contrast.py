"""Paper B on MNIST: accuracy under a fixed contrast reduction, per model and seed.

A cross-check of the contrast attack that needs no attack code: each image is blended towards
mid-grey, ``x' = (1 - eps) x + eps / 2`` (the direction Foolbox's contrast-reduction attack
searches along; its L2 is ``eps * ||x - 1/2||``), and the model's accuracy is counted at each
``eps`` of a fixed grid. A seed that the attack finds unusually robust must keep its accuracy
here to larger ``eps`` than the others. Reads ``RUNS/<model>-mnist-e<E>-s<seed>`` (the run
folders of ``repro/paper_b_mnist_train.sh``) and prints a Markdown table.

    python repro/sweep_paper_b_contrast.py docs/data/repro-b ../shared/data --seeds 0,1,2,3,4,5,6,7
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from robustcli.data.load import load_dataset
from robustcli.errors import RobustError
from robustcli.models.loaded import LoadedModel, load_model


def contrast_accuracy(
    lm: LoadedModel, x: torch.Tensor, y: torch.Tensor, eps: Sequence[float], batch: int = 1000
) -> list[float]:
    """Accuracy (%) of ``lm`` on ``x`` (float, [0, 1]) blended towards mid-grey by each eps."""
    accs = []
    with torch.no_grad():
        for e in eps:
            hits = 0
            for i in range(0, len(x), batch):
                xe = (1.0 - e) * x[i : i + batch] + e * 0.5
                hits += int((lm.model(lm.to_input(xe)).argmax(1) == y[i : i + batch]).sum())
            accs.append(100.0 * hits / len(x))
    return accs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, help="folder of <model>-mnist-e<E>-s<seed> run folders")
    ap.add_argument("data_dir", help="folder holding MNIST/raw")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    ap.add_argument("--models", default="bu-lenetfc,td-lenetfc")
    ap.add_argument("--eps", default="0,0.1,0.15,0.2,0.25,0.3,0.35,0.4")
    ap.add_argument("-n", type=int, default=5000, help="the first N test images")
    args = ap.parse_args()
    eps = [float(e) for e in args.eps.split(",")]
    try:
        images, labels = load_dataset("mnist", "test", args.data_dir)
        x, y = images[: args.n].float() / 255.0, labels[: args.n]
        rows = []
        for model in args.models.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                lm = load_model(args.runs / f"{model}-mnist-e{args.epochs}-s{seed}")
                accs = contrast_accuracy(lm, x, y, eps)
                rows.append(f"| {model} | {seed} | " + " | ".join(f"{a:.1f}" for a in accs) + " |")
    except RobustError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"Accuracy % on the first {len(x)} MNIST test images, blended towards mid-grey by eps:\n")
    print("| model | seed | " + " | ".join(f"eps {e:g}" for e in eps) + " |")
    print("|---|---|" + "---|" * len(eps))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
