"""Training throughput: our loop against a reference torchvision Dataset + DataLoader loop.

Same model, same images, same batch size, same optimiser, measured in one process, with the
variants interleaved round by round so that a change in machine load hits all of them alike.

- ``reference``: how the Strisciuglio code trains: a torchvision-style Dataset that turns each
  HWC uint8 image into a PIL image (as ``torchvision.datasets.CIFAR10.__getitem__`` does),
  ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip`` + ``ToTensor`` + ``Normalize``, a
  ``DataLoader`` (shuffle, ``--workers`` worker processes), fp32 NCHW model.
- ``ours``: ``robustcli.train``'s loop: uint8 images on the device, crop + flip + normalise in
  one batched gather (``DeviceBatches``), channels_last, bf16 autocast where the CPU has native
  bf16 (``--precision auto``; fp32 elsewhere).
- ablations: ``ours-fp32-nchw`` (only the data path changed) and ``ours-fp32-cl`` (+ NHWC).

With ``--models A,B,...`` it instead times our loop's training step for each model (same data,
precision and layout, interleaved round by round) and prints each step's time relative to the
first model, next to the ratio of their multiply-adds (``robustcli.layers.cost``: push-pull
layers at the fused kernel's FLOP floor). Goals on an idle CPU (issue #16): pp-resnet20 <= 1.25x
and mspp-resnet20 <= 1.75x resnet20.

Usage::

    python benchmarks/bench_train.py --data-dir /tmp/cifar          # CIFAR-10 (JPEG mirror)
    python benchmarks/bench_train.py                                 # embedded digits at 32x32
    python benchmarks/bench_train.py --steps 20 --rounds 3 --out out.json
    python benchmarks/bench_train.py --models resnet20,pp-resnet20,mspp-resnet20
    python benchmarks/bench_train.py --models resnet20,pp-resnet20 --precision fp32

Images/s counts training images through forward, backward and the SGD step, data loading
included; warm-up steps (oneDNN primitive creation, DataLoader start) are excluded.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from machine import header, info  # noqa: E402

from robustcli import runtime  # noqa: E402
from robustcli.data import (  # noqa: E402
    DeviceBatches,
    adapt_images,
    dataset_info,
    input_adapter,
    load_dataset,
)
from robustcli.layers.cost import model_cost  # noqa: E402
from robustcli.registry import create_model, get_model_spec  # noqa: E402

GOALS = {"pp-resnet20": 1.25, "mspp-resnet20": 1.75}


def load_images(
    data_dir: str | None, model: str
) -> tuple[torch.Tensor, torch.Tensor, tuple, tuple, str]:
    spec = get_model_spec(model)
    if data_dir:
        x, y = load_dataset("cifar10", "train", data_dir)
        info, label = dataset_info("cifar10"), f"cifar10 from {data_dir}"
    else:
        x, y = load_dataset("digits", "train")
        info, label = dataset_info("digits"), "digits (8x8 -> 3x32x32)"
    adapter = input_adapter(info.input_shape, spec.input_shape)
    mean, std = adapter.normalization(info.mean, info.std)
    return adapt_images(x, adapter), y, mean, std, label


def reference_steps(model_name, x, y, mean, std, batch_size, workers, seed):
    """The torchvision Dataset + DataLoader + transforms loop (fp32, NCHW)."""
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    class CifarLike(Dataset):
        """Holds HWC uint8 numpy images and returns PIL-transformed tensors, as CIFAR10 does."""

        def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
            self.data = images.permute(0, 2, 3, 1).contiguous().numpy()
            self.targets = labels.tolist()
            self.transform = transform

        def __len__(self) -> int:
            return len(self.data)

        def __getitem__(self, i):
            img = Image.fromarray(
                self.data[i].squeeze(-1) if self.data.shape[-1] == 1 else self.data[i]
            )
            return self.transform(img), self.targets[i]

    tf = transforms.Compose(
        [
            transforms.RandomCrop(x.shape[-1], padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    loader = DataLoader(
        CifarLike(x, y, tf),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
    torch.manual_seed(seed)
    model = create_model(model_name).train()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4
    )

    def batches():
        while True:
            yield from loader

    for xb, yb in batches():
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        yield xb.shape[0]


def our_steps(model_name, x, y, mean, std, batch_size, precision, channels_last, seed):
    """robustcli.train's step: device-resident uint8, batched crop+flip, optional NHWC / bf16."""
    dev = torch.device("cpu")
    prec = runtime.resolve_precision(precision, dev)
    gen = runtime.data_generator(seed, dev)
    batches = DeviceBatches(
        x,
        y,
        mean=mean,
        std=std,
        batch_size=batch_size,
        augment="crop+flip",
        padding=4,
        generator=gen,
        channels_last=channels_last,
        drop_last=True,
    )
    torch.manual_seed(seed)
    model, _ = runtime.prepare_model(
        create_model(model_name).train(), dev, channels_last=channels_last
    )
    opt = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    while True:
        for xb, yb, _ in batches:
            with runtime.autocast(dev, prec):
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            yield xb.shape[0]


