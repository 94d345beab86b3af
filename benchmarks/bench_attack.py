"""Attack throughput: images/s per attack, model evaluations per image, and what the defaults of
`robust attack` cost on 1,000 images.

    python benchmarks/bench_attack.py --checkpoint runs/r20/model.safetensors \\
        --dataset cifar10 --data-dir ~/data/cifar10 -n 64 --out bench_attack.json

Every attack runs once (one repeat) with its default parameters on the same ``n`` correctly
and incorrectly classified test images, in batches of ``--batch-size`` on ``--device``.
``--max-seconds`` bounds each attack: throughput is then measured on the batches it finished.

Reported per attack: seconds, attacked images/s (clean-correct images; the others are not
attacked), model evaluations per attacked image, forward-only and with an input gradient (from the
runner's counters: machine-independent), the overhead (measured time over the time of those model
calls at the measured model speed) and its inverse, the efficiency (time the model calls
would take alone at the measured speed / wall time; goal >= 0.6), median minimal L2, and the
estimated time of the command's defaults on 1,000 images: ``1000 * clean_acc * runs /
(images/s)`` with ``runs`` = 3 for stochastic attacks (paper B's repeats) and 1 for
deterministic ones. The model's own forward and forward+backward throughput at the batch
size is measured first; ``--ref-forward`` / ``--ref-backward`` rescale the estimate to another
machine's model speed (``at ref``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import header, info  # noqa: E402


def model_throughput(target, x: torch.Tensor, reps: int = 5) -> tuple[float, float]:
    """Forward and forward+backward (input gradient) images/s of ``target`` on batch ``x``."""
    from robustcli.attacks.target import frozen_parameters

    m = target.model
    xn = target.normalize(x.to(target.device))
    with torch.no_grad():
        m(xn)
        t = time.perf_counter()
        for _ in range(reps):
            m(xn)
        fwd = reps * len(x) / (time.perf_counter() - t)
    with frozen_parameters(m):
        xg = xn.clone().requires_grad_()
        t = time.perf_counter()
        for _ in range(reps):
            (g,) = torch.autograd.grad(m(xg).sum(), xg)
        bwd = reps * len(x) / (time.perf_counter() - t)
    return fwd, bwd


def main() -> None:
    from robustcli.attacks import ATTACKS, list_attacks, median_l2, resolve_attacks, run_attack
    from robustcli.attacks.experiment import load_attack_data, load_attack_model
    from robustcli.attacks.target import AttackTarget
    from robustcli.runtime import resolve_device

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", help="model.safetensors (default: untrained --model)")
    ap.add_argument("--model", default="resnet20", help="registry name without --checkpoint")
    ap.add_argument("--dataset", default=None)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("-n", "--n-examples", type=int, default=64)
    ap.add_argument("--attacks", default="all")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-seconds", type=float, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--defaults", default="lelekas2020", help="attack set to cost on 1,000 images")
    ap.add_argument(
        "-o", "--out", "--json", dest="json", default=None, help="write the results here"
    )
    ap.add_argument(
        "--ref-forward",
        type=float,
        default=None,
        help="model forward img/s to scale the estimate to (e.g. measured on a quiet machine)",
    )
    ap.add_argument("--ref-backward", type=float, default=None, help="forward+backward img/s")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    print(header(), flush=True)
    device = resolve_device(args.device)
    am = load_attack_model(
        args.model if not args.checkpoint else None,
        args.checkpoint,
        untrained=not args.checkpoint,
        device=device,
    )
    data = load_attack_data(
        am, dataset=args.dataset, data_dir=args.data_dir, n_examples=args.n_examples, seed=0
    )
    x, y = data.images, data.labels
    target = AttackTarget(am.model, am.mean, am.std, am.name, "all", device)
    fwd, bwd = model_throughput(target, x[: args.batch_size])
    print(
        f"{am.label}: {len(x)} images ({data.provenance['source']}), device {device}, "
        f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}"
    )
    batch = min(len(x), args.batch_size)
    print(f"model: {fwd:.0f} img/s forward, {bwd:.0f} img/s forward+backward (batch {batch})")
    ref_fwd = args.ref_forward or fwd
    ref_bwd = args.ref_backward or bwd
    print(
        f"{'attack':12s} {'s':>7s} {'img/s':>7s} {'fwd/img':>8s} {'grad/img':>8s} "
        f"{'overhead':>8s} {'effic.':>6s} {'med L2':>7s} {'cut':>4s} {'1000 imgs, s':>12s} "
        f"{'at ref, s':>10s}"
    )

    rows = []
    names = resolve_attacks(args.attacks)
    for name in names:
        out = run_attack(
            target,
            name,
            x,
            y,
            repeats=1,
            batch_size=args.batch_size,
            max_seconds=args.max_seconds,
            keep_adversarials=False,
        )
        attacked = out.attacked_images
        ips = out.images_per_second
        grad = out.model_grad_images / attacked if attacked else math.nan
        fwd_only = (out.model_images - out.model_grad_images) / attacked if attacked else math.nan
        # seconds per attacked image if the model calls were all there is, at measured speed
        model_s = fwd_only / fwd + grad / bwd
        overhead = (1 / ips) / model_s if ips and model_s > 0 else math.nan
        acc = float(out.clean_correct.mean())
        runs = 3 if ATTACKS[name].stochastic else 1
        est = 1000 * acc * runs / ips if ips and ips > 0 else math.nan
        est_ref = 1000 * acc * runs * overhead * (fwd_only / ref_fwd + grad / ref_bwd)
        row = {
            "attack": name,
            "seconds": out.seconds,
            "attacked_images": attacked,
            "images_per_s": ips,
            "forward_evals_per_image": fwd_only,
            "gradient_evals_per_image": grad,
            "overhead_vs_model_time": overhead,
            "efficiency": 1 / overhead if overhead > 0 else math.nan,
            "median_l2": median_l2(out.distances, out.clean_correct),
            "success": float((out.status == "adversarial").sum() / max(1, out.clean_correct.sum())),
            "cut": out.n_cut,
            "runs_in_defaults": runs,
            "est_seconds_1000": est,
            "est_seconds_1000_at_ref": est_ref,
        }
        rows.append(row)
        print(
            f"{name:12s} {out.seconds:7.1f} {ips:7.2f} {fwd_only:8.0f} {grad:8.0f} "
            f"{overhead:8.2f} {row['efficiency']:6.2f} {row['median_l2']:7.3f} {out.n_cut:4d} "
            f"{est:12.0f} {est_ref:10.0f}",
            flush=True,
        )

    default_set = [a for a in resolve_attacks(args.defaults) if a in names]
    low = [f"{r['attack']} {r['efficiency']:.2f}" for r in rows if not r["efficiency"] >= 0.6]
    print(
        f"efficiency (model-call time alone / wall time; goal >= 0.6): "
        f"min {min((r['efficiency'] for r in rows), default=math.nan):.2f}; "
        f"below 0.6: {', '.join(low) or 'none'}"
    )
    total = sum(r["est_seconds_1000"] for r in rows if r["attack"] in default_set)
    total_ref = sum(r["est_seconds_1000_at_ref"] for r in rows if r["attack"] in default_set)
    print(
        f"defaults ({args.defaults}: {', '.join(default_set)}; 3 repeats of stochastic attacks) "
        f"on 1,000 images: about {total / 3600:.1f} h at these speeds, "
        f"{total_ref / 3600:.1f} h at {ref_fwd:.0f} / {ref_bwd:.0f} img/s"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "model": am.label,
                    "checkpoint": args.checkpoint,
                    "data": data.provenance["source"],
                    "n_examples": len(x),
                    "clean_accuracy": float((target.predict(x) == y.to(device)).float().mean()),
                    "device": str(device),
                    "threads": torch.get_num_threads(),
                    "loadavg_1min": os.getloadavg()[0],
                    "machine": info(),
                    "cpu": platform.processor() or platform.machine(),
                    "batch_size": args.batch_size,
                    "model_forward_img_s": fwd,
                    "model_fwd_bwd_img_s": bwd,
                    "attacks": rows,
                    "reference_img_s": {"forward": ref_fwd, "forward_backward": ref_bwd},
                    "defaults": {
                        "set": default_set,
                        "est_seconds_1000": total,
                        "est_seconds_1000_at_ref": total_ref,
                    },
                    "all_attacks": list_attacks(),
                },
                indent=2,
                default=float,
            )
        )


if __name__ == "__main__":
    main()
