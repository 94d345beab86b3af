"""Our attacks against Foolbox 3's own implementation of the same attack: time, model calls and
whether the results agree, on the same images and models.

    python benchmarks/bench_attack_foolbox.py -n 64 --data-dir ../shared/data

Models: ``--checkpoint`` (repeatable; default paper B's trained ``bu-lenetfc`` and ``td-lenetfc``
under runs/repro-b when present). Images: ``-n`` MNIST test images (``--data-dir``; without
it, the test images Foolbox ships for the model's dataset); both sides attack the same correctly
classified ones, in one batch. Each pair runs the same algorithm with the same parameters:

- ``gaussian``, ``uniform``: ours with ``refine=0`` (the geometric epsilon grid only, each row
  stopping at its first success) against the Foolbox attack called with that epsilon grid
  (every row at every epsilon); per row the first fooling epsilon. Stochastic.
- ``salt-pepper``, ``contrast``: ours *is* Foolbox's ``run`` (no faster path); salt-pepper is
  seeded as the runner seeds it, so both give the same images.
- ``pointwise``: ours against Foolbox's salt-and-pepper start + ``PointwiseAttack`` on the rows
  the start fooled (Foolbox asserts every start is adversarial). Stochastic (random pixel
  order); ``--n-pointwise`` images (Foolbox's search is slow).
- ``blur``: ``GaussianBlurSearch`` against ``GaussianBlurAttack(distance=l2)``. Deterministic.
- ``blended``: ``BlendedNoiseSearch`` against ``LinearSearchBlendedUniformNoiseAttack``.
  Stochastic.
- ``spatial``: ours keeps the fooling transform of smallest L2, Foolbox the first one of the same
  grid: the fooled rows agree, ours' distance is at most Foolbox's (reported as such).

Agreement: deterministic attacks: the share of rows with the same outcome and the largest
distance difference; stochastic ones: medians of ours and Foolbox's L2 and the two-sample KS
p-value of the finite distances (a small p says the distributions differ). ``speed-up`` is
Foolbox's seconds over ours, measured side by side in this run.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import header  # noqa: E402

ATTACKS = ("gaussian", "uniform", "salt-pepper", "pointwise", "blur", "contrast", "blended")
ATTACKS += ("spatial",)
DEFAULT_CHECKPOINTS = [
    f"runs/repro-b/{m}-lenetfc-mnist-e12-s0/model.safetensors" for m in ("bu", "td")
]


def l2(adv: torch.Tensor, x: torch.Tensor, ok: torch.Tensor) -> np.ndarray:
    d = (adv.double() - x.double()).flatten(1).norm(dim=1)
    d[~ok.cpu()] = math.inf
    return d.numpy()


def foolbox_run(
    target: Any, name: str, x: torch.Tensor, y: torch.Tensor
) -> tuple[np.ndarray, int, float]:
    """Foolbox 3's own attack ``name`` on ``x``: (distances, model images, seconds)."""
    import foolbox as fb

    from robustcli.attacks.methods import geometric_grid
    from robustcli.attacks.runner import _seed
    from robustcli.attacks.target import Budget

    budget = Budget()
    fm = target.fmodel(budget=budget)
    crit = fb.criteria.Misclassification(y)
    t0 = time.perf_counter()
    if name in ("gaussian", "uniform"):
        cls = {
            "gaussian": fb.attacks.L2AdditiveGaussianNoiseAttack,
            "uniform": fb.attacks.L2AdditiveUniformNoiseAttack,
        }[name]
        grid = geometric_grid(0.05, math.sqrt(x[0].numel()), 1.1)
        _, clipped, success = cls()(fm, x, crit, epsilons=grid)
        adv = x.clone()
        found = torch.zeros(len(x), dtype=torch.bool)
        for xa, ok in zip(clipped, success, strict=True):
            new = ok.cpu() & ~found
            adv[new] = xa[new.to(x.device)]
            found |= new
    elif name == "salt-pepper":
        _seed(0, name, 0, 0)  # the runner's seed of repeat 0, batch 0
        adv = fb.attacks.SaltAndPepperNoiseAttack(steps=1000).run(fm, x, crit)
    elif name == "pointwise":
        start = fb.attacks.SaltAndPepperNoiseAttack(steps=1000).run(fm, x, crit)
        good = target.predict(start) != y
        adv = x.clone()
        if good.any():
            crit_g = fb.criteria.Misclassification(y[good])
            adv[good] = fb.attacks.PointwiseAttack(l2_binary_search=True).run(
                target.fmodel(budget=budget), x[good], crit_g, starting_points=start[good]
            )
    elif name == "blur":
        adv = fb.attacks.GaussianBlurAttack(distance=fb.distances.l2, steps=1000).run(fm, x, crit)
    elif name == "contrast":
        attack = fb.attacks.BinarySearchContrastReductionAttack(
            distance=fb.distances.l2, binary_search_steps=15
        )
        adv = attack.run(fm, x, crit)
    elif name == "blended":
        attack = fb.attacks.LinearSearchBlendedUniformNoiseAttack(
            distance=fb.distances.l2, directions=1000, steps=1000
        )
        adv = attack.run(fm, x, crit)
    elif name == "spatial":
        adv, _, _ = fb.attacks.SpatialAttack()(fm, x, crit)
    else:
        raise ValueError(name)
    seconds = time.perf_counter() - t0
    adv = adv.detach().clamp(0.0, 1.0)
    return l2(adv, x, target.predict(adv) != y), budget.images, seconds


