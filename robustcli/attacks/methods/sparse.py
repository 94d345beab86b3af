"""Sparse attacks: Foolbox's salt-and-pepper noise attack (``SaltAndPepperSearch``) and the
Pointwise attack started from it (``PointwiseSearch``), both classifying only the images that
still have work."""

from __future__ import annotations

import math

import numpy as np
import torch

from robustcli.attacks.methods.base import AttackContext, AttackMethod


class SaltAndPepperSearch(AttackMethod):
    """Foolbox 3's ``SaltAndPepperNoiseAttack`` (``across_channels=True``, bounds 0, 1) in torch.

    The same algorithm, random numbers and float32 arithmetic as its ``run`` (bit-identical
    given the same torch seed, tested), but each step classifies the batch through
    ``ctx.is_adversarial`` instead of a Foolbox model and eagerpy: for ``steps`` steps, add
    salt-and-pepper noise of probability ``p`` per row (the same for every channel), keep the
    closest adversarial seen, and narrow ``p`` around the best hit. Every row runs every step
    (the search adapts ``p`` per row), so nothing is batched across steps, but a step classifies
    only the rows whose noisy image is closer than their best: the others keep their result
    whatever the model says.
    """

    stochastic = True

    def __init__(self, *, steps: int = 1000) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps = int(steps)

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = len(x)
        shape = (n, 1, *x.shape[2:]) if x.ndim > 2 else tuple(x.shape)
        kd = (n, *([1] * (x.ndim - 1)))
        result = x
        is_adv = ctx.is_adversarial(x, y)
        zeros = torch.zeros(n, dtype=x.dtype, device=x.device)
        best = torch.where(is_adv, zeros, torch.full_like(zeros, math.inf))
        min_p = zeros.clone()
        max_p = torch.ones_like(zeros)
        stepsizes = max_p / self.steps
        prob = stepsizes
        one = torch.ones_like(zeros)
        for step in range(self.steps):
            u = torch.rand(shape, dtype=x.dtype, device=x.device) * 1.0 + 0.0
            p_ = prob.view(kd)
            salt = (u >= 1 - p_ / 2).to(x.dtype) * 1.0
            pepper = -(u < p_ / 2).to(x.dtype) * 1.0
            xs = (x + salt + pepper).clamp(0.0, 1.0)
            norms = ((xs - x).flatten(1) ** 2).sum(dim=-1).sqrt()
            closer = norms < best
            if closer.all():
                hit = ctx.is_adversarial(xs, y)
            else:  # a row not closer keeps its result whatever the model says (Foolbox's TODO)
                rows = torch.nonzero(closer).flatten()
                hit = torch.zeros_like(closer)
                if len(rows):
                    hit[rows] = ctx.is_adversarial(xs[rows], y[rows], rows)
            result = torch.where(hit.view(kd), xs, result)
            best = torch.where(hit, norms, best)
            min_p = torch.where(hit, 0.5 * prob, min_p)
            max_p = torch.where(hit, torch.min(prob * 1.2, one), max_p)
            stepsizes = torch.where(hit, (max_p - min_p) / (self.steps - step), stepsizes)
            reset = prob == max_p
            prob = torch.where(hit | reset, min_p, prob)
            prob = torch.min(prob + stepsizes, max_p)
        return result


