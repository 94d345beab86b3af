"""Time the batched CIFAR-10-C corruptions against the per-image recipe.

Generates all 19 corruptions x 5 severities of N test images the way ``generate_dataset`` does
(batches of ``--batch-size`` images, one seeded generator per batch; nothing is written) and
prints seconds per corruption and the total. Then runs the per-image NumPy port of
``make_cifar_c.py`` (``robustcli.corruptions.reference``: scikit-image, SciPy, OpenCV,
Pillow, ImageMagick's motion blur in NumPy) on a small subset and prints the speed-up, with the
recipe's time extrapolated linearly to N images.

Data: ``--data-dir DIR`` is an extracted JPEG CIFAR-10 mirror with ``test/<class>/*.jpg`` (the
first N images, classes in name order); without it the 20 real CIFAR-10 test images shipped in
foolbox are tiled to N.

    mkdir -p /tmp/cifar && tar xzf /work/shared/data/cifar10-jpeg.tar.gz -C /tmp/cifar
    python benchmarks/bench_corruptions.py --data-dir /tmp/cifar
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from robustcli.corruptions import CORRUPTIONS, corrupt, reference
from robustcli.corruptions.generate import iter_corrupted


def load_images(data: str | None, n: int) -> tuple[np.ndarray, str]:
    if data:
        root = Path(data)
        test = root / "test" if (root / "test").is_dir() else root
        classes = sorted(p for p in test.iterdir() if p.is_dir())
        files = [f for c in classes for f in sorted(c.glob("*.jpg"))]
        if not files:
            raise SystemExit(f"no test/<class>/*.jpg files under {root}")
        files = files[:n]
        imgs = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
        return imgs, f"{len(files)} images from {test} (CIFAR-10 JPEG mirror)"
    import foolbox

    folder = os.path.join(os.path.dirname(foolbox.__file__), "data")
    files = sorted(glob.glob(os.path.join(folder, "cifar10_*.png")))
    base = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    reps = -(-n // len(base))
    return np.concatenate([base] * reps)[:n], f"{len(base)} foolbox CIFAR-10 images tiled to {n}"


def time_batched(x: torch.Tensor, names: list[str], batch: int, device: str, workers: int) -> dict:
    """Seconds per (corruption, severity): generate_dataset's loop without the file writes."""
    out = {}
    for name in names:
        per_sev = [0.0] * 5
        start = time.perf_counter()
        for severity, _, _ in iter_corrupted(
            x, name, range(1, 6), 0, batch, torch.device(device), workers
        ):
            now = time.perf_counter()
            per_sev[severity - 1] += now - start
            start = now
        out[name] = per_sev
        print(
            f"  {name:18s} {sum(per_sev):7.2f} s   "
            + "  ".join(f"s{i + 1} {t:5.2f}" for i, t in enumerate(per_sev)),
            flush=True,
        )
    return out


def time_reference(imgs: np.ndarray, names: list[str]) -> dict:
    out = {}
    np.random.seed(0)
    for name in names:
        start = time.perf_counter()
        for severity in range(1, 6):
            for img in imgs:
                reference.corrupt_one(img, name, severity)
        out[name] = time.perf_counter() - start
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    # option names as in `robust` (old spellings kept: --data, --json)
    ap.add_argument(
        "--data-dir",
        "--data",
        dest="data",
        help="extracted JPEG CIFAR-10 mirror (test/<class>/*.jpg)",
    )
    ap.add_argument(
        "-n", "--n-examples", dest="n", type=int, default=10_000, help="test images (default 10000)"
    )
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument(
        "--reference-n", type=int, default=50, help="images for the per-image recipe (0 to skip)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument(
        "--workers",
        type=int,
        default=None,
        help="batches in parallel, one torch thread each (default: the torch thread count)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--corruptions", nargs="*", default=CORRUPTIONS)
    ap.add_argument(
        "-o", "--out", "--json", dest="json", help="also write the timings to this JSON file"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    workers = args.workers or (torch.get_num_threads() if args.device == "cpu" else 1)
    imgs, source = load_images(args.data, args.n)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()
    print(f"data: {source}")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}"
    )
    # warm-up: builds the cached operators and tables (counted separately)
    start = time.perf_counter()
    for name in args.corruptions:
        for severity in range(1, 6):
            corrupt(x[:8].to(args.device), name, severity, torch.Generator(args.device))
    warm = time.perf_counter() - start
    print(f"one-time setup (operators, tables, frost photographs): {warm:.2f} s")

    print(f"\nbatched: {x.shape[0]} images x {len(args.corruptions)} corruptions x 5 severities")
    cpu0 = time.process_time()
    batched = time_batched(x, args.corruptions, args.batch_size, args.device, workers)
    cpu = time.process_time() - cpu0
    total = sum(sum(v) for v in batched.values())
    print(
        f"  {'TOTAL':18s} {total:7.2f} s  ({x.shape[0] * 5 * len(batched) / total:,.0f} images/s)"
    )
    print(f"  CPU time {cpu:.1f} s (all threads); load average now {os.getloadavg()[0]:.1f}")
    hot = sorted(batched, key=lambda k: -sum(batched[k]))[:5]
    print("  hot spots: " + ", ".join(f"{k} {sum(batched[k]):.1f} s" for k in hot))

    result = {
        "source": source,
        "n": int(x.shape[0]),
        "threads": torch.get_num_threads(),
        "setup_s": warm,
        "batched_s": batched,
        "batched_total_s": total,
    }
    if args.reference_n:
        m = min(args.reference_n, len(imgs))
        print(f"\nper-image recipe (reference port): {m} images x 5 severities")
        ref = time_reference(imgs[:m], args.corruptions)
        scale = x.shape[0] / m
        head = ("corruption", "recipe", "recipe@N", "batched", "speed-up")
        print("  {:18s} {:>9s} {:>10s} {:>9s} {:>9s}".format(*head))
        for name in args.corruptions:
            b = sum(batched[name])
            print(
                f"  {name:18s} {ref[name]:8.2f}s {ref[name] * scale:9.1f}s {b:8.2f}s "
                f"{ref[name] * scale / b:8.1f}x"
            )
        ref_total = sum(ref.values()) * scale
        print(
            f"  {'TOTAL':18s} {sum(ref.values()):8.2f}s {ref_total:9.1f}s {total:8.2f}s "
            f"{ref_total / total:8.1f}x"
        )
        result.update(
            {
                "reference_n": m,
                "reference_s": ref,
                "reference_total_at_n_s": ref_total,
                "speedup": ref_total / total,
            }
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