def ours_run(target: Any, name: str, x: torch.Tensor, y: torch.Tensor) -> Any:
    from robustcli.attacks import run_attack

    params = {"refine": 0} if name in ("gaussian", "uniform") else None
    return run_attack(
        target, name, x, y, params=params, repeats=1, batch_size=len(x), keep_adversarials=False
    )


def agreement(name: str, stochastic: bool, ours: np.ndarray, theirs: np.ndarray) -> str:
    from scipy.stats import ks_2samp

    fo, ft = np.isfinite(ours), np.isfinite(theirs)
    if name == "spatial":
        both = fo & ft
        le = (ours[both] <= theirs[both] + 1e-9).mean() if both.any() else math.nan
        return f"same fooled {np.mean(fo == ft):.0%}, ours<=fb {le:.0%}"
    if not stochastic:
        both = fo & ft
        diff = np.abs(ours[both] - theirs[both]).max(initial=0.0)
        return f"same outcome {np.mean(fo == ft):.0%}, max |dL2| {diff:.1e}"
    med = f"med L2 {np.median(ours):.3f}/{np.median(theirs):.3f}"
    succ = f"fooled {fo.mean():.0%}/{ft.mean():.0%}"
    if fo.sum() > 1 and ft.sum() > 1:
        p = ks_2samp(ours[fo], theirs[ft]).pvalue
        return f"{med}, {succ}, KS p {p:.2f}"
    return f"{med}, {succ}"


def main() -> None:
    from robustcli.attacks import ATTACKS as SPECS
    from robustcli.attacks.experiment import load_attack_data, load_attack_model
    from robustcli.attacks.target import AttackTarget

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", action="append", help="model.safetensors (repeatable)")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("-n", "--n-examples", type=int, default=64)
    ap.add_argument("--n-pointwise", type=int, default=16, help="images for pointwise")
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    print(header(), flush=True)
    checkpoints = args.checkpoint or [c for c in DEFAULT_CHECKPOINTS if Path(c).exists()]
    if not checkpoints:
        raise SystemExit("no checkpoint: pass --checkpoint model.safetensors")
    names = [a.strip() for a in args.attacks.split(",") if a.strip()]
    print(
        f"{'attack':12s} {'model':11s} {'n':>3s} {'ours s':>7s} {'fb s':>7s} {'speed-up':>8s} "
        f"{'calls/img ours':>14s} {'fb':>6s}  agreement (ours/fb)"
    )
    for ckpt in checkpoints:
        am = load_attack_model(None, ckpt, device="cpu")
        data = load_attack_data(
            am,
            dataset=args.dataset if args.data_dir else None,
            data_dir=args.data_dir,
            n_examples=args.n_examples,
            seed=0,
        )
        target = AttackTarget(am.model, am.mean, am.std, am.name, "all", "cpu")
        ok = target.predict(data.images) == data.labels
        xc, yc = data.images[ok], data.labels[ok]
        for name in names:
            n = args.n_pointwise if name == "pointwise" else len(xc)
            x, y = xc[:n], yc[:n]
            out = ours_run(target, name, x, y)
            mine = np.where(out.status == "adversarial", out.distances, math.inf)
            theirs, fb_images, fb_s = foolbox_run(target, name, x, y)
            print(
                f"{name:12s} {am.label:11s} {len(x):3d} {out.seconds:7.2f} {fb_s:7.2f} "
                f"{fb_s / out.seconds:7.1f}x {out.model_images / len(x):14.0f} "
                f"{fb_images / len(x):6.0f}  "
                f"{agreement(name, SPECS[name].stochastic, mine, theirs)}",
                flush=True,
            )


if __name__ == "__main__":
    main()
