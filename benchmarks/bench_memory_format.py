"""Should `robust attack` run its models in channels_last? Forward and input-gradient throughput
of zoo models in channels_last against the default contiguous (NCHW) layout, side by side.

Attacks spend their time in model calls: forward only (noise, blur, contrast, blended, spatial,
salt-and-pepper, pointwise) or forward + input gradient (DDN, PGD, C&W, FMN, DeepFool). Each
model (random weights: the speed does not depend on them) is timed in both layouts in turn,
``--reps`` rounds, on a batch of ``--batch-size`` images at the model's input size, contiguous
input (what the attacks feed); the median of each is printed with the ratio NHWC / NCHW
(> 1: channels_last is faster) and the largest output difference between the two.

    python benchmarks/bench_memory_format.py                       # paper B's MNIST nets
    python benchmarks/bench_memory_format.py --models td-nin,bu-nin --batch-size 64
    OMP_NUM_THREADS=1 python benchmarks/bench_memory_format.py     # one thread, as repro runs

No goal is set by it: it decides whether the attack path should switch layouts (eval-c already
runs channels_last, ``robustcli.layers.fold.prepare_for_inference``).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import header  # noqa: E402

DEFAULT_MODELS = "bu-lenetfc,td-lenetfc,td-uni-lenetfc,td-rev-lenetfc,bu-nin-light,td-nin-light"


def step(model: torch.nn.Module, x: torch.Tensor, grad: bool) -> None:
    if grad:
        xg = x.clone().requires_grad_(True)
        model(xg).sum().backward()
    else:
        with torch.no_grad():
            model(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated registry names")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--reps", type=int, default=15, help="timed rounds per layout")
    args = ap.parse_args()

    from robustcli.models.loaded import untrained_model

    print(header())
    print(f"batch {args.batch_size}, {args.reps} rounds per layout, median images/s")
    cols = ("NCHW", "NHWC", "NHWC/NCHW", "max|diff|")
    print(f"{'model':16s} {'mode':8s} " + " ".join(f"{c:>9s}" for c in cols))
    for name in args.models.split(","):
        loaded = untrained_model(name)
        nchw = loaded.model.eval()
        for p in nchw.parameters():
            p.requires_grad_(False)
        nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
        x = torch.rand(args.batch_size, *loaded.input_shape)
        with torch.no_grad():
            diff = (nchw(x) - nhwc(x)).abs().max().item()
        for grad in (False, True):
            times: dict[str, list[float]] = {"nchw": [], "nhwc": []}
            for model in (nchw, nhwc):
                step(model, x, grad)  # warm-up
            for _ in range(args.reps):
                for key, model in (("nchw", nchw), ("nhwc", nhwc)):
                    t = time.perf_counter()
                    step(model, x, grad)
                    times[key].append(time.perf_counter() - t)
            a, b = (args.batch_size / statistics.median(times[k]) for k in ("nchw", "nhwc"))
            mode = "grad" if grad else "forward"
            print(f"{name:16s} {mode:8s} {a:9.0f} {b:9.0f} {b / a:8.2f}x {diff:9.1e}", flush=True)


if __name__ == "__main__":
    main()
