"""Benchmark (a): eval-c throughput against a RobustBench-style loop, same model, same data.

The reference loop is RobustBench's ``corruptions_evaluation`` + ``clean_accuracy``: for each
corruption and severity, the first ``n`` images of the memory-mapped ``.npy`` file, batches of
100 converted to NCHW float in [0, 1] one by one, a model that normalises inside, fp32,
``model.eval()`` and ``torch.no_grad()``. Ours is ``robustcli.evaluate.evaluate_corruptions`` on
the same files, timed end to end (model preparation included), twice: at the default precision
(``--precision auto``: ``bf16-checked`` on CPUs with native bf16, fp32 for push-pull models; see
``robustcli.evaluate.loop``) and at ``fp32`` when that differs. Both count correct predictions;
the script prints how many counts differ from the reference loop's (fp32 must give 0;
``bf16-checked`` is meant to).

``--profile`` adds a ``torch.profiler`` table (self CPU time per operator) of the reference loop
and of ours on the first corruption; ours then runs with one worker thread (the profiler records
the thread that starts it, not the worker pool's threads).

Data: real CIFAR-10 test images, from ``--data-dir DIR`` (an ImageFolder tree such as the extracted
JPEG mirror, ``DIR/test/<class>/*.jpg``) or else foolbox's 20 CIFAR-10 samples tiled; the
corrupted files are written once with ``robustcli.corruptions.generate_dataset`` (not timed).
Models are the registry's, randomly initialised with a fixed seed (throughput does not depend on
the weights), or trained ones with ``--checkpoint PATH`` (repeatable; replaces ``--models``): a
trained model has more near ties for ``bf16-checked`` to predict again than random weights.

    python benchmarks/bench_eval_c.py                         # foolbox samples, tiled to 500
    python benchmarks/bench_eval_c.py --data-dir /tmp/cifar -n 500 --models resnet20 --profile
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robustcli.corruptions import generate_dataset
from robustcli.evaluate import OfficialSource, eval_precision, evaluate_corruptions
from robustcli.registry import create_model, get_dataset_spec

sys.path.insert(0, str(Path(__file__).parent))
from machine import header  # noqa: E402


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


def _models(names: str, checkpoints: list[str]) -> list[tuple[str, nn.Module]]:
    """The registry's models with seeded random weights, or the given trained checkpoints."""
    if checkpoints:
        from robustcli.models import load_model, resolve_reference

        loaded = [load_model(resolve_reference(c)) for c in checkpoints]
        return [(f"{ck.name} (trained)", ck.model.eval()) for ck in loaded]
    out = []
    for name in names.split(","):
        torch.manual_seed(0)
        out.append((name, create_model(name).eval()))
    return out


def profile_table(run: Callable[[], Any], rows: int = 12) -> str:
    """Self CPU time per operator while ``run()`` runs (every thread), as torch prints it."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


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
    ap.add_argument(
        "--precision", default="auto", help="ours, first line [auto]; the second is fp32"
    )
    ap.add_argument("--profile", action="store_true", help="print torch.profiler tables")
    ap.add_argument("--checkpoint", action="append", default=[], help="trained model (repeatable)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(header())
    corruptions = args.corruptions.split(",")
    if args.data:
        images, labels = folder_images(args.data, args.n)
        source = f"CIFAR-10 (JPEG mirror at {args.data}), {len(images)} images"
    else:
        images, labels = foolbox_images(args.n)
        source = f"foolbox's 20 CIFAR-10 test images tiled to {len(images)}"
    spec = get_dataset_spec("cifar10")
    cpu = torch.device("cpu")
    print(f"data: {source}; corruptions: {', '.join(corruptions)} x 5 severities")
    print(f"ours: --precision {args.precision} (resolved per model), then fp32 (same files)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "c10c"
        generate_dataset(images, labels, root, corruptions, seed=0, progress=False)
        total = len(corruptions) * 5 * len(images)
        first = corruptions[:1]  # warm-up and --profile
        for name, model in _models(args.models, args.checkpoint):
            ref = Normalized(model, spec.mean, spec.std)
            precisions = [eval_precision(args.precision, cpu, model)]
            if precisions[0] != "fp32":
                precisions.append("fp32")
            robustbench_loop(ref, root, first, min(100, len(images)))  # warm-up
            t = time.perf_counter()
            base_counts = robustbench_loop(ref, root, corruptions, len(images))
            t_base = time.perf_counter() - t

            def ours(
                prec: str, which: list[str], workers: int | None = None, model: nn.Module = model
            ) -> Any:
                return evaluate_corruptions(
                    model,
                    OfficialSource(root, which),
                    mean=spec.mean,
                    std=spec.std,
                    corruptions=which,
                    n_examples=len(images),
                    batch_size=args.batch_size,
                    device="cpu",
                    precision=prec,
                    workers=workers,
                )

            print(f"{name}: RobustBench-style loop (fp32) {total / t_base:7.1f} img/s")
            for prec in precisions:
                ours(prec, first)  # warm-up (oneDNN primitives, the kernel)
                t = time.perf_counter()
                tally = ours(prec, corruptions)
                t_ours = time.perf_counter() - t
                differ = int(np.abs(tally.correct - base_counts).sum())
                rep = tally.report
                checked = rep.get("recheck")
                extra = f", {checked['images']} rechecked in fp32" if checked else ""
                print(
                    f"  eval-c {prec:12s} {total / t_ours:7.1f} img/s | x{t_base / t_ours:.2f} | "
                    f"batch {rep['batch_size']} x {rep['workers']} workers, "
                    f"{rep['batchnorm_folded']} BN + "
                    f"{rep['pushpull_folded'] + rep['mspp_folded']} PP folded{extra} | "
                    f"count differences {differ} of {total}"
                )
            if args.profile:
                print(f"\nprofile, {name}, RobustBench-style loop, {first[0]}:")
                print(profile_table(lambda r=ref: robustbench_loop(r, root, first, len(images))))
                for prec in precisions:
                    # the profiler records the calling thread only: one worker, torch's threads
                    print(f"profile, {name}, eval-c {prec}, {first[0]}, one worker:")
                    print(profile_table(lambda p=prec: ours(p, first, workers=1)))


if __name__ == "__main__":
    main()
