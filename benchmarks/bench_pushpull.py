"""Forward+backward cost of push-pull layers and PP models against plain convolutions.

Everything is measured side by side in one run and printed as ratios to the reference, which is
a plain 3x3 convolution of the same shape in its fastest memory layout (contiguous or
channels_last, whichever is faster here). Goals on CPU (issue #2): PP layer <= 2.5x, 2-scale
MSPP layer <= 4x.

    python benchmarks/bench_pushpull.py                 # batch 128, 16 channels, 32x32
    python benchmarks/bench_pushpull.py --steps-only    # whole training steps only

"auto" rows are the layers' default: the fused CPU kernel of robustcli/layers/fused.py (the
first line printed says whether it compiled), whose fast path works on channels_last data (a
contiguous input costs two layout copies). Timings are medians; on a shared machine repeat the
run and compare the ratios, which are measured side by side.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from robustcli.layers import fused
from robustcli.layers.attention import SqueezeExcitation
from robustcli.layers.multiscale import MultiScalePushPull
from robustcli.layers.pushpull import PushPullConv2d
from robustcli.registry import create_model

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def timeit(fn: Callable[[], None], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def layer_step(layer: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).sum().backward()

    return step


def bench_layers(batch: int, channels: int, size: int, repeats: int) -> None:
    rows = []
    ref = None
    ref_steps = []
    for layout, fmt in LAYOUTS.items():
        x = torch.randn(batch, channels, size, size).contiguous(memory_format=fmt)
        x.requires_grad_(True)
        candidates: dict[str, nn.Module] = {
            "conv3x3": nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            "PP relu (auto: fused kernel)": PushPullConv2d(channels, channels, rectify="relu"),
            "PP relu (dense pull)": PushPullConv2d(
                channels, channels, rectify="relu", pull_impl="dense"
            ),
            "PP relu (separable pull)": PushPullConv2d(
                channels, channels, rectify="relu", pull_impl="separable"
            ),
            "PP linear (auto: fused)": PushPullConv2d(channels, channels, rectify="none"),
            "PP linear (dense: folded 7x7)": PushPullConv2d(
                channels, channels, rectify="none", pull_impl="dense"
            ),
            "PP attn SE (auto: fused)": PushPullConv2d(
                channels, channels, rectify="none", attention=SqueezeExcitation(channels)
            ),
            "PP attn SE (dense)": PushPullConv2d(
                channels,
                channels,
                rectify="none",
                attention=SqueezeExcitation(channels),
                pull_impl="dense",
            ),
            "MSPP 2 scales (auto: fused)": MultiScalePushPull(channels, channels, scales=(2, 3)),
            "MSPP 2 scales (dense)": MultiScalePushPull(
                channels, channels, scales=(2, 3), pull_impl="dense"
            ),
            "MSPP 2 scales (separable)": MultiScalePushPull(
                channels, channels, scales=(2, 3), pull_impl="separable"
            ),
        }
        for name, layer in candidates.items():
            layer = layer.to(memory_format=fmt)
            t = timeit(layer_step(layer, x), repeats)
            rows.append((name, layout, t))
            if name == "conv3x3":
                ref = t if ref is None else min(ref, t)
                ref_steps.append(layer_step(layer, x))
    # the reference again after the candidates: on a shared host one slow measurement of it
    # would skew every ratio, so the fastest of its measurements is used
    for step in ref_steps:
        ref = min(ref, timeit(step, repeats))
    print(
        f"\nLayer forward+backward, batch {batch}, {channels} ch, {size}x{size}, "
        f"{torch.get_num_threads()} threads (median of {repeats})"
    )
    print(f"reference: plain conv3x3 in its fastest layout = {ref * 1e3:.1f} ms")
    print(f"{'layer':34s} {'layout':14s} {'ms':>8s} {'x conv':>7s}")
    for name, layout, t in rows:
        print(f"{name:34s} {layout:14s} {t * 1e3:8.1f} {t / ref:7.2f}")


def bench_steps(batch: int, repeats: int) -> None:
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    loss_fn = nn.CrossEntropyLoss()
    results = {}
    dense = {"pp": {"pull_impl": "dense"}}
    for label, name, overrides in (
        ("resnet20", "resnet20", {}),
        ("pp-resnet20", "pp-resnet20", {}),
        ("pp-resnet20 (dense pull)", "pp-resnet20", dense),
        ("ppattn-resnet20", "ppattn-resnet20", {}),
        ("ppattn-gelu-resnet20", "ppattn-gelu-resnet20", {}),
        ("mspp-resnet20", "mspp-resnet20", {}),
        ("mspp-resnet20 (dense pull)", "mspp-resnet20", dense),
    ):
        torch.manual_seed(0)
        model = create_model(name, **overrides).to(memory_format=torch.channels_last).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(model: nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()

        results[label] = timeit(step, repeats)
    ref = results["resnet20"]
    print(f"\nTraining step (forward+backward+SGD), batch {batch}, 3x32x32, channels_last")
    print(f"{'model':28s} {'ms':>8s} {'img/s':>8s} {'x resnet20':>10s}")
    for name, t in results.items():
        print(f"{name:28s} {t * 1e3:8.1f} {batch / t:8.0f} {t / ref:10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", "--batch", dest="batch", type=int, default=128)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps-only", action="store_true")
    parser.add_argument("--layers-only", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(fused.kernel_status())
    if not args.steps_only:
        bench_layers(args.batch, args.channels, args.size, args.repeats)
    if not args.layers_only:
        bench_steps(args.batch, max(3, args.repeats // 2))


if __name__ == "__main__":
    main()