def _bisection_tree(
    hi: torch.Tensor, lo: torch.Tensor, d: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every midpoint the next ``d`` steps of ``mid = (hi + lo) / 2; hi, lo = (mid, lo) if
    still adversarial else (hi, mid)`` could try, per row: ``(R x (2**d - 1)`` values in level
    order (node ``p`` of level ``l`` at ``2**l - 1 + p``; child ``2p`` if the node stayed
    adversarial, ``2p + 1`` if not), and the ``hi``, ``lo`` of each of the ``2**d`` outcomes)."""
    h, lo_ = hi.unsqueeze(1), lo.unsqueeze(1)
    levels = []
    for _ in range(d):
        mid = (h + lo_) / 2
        levels.append(mid)
        h = torch.stack([mid, h], dim=2).flatten(1)
        lo_ = torch.stack([lo_, mid], dim=2).flatten(1)
    vals = torch.cat(levels, dim=1) if levels else hi.new_zeros((len(hi), 0))
    return vals, h, lo_


def _bisection_walk(
    still: torch.Tensor, h: torch.Tensor, lo: torch.Tensor, d: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The path of the step-by-step search through a tree of ``_bisection_tree`` given which of
    its values stayed adversarial (R x (2**d - 1)): each row's ``hi``, ``lo`` after ``d`` steps."""
    p = torch.zeros(len(h), dtype=torch.long, device=h.device)
    r = torch.arange(len(h), device=h.device)
    for level in range(d):
        p = 2 * p + (~still[r, 2**level - 1 + p]).long()
    return h[r, p], lo[r, p]


class PointwiseSearch(AttackMethod):
    """Foolbox's PointwiseAttack (Schott et al. 2018), started from its salt-and-pepper attack,
    evaluating only the images that still have work.

    1. Start: ``SaltAndPepperNoiseAttack(steps=init_steps)`` (``SaltAndPepperSearch``: the same
       in torch); images it cannot fool are failures
       (Foolbox's PointwiseAttack asserts that every start is adversarial and crashes the batch).
    2. Reset: in random order, set each perturbed value back to the clean one and keep the change
       if the image stays adversarial; repeat passes until a pass resets nothing.
    3. ``l2_binary_search``: in random order, try each remaining perturbed value at the clean
       value, and where that is no longer adversarial, binary-search (10 steps) between the
       perturbed and the clean value; repeat passes until nothing improves.

    Same algorithm and tolerances as Foolbox 3.3.4 (tested: the result is pointwise minimal),
    but Foolbox classifies the whole batch for every pixel it tries, and keeps passing over
    images whose last pass changed nothing (they cannot change in the next one either); here
    only the images being worked on are classified.

    The binary searches are evaluated ahead when few images are searching: one model call
    classifies every value the next ``d`` bisection steps could try (a tree of ``2**d - 1``
    values per image, ``d`` the depth of least model time per step given ``call_cost``, at most
    ``max_tree_depth``), then follows the path the step-by-step search takes; the first call of
    a value also tries the clean value with, assuming it fails, the first levels of its tree.
    Each image then takes the very same steps with the same float32 midpoints: the result is
    the step-by-step one (``max_tree_depth=0``), bit for bit (tested), in fewer model calls.
    """

    stochastic = True
    #: deepest bisection tree evaluated in one call (0: step by step)
    max_tree_depth: int = 10
    #: the fixed time of a model call, in images (LeNetFC on a CPU: about 5)
    call_cost: float = 6.0

    def __init__(self, *, init_steps: int = 1000, l2_binary_search: bool = True) -> None:
        self.init = SaltAndPepperSearch(steps=init_steps)
        self.l2_binary_search = bool(l2_binary_search)

    @staticmethod
    def _orders(diff: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row, its differing positions in random order: ``(lengths, padded order matrix)``."""
        orders = [np.random.permutation(np.flatnonzero(d)) for d in diff.cpu().numpy()]
        lengths = np.array([len(o) for o in orders], dtype=np.int64)
        padded = np.zeros((len(orders), int(lengths.max(initial=0))), dtype=np.int64)
        for r, o in enumerate(orders):
            padded[r, : len(o)] = o
        return torch.from_numpy(lengths).to(diff.device), torch.from_numpy(padded).to(diff.device)

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        start = self.init.run(ctx, x, y)
        ok = ctx.is_adversarial(start, y)
        out = x.clone()
        rows = torch.nonzero(ok).flatten()
        if len(rows) == 0:
            return out
        shape = x.shape[1:]
        xf = x[rows].flatten(1)
        af = start[rows].flatten(1).clone()
        ys = y[rows]

        def fooled(active: torch.Tensor) -> torch.Tensor:
            return ctx.is_adversarial(af[active].view(-1, *shape), ys[active], rows[active])

        def fooled_with(
            active: torch.Tensor, idx: torch.Tensor, vals: torch.Tensor
        ) -> torch.Tensor:
            """Row ``active[r]`` with its value ``idx[r]`` set to each of ``vals[r]`` (R x K):
            whether each such image is adversarial (R x K), in one model call."""
            r, k = vals.shape
            imgs = af[active].unsqueeze(1).expand(r, k, af.shape[1]).clone()
            imgs.scatter_(2, idx.view(r, 1, 1).expand(r, k, 1), vals.unsqueeze(2))
            ok = ctx.is_adversarial(
                imgs.view(r * k, *shape),
                ys[active].repeat_interleave(k),
                rows[active].repeat_interleave(k),
            )
            return ok.view(r, k)

        def depth(n_rows: int, extra: int) -> int:
            """Bisection steps per call for ``n_rows`` images searching: the tree depth ``d``
            (``2**d - 1`` values per image, plus ``extra``) of least model time per step, a call
            costing ``call_cost + images`` image-times, within a call of ``len(x)`` images."""
            best, best_cost = 0, math.inf
            for d in range(1 - extra, self.max_tree_depth + 1):
                images = n_rows * (2**d - 1 + extra)
                if d > 1 - extra and images > len(x):
                    break
                cost = (self.call_cost + images) / (d + extra)
                if cost < best_cost:
                    best, best_cost = d, cost
            return best

        def passes(tol: float, search: bool) -> None:
            active = torch.arange(len(rows), device=x.device)
            while len(active):
                lengths, order = self._orders((af[active] - xf[active]).abs() > tol)
                changed = torch.zeros(len(active), dtype=torch.bool, device=x.device)
                for i in range(order.shape[1]):
                    sel = lengths > i
                    rel, idx = active[sel], order[sel, i]
                    old, new = af[rel, idx], xf[rel, idx]
                    if search and self.max_tree_depth > 0:
                        # the clean value and, in case it fails, the first d0 bisection steps
                        d0 = depth(len(rel), 1)
                        vals, h, lo_ = _bisection_tree(old, new, d0)
                        ok = fooled_with(rel, idx, torch.cat([new.unsqueeze(1), vals], dim=1))
                        adv = ok[:, 0]
                        af[rel, idx] = new
                        changed[sel] |= adv
                        if adv.all():
                            continue
                        bad, bidx = rel[~adv], idx[~adv]
                        hi, lo = _bisection_walk(ok[~adv, 1:], h[~adv], lo_[~adv], d0)
                        left = 10 - d0
                        while left > 0:
                            d = max(1, min(depth(len(bad), 0), left))
                            vals, h, lo_ = _bisection_tree(hi, lo, d)
                            hi, lo = _bisection_walk(fooled_with(bad, bidx, vals), h, lo_, d)
                            left -= d
                        af[bad, bidx] = hi
                        sel_bad = torch.nonzero(sel).flatten()[~adv]
                        changed[sel_bad] |= hi != old[~adv]
                        continue
                    # step by step (the reset passes; the search with max_tree_depth=0)
                    af[rel, idx] = new
                    adv = fooled(rel)
                    changed[sel] |= adv
                    if adv.all():
                        continue
                    bad, bidx = rel[~adv], idx[~adv]
                    if not search:
                        af[bad, bidx] = old[~adv]
                        continue
                    hi, lo = old[~adv], new[~adv]  # adversarial / not adversarial values
                    for _ in range(10):
                        mid = (hi + lo) / 2
                        af[bad, bidx] = mid
                        still = fooled(bad)
                        hi, lo = torch.where(still, mid, hi), torch.where(still, lo, mid)
                    af[bad, bidx] = hi
                    sel_bad = torch.nonzero(sel).flatten()[~adv]
                    changed[sel_bad] |= hi != old[~adv]
                active = active[changed]

        passes(1e-8, search=False)
        if self.l2_binary_search:
            passes(1e-12, search=True)
        out[rows] = af.view(-1, *shape)
        return out