def timed(gen, steps: int) -> float:
    t0 = time.perf_counter()
    n = sum(itertools.islice(gen, steps))
    return n / (time.perf_counter() - t0)


def interleaved_rates(
    variants: dict, warmup: int, rounds: int, steps: int
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Warm every variant up, then time ``steps`` steps of each in turn, round by round (so a
    change in machine load hits all alike): the median images/s of each, and every round's."""
    for gen in variants.values():
        for _ in itertools.islice(gen, warmup):
            pass
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        for name, gen in variants.items():
            rates[name].append(timed(gen, steps))
        print(
            f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()), flush=True
        )
    return {k: statistics.median(v) for k, v in rates.items()}, rates


def compare_models(args: argparse.Namespace) -> None:
    """Our training step for each of ``args.models``, relative to the first one."""
    names = [m for m in args.models.split(",") if m]
    prec = runtime.resolve_precision(args.precision, torch.device("cpu"))
    data, variants, floors = {}, {}, {}
    for name in names:
        x, y, mean, std, label = data.setdefault(
            get_model_spec(name).input_shape, load_images(args.data_dir, name)
        )
        common = (name, x, y, mean, std, args.batch_size)
        variants[name] = our_steps(*common, args.precision, True, args.seed)
        floors[name] = model_cost(create_model(name), tuple(x.shape[1:]))
    print(
        f"{label}, batch {args.batch_size}, {torch.get_num_threads()} threads, precision {prec}, "
        f"channels_last; {args.rounds} rounds x {args.steps} steps, interleaved",
        flush=True,
    )
    med, rates = interleaved_rates(variants, args.warmup, args.rounds, args.steps)
    ref, ref_macs = med[names[0]], floors[names[0]].fused
    print(
        f"\n{'model':22s} {'images/s':>9s} {'step ms':>8s} {'x ' + names[0]:>14s} "
        f"{'MACs floor':>10s}"
    )
    ratios = {}
    for name, v in med.items():
        ratios[name] = ref / v
        floor = floors[name].fused / ref_macs
        goal = GOALS.get(name) if names[0] == "resnet20" else None
        note = (
            f"  goal <= {goal:.2f}x: {'met' if ratios[name] <= goal else 'MISSED'}" if goal else ""
        )
        print(
            f"{name:22s} {v:9.0f} {args.batch_size / v * 1e3:8.1f} {ratios[name]:14.2f} "
            f"{floor:10.2f}{note}"
        )
    print(
        "MACs floor: the model's forward+backward multiply-adds (convolutions, push-pull layers at "
        f"the fused kernel's floor, linear) / {names[0]}'s; BN, activations, data and optimizer "
        "are not counted."
    )
    if args.json:
        payload = {
            "machine": info(),
            "models": names,
            "precision": prec,
            "batch_size": args.batch_size,
            "rounds": rates,
            "median_images_per_s": med,
            "step_time_ratio": ratios,
            "macs_floor_ratio": {k: c.fused / ref_macs for k, c in floors.items()},
        }
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("ROBUSTCLI_CIFAR_DIR"))
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant and round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers (reference)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "-o", "--out", "--json", dest="json", default=None, help="write the numbers to this file"
    )
    ap.add_argument(
        "--models",
        default=None,
        help="comma-separated models: time our step for each, relative to the first",
    )
    ap.add_argument(
        "--precision",
        default="auto",
        help="with --models: auto (bf16 autocast on CPUs with native bf16), bf16 or fp32",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(header(), flush=True)
    if args.models:
        compare_models(args)
        return

    x, y, mean, std, label = load_images(args.data_dir, args.model)
    common = (args.model, x, y, mean, std, args.batch_size)
    prec = runtime.resolve_precision("auto", torch.device("cpu"))
    variants = {
        "reference": reference_steps(*common, args.workers, args.seed),
        "ours": our_steps(*common, "auto", True, args.seed),
        "ours-fp32-nchw": our_steps(*common, "fp32", False, args.seed),
        "ours-fp32-cl": our_steps(*common, "fp32", True, args.seed),
    }
    print(
        f"{args.model}, {label}, {len(x)} images, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads, reference workers {args.workers}, "
        f"'ours' precision {prec}; {args.rounds} rounds x {args.steps} steps",
        flush=True,
    )
    med, rates = interleaved_rates(variants, args.warmup, args.rounds, args.steps)
    ref = med["reference"]
    print(f"\n{'variant':16s} {'images/s':>9s} {'vs reference':>13s}")
    for name, v in med.items():
        print(f"{name:16s} {v:9.0f} {v / ref:12.2f}x")
    if args.json:
        payload = {
            "model": args.model,
            "data": label,
            "batch_size": args.batch_size,
            "threads": torch.get_num_threads(),
            "workers": args.workers,
            "precision_ours": prec,
            "rounds": rates,
            "median_images_per_s": med,
            "speedup": med["ours"] / ref,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "machine": info(),
        }
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2)


if __name__ == "__main__":
    main()
