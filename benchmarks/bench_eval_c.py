"""Benchmark (a): eval-c throughput against a RobustBench-style loop, same model, same data.

The reference loop is RobustBench's ``corruptions_evaluation`` + ``clean_accuracy``: for each
corruption and severity, the first ``n`` images of the memory-mapped ``.npy`` file, batches of
100 converted to NCHW float in [0, 1] one by one, a model that normalises inside, fp32,
``model.eval()`` and ``torch.no_grad()``. Ours is ``robustcli.evaluate.evaluate_corruptions`` on
the same files, timed end to end (model preparation included). Both count correct predictions;
the script checks they agree.

Data: real CIFAR-10 test images, from ``--data-dir DIR`` (an ImageFolder tree such as the extracted
JPEG mirror, ``DIR/test/<class>/*.jpg``) or else foolbox's 20 CIFAR-10 samples tiled; the
corrupted files are written once with ``robustcli.corruptions.generate_dataset`` (not timed).
Models are the registry's, randomly initialised with a fixed seed (throughput does not depend on
the weights), or ``--checkpoint``.

    python benchmarks/bench_eval_c.py                         # foolbox samples, tiled to 500
    python benchmarks/bench_eval_c.py --data-dir /tmp/cifar/cifar10 -n 1000 --models resnet20
"""

from __future__ import annotations

import argparse
import glob
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robustcli.corruptions import generate_dataset
from robustcli.evaluate import OfficialSource, evaluate_corruptions
from robustcli.registry import create_model, get_dataset_spec


def foolbox_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    import foolbox
    from PIL import Image

    files = sorted(glob.glob(os.path.join(os.path.dirname(foolbox.__file__), "data", "cifar10_*")))
    imgs = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    labels = np.array([int(Path(f).stem.split("_")[-1]) for f in files])
    reps = -(-n // len(imgs))
    return np.tile(imgs, (reps, 1, 1, 1))[:n], np.tile(labels, reps)[:n]


def folder_images(root: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    from robustcli.data import load_dataset
    from robustcli.evaluate import subset_indices

    images, labels = load_dataset("cifar10", "test", root)
    idx, _ = subset_indices(labels, n)
    if idx is not None:
        images, labels = images[idx], labels[idx]
    return images.permute(0, 2, 3, 1).numpy(), labels.numpy()


class Normalized(nn.Module):
    """RobustBench models take [0, 1] input and normalise inside."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def robustbench_loop(model, root: Path, corruptions, n: int, batch_size: int = 100):
    """Correct counts per (corruption, severity), the RobustBench way."""
    model.eval()
    all_labels = np.load(root / "labels.npy")
    per_severity = all_labels.shape[0] // 5
    labels = torch.from_numpy(all_labels[:n].astype(np.int64))
    correct = np.zeros((len(corruptions), 5), dtype=np.int64)
    for i, name in enumerate(corruptions):
        data = np.load(root / f"{name}.npy", mmap_mode="r")
        for s in range(1, 6):
            x = np.array(data[(s - 1) * per_severity :][:n])  # RobustBench loads into memory
            with torch.no_grad():
                for lo in range(0, n, batch_size):
                    xb = torch.from_numpy(np.transpose(x[lo : lo + batch_size], (0, 3, 1, 2)))
                    xb = xb.float() / 255.0
                    pred = model(xb).max(1)[1]
                    correct[i, s - 1] += int((pred == labels[lo : lo + batch_size]).sum())
    return correct


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # option names as in `robust` (old spellings kept: --data, --n)
    ap.add_argument(
        "--data-dir",
        "--data",
        dest="data",
        help="ImageFolder root with test/<class>/ (e.g. the JPEG mirror)",
    )
    ap.add_argument(
        "-n",
        "--n-examples",
        "--n",
        dest="n",
        type=int,
        default=500,
        help="images per severity [500]",
    )
    ap.add_argument("--corruptions", default="gaussian_noise,defocus_blur,fog,contrast")
    ap.add_argument("--models", default="resnet20,pp-resnet20")
    ap.add_argument("--batch-size", type=int, default=None, help="ours [the default]")
    ap.add_argument("--threads", type=int, default=None, help="torch threads [torch's default]")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    corruptions = args.corruptions.split(",")
    if args.data:
        images, labels = folder_images(args.data, args.n)
        source = f"CIFAR-10 (JPEG mirror at {args.data}), {len(images)} images"
    else:
        images, labels = foolbox_images(args.n)
        source = f"foolbox's 20 CIFAR-10 test images tiled to {len(images)}"
    spec = get_dataset_spec("cifar10")
    print(f"data: {source}; corruptions: {', '.join(corruptions)} x 5 severities")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "c10c"
        generate_dataset(images, labels, root, corruptions, seed=0, progress=False)
        total = len(corruptions) * 5 * len(images)
        for name in args.models.split(","):
            torch.manual_seed(0)
            model = create_model(name).eval()
            ref = Normalized(model, spec.mean, spec.std)
            robustbench_loop(ref, root, corruptions[:1], min(100, len(images)))  # warm-up
            t = time.perf_counter()
            base_counts = robustbench_loop(ref, root, corruptions, len(images))
            t_base = time.perf_counter() - t
            t = time.perf_counter()
            tally = evaluate_corruptions(
                model,
                OfficialSource(root, corruptions),
                mean=spec.mean,
                std=spec.std,
                corruptions=corruptions,
                n_examples=len(images),
                batch_size=args.batch_size,
                device="cpu",
            )
            t_ours = time.perf_counter() - t
            differ = int(np.abs(tally.correct - base_counts).sum())
            print(
                f"{name:14s} RobustBench loop {total / t_base:7.1f} img/s | eval-c "
                f"{total / t_ours:7.1f} img/s (batch {tally.report['batch_size']}, "
                f"{tally.report['batchnorm_folded']} BN + "
                f"{tally.report['pushpull_folded'] + tally.report['mspp_folded']} PP folded) | "
                f"x{t_base / t_ours:.2f} | count differences {differ} of {total}"
            )


if __name__ == "__main__":
    main()
