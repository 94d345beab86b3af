"""Fixed-epsilon attacks (additive noise, PGD) as minimization attacks: ``EpsilonSearch`` over a
geometric epsilon grid, Foolbox's noise draws computed in torch (``noise_draw``), and PGD with
one epsilon per sample (``L2PGDPerSample``)."""

from __future__ import annotations

import math
from typing import Any

import foolbox as fb
import torch

from robustcli.attacks.methods.base import (
    AttackContext,
    AttackMethod,
    first_success,
    geometric_grid,
    l2_norms,
    raw_tensor,
    steps_per_call,
)

_NOISE_KIND: dict[type, str] = {
    fb.attacks.L2AdditiveGaussianNoiseAttack: "gaussian",
    fb.attacks.L2AdditiveUniformNoiseAttack: "uniform",
}


def noise_draw(kind: str, x: torch.Tensor, eps: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Foolbox 3's ``L2AdditiveGaussianNoiseAttack`` / ``L2AdditiveUniformNoiseAttack`` ``run``
    (bounds 0, 1) in torch, ``k`` draws per image: noise ``randn`` (or ``rand`` in [-1, 1]),
    scaled to L2 ``eps`` (per draw and row: ``eps`` is K x N), added and clipped. The same
    random numbers and arithmetic as Foolbox's: with ``k == 1`` the result is bit-identical to
    its ``run`` given the same torch seed; ``k`` draws at once are ``k`` independent draws
    (tested: the numbers of ``k`` calls). Returns K x N x C x H x W."""
    shape = (k, *x.shape) if k > 1 else tuple(x.shape)
    if kind == "gaussian":
        p = torch.randn(shape, dtype=x.dtype, device=x.device) * 1.0 + 0.0
    elif kind == "uniform":
        p = torch.rand(shape, dtype=x.dtype, device=x.device) * 2.0 + -1.0
    else:
        raise ValueError(f"unknown noise {kind!r}")
    if k == 1:
        p = p.unsqueeze(0)
    lead = p.ndim - x.ndim + 1  # K, N
    norms = p.flatten(lead).square().sum(dim=-1).sqrt()
    epsilons = (eps.view(k, -1) / norms).view(*norms.shape, *([1] * (x.ndim - 1)))
    return (x + epsilons * p).clamp(0.0, 1.0)


class EpsilonSearch(AttackMethod):
    """A Foolbox fixed-epsilon attack turned into a minimization attack.

    1. Grid: run the attack at ``start, start * ratio, ...`` up to ``sqrt(C*H*W)`` (the largest L2
       distance in the [0, 1] box), each time only on the rows not fooled yet; a row's first
       success gives its candidate and its bracket ``(previous epsilon, epsilon]``.
    2. Refinement: ``refine`` bisection steps (geometric mean; arithmetic below the first grid
       point) of each row's bracket, all rows in one call with one epsilon each. A success
       replaces the candidate when its measured L2 is smaller.

    Noise attacks draw fresh noise at every epsilon, so the grid is also a series of draws (as
    Foolbox 2's linear search was). The result is the smallest L2 seen, an upper bound of the
    attack's true minimum within a factor ``ratio ** (1 / 2 ** refine)``.

    Foolbox's L2 additive Gaussian / uniform noise attacks are computed here directly in torch
    (``noise_draw``: the same draws and arithmetic as their ``run``, bit-identical given the same
    seed) instead of through a Foolbox model per step, and once few rows are left one model call
    evaluates several consecutive grid epsilons of each (``steps_per_call``; at most
    ``max_steps_per_call``): each row keeps its first fooling epsilon, a series of independent
    draws as before, so the distribution is the same. Other attacks (PGD) go through Foolbox.
    """

    #: cap of grid steps per model call on the direct noise path (1: step by step)
    max_steps_per_call: int | None = None

    def __init__(
        self,
        attack: fb.attacks.base.FixedEpsilonAttack,
        *,
        start: float,
        ratio: float,
        refine: int,
        stochastic: bool,
    ) -> None:
        if refine < 0:
            raise ValueError(f"refine must be >= 0, got {refine}")
        self.attack = attack
        self.start, self.ratio, self.refine = float(start), float(ratio), int(refine)
        self.stochastic = stochastic

    def grid(self, x: torch.Tensor) -> list[float]:
        return geometric_grid(self.start, math.sqrt(x[0].numel()), self.ratio)

    def _attack_rows(
        self,
        ctx: AttackContext,
        x: torch.Tensor,
        y: torch.Tensor,
        rows: torch.Tensor,
        eps: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        import eagerpy as ep

        fm = ctx.fmodel(rows)
        crit = fb.criteria.Misclassification(y[rows])
        # One epsilon per row (N x 1 x 1 x 1): Foolbox's additive-noise attacks broadcast it as
        # they are; PGD needs L2PGDPerSample's projection.
        epsilon = ep.astensor(eps.to(x.dtype).view(-1, 1, 1, 1))
        x_adv = raw_tensor(self.attack.run(fm, x[rows], crit, epsilon=epsilon)).clamp(0.0, 1.0)
        return x_adv, ctx.is_adversarial(x_adv, y[rows], rows)

    def _noise_rows(
        self,
        ctx: AttackContext,
        x: torch.Tensor,
        y: torch.Tensor,
        rows: torch.Tensor,
        eps: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``eps``: K x len(rows); K draws per row in one model call: (K x rows x C x H x W
        candidates, K x rows success mask)."""
        k = eps.shape[0]
        kind = _NOISE_KIND[type(self.attack)]
        x_adv = noise_draw(kind, x[rows], eps.to(x.dtype), k)
        ok = ctx.is_adversarial(x_adv.flatten(0, 1), y[rows].repeat(k), rows.repeat(k))
        return x_adv, ok.view(k, len(rows))

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = len(x)
        best = x.clone()
        best_norm = torch.full((n,), math.inf, dtype=torch.float64, device=x.device)
        lo = torch.zeros(n, dtype=torch.float64, device=x.device)
        hi = torch.full((n,), math.inf, dtype=torch.float64, device=x.device)
        direct = type(self.attack) in _NOISE_KIND

        def update(
            rows: torch.Tensor, eps: torch.Tensor, x_adv: torch.Tensor, ok: torch.Tensor
        ) -> None:
            norms = l2_norms(x_adv - x[rows])
            better = ok & (norms < best_norm[rows])
            best[rows[better]] = x_adv[better]
            best_norm[rows[better]] = norms[better]
            hi[rows[ok]] = eps[ok]
            lo[rows[~ok]] = torch.maximum(lo[rows[~ok]], eps[~ok])

        def attack(rows: torch.Tensor, eps: torch.Tensor) -> None:
            if direct:
                x_adv, ok = self._noise_rows(ctx, x, y, rows, eps.unsqueeze(0))
                update(rows, eps, x_adv[0], ok[0])
            else:
                update(rows, eps, *self._attack_rows(ctx, x, y, rows, eps))

        grid = self.grid(x)
        step = 0
        while step < len(grid):
            rows = torch.nonzero(torch.isinf(hi)).flatten()
            if len(rows) == 0:
                break
            k = 1
            if direct:
                k = steps_per_call(len(rows), n, step, len(grid) - step)
                k = min(k, self.max_steps_per_call or k)
            eps = torch.tensor(grid[step : step + k], dtype=torch.float64, device=x.device)
            if k == 1:
                attack(rows, eps.expand(len(rows)))
            else:
                # K grid epsilons per row: each row's first success (its bracket: the epsilon
                # before), or all K failed (the last one is its lower bound)
                eps_k = eps.view(k, 1).expand(k, len(rows))
                x_adv, ok = self._noise_rows(ctx, x, y, rows, eps_k)
                hit, first = first_success(ok)
                pick = torch.where(hit, first, k - 1)
                cols = torch.arange(len(rows), device=x.device)
                update(rows, eps[pick], x_adv[pick, cols], hit)
                prev = pick[hit] - 1
                lo[rows[hit & (pick > 0)]] = eps[prev[prev >= 0]]
            step += k

        for _ in range(self.refine):
            rows = torch.nonzero(torch.isfinite(hi)).flatten()
            if len(rows) == 0:
                break
            lo_r, hi_r = lo[rows], hi[rows]
            attack(rows, torch.where(lo_r > 0, torch.sqrt(lo_r * hi_r), hi_r / 2))
        return best

    def __repr__(self) -> str:
        return (
            f"EpsilonSearch({self.attack!r}, start={self.start}, ratio={self.ratio}, "
            f"refine={self.refine})"
        )


class L2PGDPerSample(fb.attacks.L2PGD):
    """Foolbox's L2PGD that also takes one epsilon per sample (an N x 1 x 1 x 1 tensor).

    Foolbox's step size (``rel_stepsize * epsilon``) and random start broadcast such an epsilon
    already; only the projection onto the L2 ball needs it flat.
    """

    def project(self, x: Any, x0: Any, epsilon: Any) -> Any:
        import eagerpy as ep
        from foolbox.devutils import atleast_kd, flatten

        if not isinstance(epsilon, ep.Tensor):
            return super().project(x, x0, epsilon)
        delta = x - x0
        norms = ep.maximum(flatten(delta).norms.l2(axis=-1), 1e-12)
        factor = ep.minimum(1, epsilon.flatten() / norms)
        return x0 + delta * atleast_kd(factor, x.ndim)
