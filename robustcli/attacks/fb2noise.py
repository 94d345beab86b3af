"""Foolbox 2's additive-noise attacks, as paper B ran them (its code pins foolbox 2.2.1).

Foolbox 3's ``L2AdditiveGaussianNoiseAttack`` / ``L2AdditiveUniformNoiseAttack`` draw noise of a
fixed L2 norm *before* clipping; ``robust attack``'s ``gaussian`` and ``uniform`` search that norm
on a geometric grid. Foolbox 2's ``AdditiveGaussianNoiseAttack`` / ``AdditiveUniformNoiseAttack``
did something else (read from the 2.x sources, see ``shared/reference/foolbox.md``):

- a linear search over ``levels`` noise levels ``eps = 1/levels, 2/levels, ..., 1``;
- at every level a fresh noise image with a per-pixel scale ``eps`` (Gaussian: standard deviation
  ``eps / sqrt(3) * (max - min)``; uniform: half-width ``eps * (max - min)``), **multiplied by
  ``eps`` again** before it is added, so the per-pixel scale grows as ``eps ** 2``;
- clipping to the bounds, and the first level whose image is misclassified is the result (its L2
  is measured after clipping). An image never fooled is a failure (infinite distance).

So the Foolbox 2 distance is a minimum over up to ``levels`` independent draws whose per-pixel
scale does not depend on the image size, and on images with saturated pixels (MNIST's black
background) about half the noise is clipped away before the L2 is measured. ``gaussian-fb2`` and
``uniform-fb2`` reproduce that search, batched: each level is one model call on the images not
fooled yet.
"""

from __future__ import annotations

import math

import torch

from robustcli.attacks.methods import AttackContext, AttackMethod

NOISES = ("gaussian", "uniform")


class Foolbox2AdditiveNoise(AttackMethod):
    """Foolbox 2.x ``AdditiveGaussianNoiseAttack`` / ``AdditiveUniformNoiseAttack``, bounds 0..1."""

    stochastic = True

    def __init__(self, noise: str, *, levels: int = 1000) -> None:
        if noise not in NOISES:
            raise ValueError(f"noise must be one of {', '.join(NOISES)}, got {noise!r}")
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.noise = noise
        self.levels = int(levels)

    def sample(self, eps: float, like: torch.Tensor) -> torch.Tensor:
        """Foolbox 2's ``_sample_noise(eps)`` for bounds (0, 1), before the second ``* eps``."""
        if self.noise == "gaussian":
            return torch.randn_like(like) * (eps / math.sqrt(3.0))
        return (torch.rand_like(like) * 2.0 - 1.0) * eps

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        best = x.clone()
        todo = torch.arange(len(x), device=x.device)
        for k in range(1, self.levels + 1):
            if len(todo) == 0:
                break
            eps = k / self.levels
            xb = x[todo]
            x_adv = (xb + eps * self.sample(eps, xb)).clamp(0.0, 1.0)
            ok = ctx.is_adversarial(x_adv, y[todo], todo)
            best[todo[ok]] = x_adv[ok]
            todo = todo[~ok]
        return best

    def __repr__(self) -> str:
        return f"Foolbox2AdditiveNoise({self.noise!r}, levels={self.levels})"
