"""Forward+backward cost of push-pull layers and PP models against plain convolutions.

Everything is measured side by side in one run and printed as ratios to the reference: a plain
3x3 convolution of the same shape in its fastest memory layout (contiguous or channels_last,
whichever is faster here; timed again after the candidates and its fastest measurement used) for
the layers, resnet20 for whole training steps. By default each candidate is timed several times
in a row, as in earlier sessions (the goals were set on such numbers); ``--interleave`` times
the candidates in turn instead, which spreads load changes evenly but leaves each candidate's
caches holding its predecessor's data (it gives the layers lower ratios: a plain convolution
loses more from cold caches). ``--clock cpu`` counts process CPU time, for loaded machines.
Goals on an idle CPU, channels_last (issue #16): PP attn SE layer <= 2.5x, 2-scale MSPP layer
<= 3.5x; training step pp-resnet20 <= 1.25x and mspp-resnet20 <= 1.75x resnet20.

Next to each measured ratio the FLOP floor (``robustcli.layers.cost``) is printed: "floor" is
the multiply-adds of the fused algorithm (one channel GEMM shared by push and pulls, fixed
stencils, the epilogue) over those of the plain convolution, "defn" those of the literal
definition (push conv + one dense s x s conv per pull scale), and "x floor" = measured / floor,
the distance from the arithmetic limit. bf16 rows run under CPU bf16 autocast (how training runs
on CPUs with native bf16) against the plain convolution under the same autocast; the push-pull
kernel computes in float32 there, so their floor is not reachable in bf16 terms.

    python benchmarks/bench_pushpull.py                 # batch 128, 16 channels, 32x32
    python benchmarks/bench_pushpull.py --layers-only --layouts channels_last
    python benchmarks/bench_pushpull.py --clock cpu     # loaded machine, OMP_NUM_THREADS=1
    python benchmarks/bench_pushpull.py --steps-only    # whole training steps only

"auto" rows are the layers' default: the fused CPU kernel of robustcli/layers/fused.py (the
second line printed says whether it compiled), whose fast path works on channels_last data (a
contiguous input costs two layout copies). Timings are medians.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from machine import header  # noqa: E402

from robustcli.layers import fused  # noqa: E402
from robustcli.layers.attention import SqueezeExcitation  # noqa: E402
from robustcli.layers.cost import LayerCost, layer_cost, model_cost  # noqa: E402
from robustcli.layers.multiscale import MultiScalePushPull  # noqa: E402
from robustcli.layers.pushpull import PushPullConv2d  # noqa: E402
from robustcli.registry import create_model  # noqa: E402

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
GOALS = {
    "PP attn SE (auto: fused)": 2.5,
    "MSPP 2 scales (auto: fused)": 3.5,
    "pp-resnet20": 1.25,
    "mspp-resnet20": 1.75,
}


def precision_context(precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def measure(steps: dict, repeats: int, interleave: bool, warmup: int = 2) -> dict:
    """Median seconds of each step over ``repeats`` timings: each step timed ``repeats`` times
    in a row (the default, as in earlier sessions: caches warm with the step's own data), or
    with ``interleave`` the steps timed in turn, round by round (a load change hits all alike;
    each step starts with caches holding the previous step's data)."""
    times: dict = {k: [] for k in steps}
    if interleave:
        for step in steps.values():
            for _ in range(warmup):
                step()
        for _ in range(repeats):
            for name, step in steps.items():
                t0 = clock()
                step()
                times[name].append(clock() - t0)
    else:
        for name, step in steps.items():
            for _ in range(warmup):
                step()
            for _ in range(repeats):
                t0 = clock()
                step()
                times[name].append(clock() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def layer_step(layer: nn.Module, x: torch.Tensor, precision: str) -> Callable[[], None]:
    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        with precision_context(precision):
            y = layer(x)
        y.float().sum().backward()

    return step


def candidates(channels: int, fused_only: bool) -> dict[str, nn.Module]:
    c = channels
    layers: dict[str, nn.Module] = {
        "conv3x3": nn.Conv2d(c, c, 3, 1, 1, bias=False),
        "PP relu (auto: fused kernel)": PushPullConv2d(c, c, rectify="relu"),
        "PP relu (dense pull)": PushPullConv2d(c, c, rectify="relu", pull_impl="dense"),
        "PP relu (separable pull)": PushPullConv2d(c, c, rectify="relu", pull_impl="separable"),
        "PP linear (auto: fused)": PushPullConv2d(c, c, rectify="none"),
        "PP linear (dense: folded 7x7)": PushPullConv2d(c, c, rectify="none", pull_impl="dense"),
        "PP attn SE (auto: fused)": PushPullConv2d(
            c, c, rectify="none", attention=SqueezeExcitation(c)
        ),
        "PP attn SE (dense)": PushPullConv2d(
            c, c, rectify="none", attention=SqueezeExcitation(c), pull_impl="dense"
        ),
        "MSPP 2 scales (auto: fused)": MultiScalePushPull(c, c, scales=(2, 3)),
        "MSPP 2 scales (dense)": MultiScalePushPull(c, c, scales=(2, 3), pull_impl="dense"),
        "MSPP 2 scales (separable)": MultiScalePushPull(c, c, scales=(2, 3), pull_impl="separable"),
    }
    if fused_only:
        layers = {k: v for k, v in layers.items() if k == "conv3x3" or "auto" in k}
    return layers


def print_goal(name: str, ratio: float) -> str:
    goal = GOALS.get(name)
    if goal is None:
        return ""
    return f"  goal <= {goal:.2f}x: {'met' if ratio <= goal else 'MISSED'}"


def bench_layers(
    batch: int,
    channels: int,
    size: int,
    repeats: int,
    layouts: list[str],
    precisions: list[str],
    interleave: bool,
) -> None:
    runs = []  # (layout, precision, name, layer)
    for precision in precisions:
        for layout in layouts:
            if precision == "bf16" and layout != "channels_last":
                continue  # training under autocast runs channels_last
            for name, layer in candidates(channels, fused_only=precision == "bf16").items():
                runs.append((layout, precision, name, layer.to(memory_format=LAYOUTS[layout])))
    inputs = {
        layout: torch.randn(batch, channels, size, size)
        .contiguous(memory_format=LAYOUTS[layout])
        .requires_grad_(True)
        for layout in layouts
    }
    steps = {
        (layout, prec, name): layer_step(layer, inputs[layout], prec)
        for layout, prec, name, layer in runs
    }
    times = measure(steps, repeats, interleave)
    if not interleave:
        # the references again after the candidates: on a shared host one slow measurement of
        # the reference would skew every ratio, so the fastest of its measurements is used
        refs = {k: v for k, v in steps.items() if k[2] == "conv3x3"}
        for k, t in measure(refs, repeats, interleave).items():
            times[k] = min(times[k], t)
    costs = {name: layer_cost(layer) for _, _, name, layer in runs}
    order = "interleaved" if interleave else "each layer in a row, reference re-timed"
    print(
        f"\nLayer forward+backward, batch {batch}, {channels} ch, {size}x{size}, "
        f"{torch.get_num_threads()} threads (median of {repeats}, {order}, "
        f"{'process CPU' if clock is time.process_time else 'wall'} time)"
    )
    for precision in precisions:
        refs = {k: t for k, t in times.items() if k[1] == precision and k[2] == "conv3x3"}
        if not refs:
            continue
        ref_key = min(refs, key=refs.get)
        ref = refs[ref_key]
        print(
            f"\n{precision}: reference = plain conv3x3, {ref_key[0]} "
            f"(its fastest layout), {ref * 1e3:.1f} ms"
        )
        print(
            f"{'layer':32s} {'layout':14s} {'ms':>7s} {'x conv':>7s} {'floor':>6s} "
            f"{'defn':>6s} {'x floor':>7s}"
        )
        for (layout, prec, name), t in times.items():
            if prec != precision:
                continue
            cost: LayerCost = costs[name]
            ratio = t / ref
            goal = print_goal(name, ratio) if layout == "channels_last" else ""
            print(
                f"{name:32s} {layout:14s} {t * 1e3:7.1f} {ratio:7.2f} {cost.floor_ratio:6.2f} "
                f"{cost.definition_ratio:6.2f} {ratio / cost.floor_ratio:7.2f}{goal}"
            )
    c = costs["conv3x3"].conv // 3
    print(
        f"\nMACs per output pixel, forward: plain conv {c}; forward+backward = 3x. floor = the "
        "fused algorithm's forward+backward MACs / the conv's (robustcli/layers/cost.py)."
    )


STEP_MODELS = (
    ("resnet20", "resnet20", {}),
    ("pp-resnet20", "pp-resnet20", {}),
    ("pp-resnet20 (dense pull)", "pp-resnet20", {"pp": {"pull_impl": "dense"}}),
    ("ppattn-resnet20", "ppattn-resnet20", {}),
    ("ppattn-gelu-resnet20", "ppattn-gelu-resnet20", {}),
    ("mspp-resnet20", "mspp-resnet20", {}),
    ("mspp-resnet20 (dense pull)", "mspp-resnet20", {"pp": {"pull_impl": "dense"}}),
)


def bench_steps(batch: int, repeats: int, precisions: list[str], interleave: bool) -> None:
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    loss_fn = nn.CrossEntropyLoss()
    steps, floors = {}, {}
    for precision in precisions:
        for label, name, overrides in STEP_MODELS:
            if precision == "bf16" and "dense" in label:
                continue
            torch.manual_seed(0)
            model = create_model(name, **overrides).to(memory_format=torch.channels_last).train()
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            floors[label] = model_cost(model, (3, 32, 32)).floor_ratio

            def step(
                model: nn.Module = model, opt: torch.optim.Optimizer = opt, prec: str = precision
            ) -> None:
                opt.zero_grad(set_to_none=True)
                with precision_context(prec):
                    logits = model(x)
                loss_fn(logits.float(), y).backward()
                opt.step()

            steps[(precision, label)] = step
    times = measure(steps, repeats, interleave)
    order = "interleaved" if interleave else "each model in a row"
    for precision in precisions:
        ref = times[(precision, "resnet20")]
        print(
            f"\nTraining step (forward+backward+SGD), batch {batch}, 3x32x32, channels_last, "
            f"{precision}{' autocast' if precision == 'bf16' else ''}, "
            f"median of {repeats} ({order}, "
            f"{'process CPU' if clock is time.process_time else 'wall'} time)"
        )
        print(f"{'model':28s} {'ms':>8s} {'img/s':>8s} {'x resnet20':>10s} {'floor':>6s}")
        for (prec, label), t in times.items():
            if prec != precision:
                continue
            ratio = t / ref
            print(
                f"{label:28s} {t * 1e3:8.1f} {batch / t:8.0f} {ratio:10.2f} "
                f"{floors[label]:6.2f}{print_goal(label, ratio)}"
            )
    print(
        "floor = the model's forward+backward MACs (convolutions, push-pull layers at their fused "
        "floor, linear) / resnet20's; BN, activations and the optimizer are not counted."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", "--batch", dest="batch", type=int, default=128)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps-only", action="store_true")
    parser.add_argument("--layers-only", action="store_true")
    parser.add_argument(
        "--layouts", default="contiguous,channels_last", help="comma-separated layer layouts"
    )
    parser.add_argument(
        "--precisions",
        default="fp32,bf16",
        help="comma-separated: fp32 and/or bf16 (CPU autocast; channels_last and fused only)",
    )
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall (idle machine) or cpu: process CPU time, for a loaded machine with one thread "
        "(time spent descheduled is not counted)",
    )
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="time the candidates in turn, round by round, instead of each one in a row",
    )
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    precisions = [p for p in args.precisions.split(",") if p]
    if "bf16" in precisions and not torch.backends.mkldnn.is_available():
        precisions.remove("bf16")
    torch.manual_seed(0)
    print(header())
    print(fused.kernel_status())
    if not args.steps_only:
        layouts = [v for v in args.layouts.split(",") if v]
        bench_layers(
            args.batch,
            args.channels,
            args.size,
            args.repeats,
            layouts,
            precisions,
            args.interleave,
        )
    if not args.layers_only:
        bench_steps(args.batch, max(3, args.repeats // 2), precisions, args.interleave)


if __name__ == "__main__":
    main()
