"""eval-c accuracy at bf16 against fp32: one trained checkpoint, the same corrupted images.

Evaluates the checkpoint on every (corruption, severity) cell (default: all 19 corruptions x 5
severities) three times: ``fp32`` (exact), plain ``bf16`` autocast and ``bf16-checked`` (what
``--precision auto`` runs on CPUs with native bf16: bf16, near ties predicted again in fp32),
and prints, per precision, the largest |accuracy difference| from fp32 over all cells in
percentage points, how many cells and images differ, the images rechecked, and the speed.

With ``n`` images per cell an accuracy moves in steps of 100 / n points (0.2 at n = 500): a
difference below that step means "no image changed its prediction in any cell".

Data: the first ``n`` CIFAR-10 test images of ``--data-dir`` (ImageFolder tree, e.g. the JPEG
mirror), corrupted once with ``robustcli.corruptions.generate_dataset`` (seed 0; not timed).

    python benchmarks/bench_eval_c_precision.py runs/repro-a/resnet20-e4-s0 --data-dir /tmp/cifar
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from robustcli.corruptions import generate_dataset
from robustcli.evaluate import OfficialSource, evaluate_corruptions, load_clean, select_corruptions
from robustcli.evaluate.loop import CHECKED
from robustcli.models import load_model, resolve_reference

sys.path.insert(0, str(Path(__file__).parent))
from machine import header  # noqa: E402

PRECISIONS = ("fp32", "bf16", CHECKED)


def compare(checkpoint: str, root: Path, names: list[str], n: int, batch_size: int | None) -> None:
    """Evaluate ``checkpoint`` at every precision and print the differences from fp32."""
    ck = load_model(resolve_reference(checkpoint))
    results = {}
    for prec in PRECISIONS:
        t = time.perf_counter()
        tally = evaluate_corruptions(
            ck.model,
            OfficialSource(root, names),
            mean=ck.mean,
            std=ck.std,
            corruptions=names,
            n_examples=n,
            batch_size=batch_size,
            device="cpu",
            precision=prec,
            adapter=None if ck.input.identity else ck.input,
        )
        results[prec] = (tally, time.perf_counter() - t)
    ref, t_ref = results["fp32"]
    acc_ref = 100.0 * ref.correct / ref.total
    cells = ref.correct.size
    print(f"{ck.name} ({checkpoint}): {cells} cells x {n} images, one step = {100 / n:.3g} points")
    print(f"  fp32          mean accuracy {acc_ref.mean():6.2f} %, {ref.images / t_ref:7.1f} img/s")
    for prec in PRECISIONS[1:]:
        tally, seconds = results[prec]
        diff = np.abs(100.0 * tally.correct / tally.total - acc_ref)
        moved = int(np.abs(tally.correct - ref.correct).sum())
        recheck = tally.report.get("recheck")
        extra = f", {recheck['images']} images rechecked in fp32" if recheck else ""
        print(
            f"  {prec:13s} max |diff| {diff.max():.2f} points over {cells} cells "
            f"({int((diff > 0).sum())} cells differ, net count change {moved} images){extra}; "
            f"{tally.images / seconds:7.1f} img/s (x{t_ref / seconds:.2f} of fp32)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="model.safetensors or run folders")
    ap.add_argument("--data-dir", default="/tmp/cifar", help="ImageFolder root with test/")
    ap.add_argument("-n", "--n-examples", dest="n", type=int, default=500)
    ap.add_argument("-c", "--corruptions", default="all", help="a robust eval-c selection [all]")
    ap.add_argument("-b", "--batch-size", type=int, default=None, help="[eval-c's default]")
    ap.add_argument("--threads", type=int, default=None, help="torch threads [torch's default]")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(header())
    names = select_corruptions(args.corruptions)
    images, labels, subset = load_clean("cifar10", args.data_dir, args.n)
    print(f"data: {subset} CIFAR-10 test images of {args.data_dir}; {len(names)} corruptions x 5")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "c10c"
        t = time.perf_counter()
        generate_dataset(images, labels, root, names, seed=0, progress=False)
        took = time.perf_counter() - t
        print(f"corrupted {len(names)} x 5 x {len(images)} images in {took:.1f} s")
        for checkpoint in args.checkpoints:
            compare(checkpoint, root, names, len(images), args.batch_size)


if __name__ == "__main__":
    main()
