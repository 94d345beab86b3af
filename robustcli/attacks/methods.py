"""Attack methods: every attack as one call that returns, per sample, its smallest adversarial.

An ``AttackMethod`` takes a batch of clean images ``x`` (``[0, 1]`` pixels, NCHW) with labels ``y``
and returns one candidate per image (``x`` itself where it found nothing). It talks to the model
only through an ``AttackContext`` (see ``robustcli.attacks.target``), which hands out Foolbox
models bound to a subset of the batch: a branch attack needs the clean image of each row it
evaluates, so a method that attacks only some rows must ask for a model of those rows.

Foolbox gives two kinds of attacks; paper B's curve needs the smallest successful L2 per sample:

- minimization attacks (DDN, C&W, DeepFool, FMN, salt-and-pepper, contrast) return it
  directly: ``FoolboxMinimization`` calls their ``run`` (the unclipped result);
- ``GaussianBlurSearch`` and ``BlendedNoiseSearch`` run Foolbox's blur and blended-noise searches
  but stop evaluating an image once it is done (Foolbox classifies the whole batch at every step
  until the last image is fooled), and evaluate several steps per model call once few images are
  left, so that the calls stay full;
- fixed-epsilon attacks (additive noise, PGD) return an adversarial *within* a given epsilon:
  ``EpsilonSearch`` turns them into minimization attacks by a search over a geometric epsilon
  grid, then bisection on each sample's bracket;
- ``PointwiseSearch`` runs Foolbox's Pointwise algorithm on the rows its salt-and-pepper start
  fooled (Foolbox asserts that every starting point is adversarial and crashes otherwise),
  classifying only the rows still being worked on;
- ``MinimalSpatial`` scans Foolbox's SpatialAttack grid of rotations and translations and keeps,
  per sample, the fooling transform of smallest induced L2 (Foolbox keeps the first one found).

The caller (``robustcli.attacks.runner``) re-verifies and re-measures whatever comes back.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol

import foolbox as fb
import numpy as np
import torch
from foolbox.attacks.spatial_attack_transformations import rotate_and_shift


class AttackContext(Protocol):
    """What a method may ask of the model under attack (implemented by ``BatchContext``)."""

    def fmodel(self, rows: torch.Tensor | None = None) -> fb.PyTorchModel:
        """A Foolbox model of the batch rows ``rows`` (all rows if None), bounds (0, 1)."""
        ...

    def is_adversarial(
        self, x_adv: torch.Tensor, y: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Boolean mask: the model misclassifies ``x_adv`` (rows ``rows`` of the batch)."""
        ...


def l2_norms(delta: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm over C, H, W (float64)."""
    return delta.flatten(1).double().norm(dim=1)


def _raw(t: Any) -> torch.Tensor:
    return t.raw if hasattr(t, "raw") else t


class AttackMethod(ABC):
    """One attack. ``stochastic`` methods are worth repeating (paper B keeps the best of 3)."""

    stochastic: bool = False

    @abstractmethod
    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Candidates, one per row of ``x`` (``x`` itself where nothing was found)."""


class FoolboxMinimization(AttackMethod):
    """A Foolbox ``MinimizationAttack``, run once on the whole batch (its unclipped result)."""

    def __init__(self, attack: fb.attacks.base.MinimizationAttack, *, stochastic: bool) -> None:
        self.attack = attack
        self.stochastic = stochastic

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        crit = fb.criteria.Misclassification(y)
        return _raw(self.attack.run(ctx.fmodel(), x, crit))

    def __repr__(self) -> str:
        return f"FoolboxMinimization({self.attack!r})"


def geometric_grid(start: float, stop: float, ratio: float) -> list[float]:
    """``start, start * ratio, ...`` up to the first value ``>= stop``."""
    if start <= 0 or ratio <= 1 or stop < start:
        raise ValueError(f"need 0 < start <= stop and ratio > 1, got {start}, {stop}, {ratio}")
    n = math.ceil(math.log(stop / start) / math.log(ratio) - 1e-9)
    return [start * ratio**k for k in range(n + 1)]


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
        x_adv = _raw(self.attack.run(fm, x[rows], crit, epsilon=epsilon)).clamp(0.0, 1.0)
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


def reflect_index(i: np.ndarray, n: int) -> np.ndarray:
    """scipy.ndimage's ``mode="reflect"`` (``d c b a | a b c d | d c b a``, repeated for
    offsets beyond the image): the index of the pixel that position ``i`` reads."""
    j = np.mod(i, 2 * n)
    return np.where(j >= n, 2 * n - 1 - j, j)


def gaussian_matrix(sigma: float, n: int, truncate: float = 4.0) -> np.ndarray:
    """The ``n x n`` (float64) matrix of scipy's ``gaussian_filter1d(sigma, mode="reflect",
    truncate=truncate)`` on a line of ``n`` values: ``out = M @ line``. Same kernel (radius
    ``int(truncate * sigma + 0.5)``, normalised to sum 1) and the same reflection at the borders,
    also when the kernel is wider than the line."""
    radius = int(truncate * float(sigma) + 0.5)
    k = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 / (float(sigma) * float(sigma)) * k**2)
    w = w / w.sum()
    m = np.zeros((n, n))
    rows = np.repeat(np.arange(n), len(k))
    cols = reflect_index(np.arange(n)[:, None] + k[None, :], n).ravel()
    np.add.at(m, (rows, cols), np.tile(w, n))
    return m


def gaussian_blur(x: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """``x`` (N x C x H x W) blurred over H and W with each of ``sigmas``: K x N x C x H x W.

    Equals ``scipy.ndimage.gaussian_filter(x, [0, 0, sigma, sigma])`` (mode reflect, truncate 4)
    within float rounding: the separable filter as two batched matrix products, each accumulated
    in float64 and rounded to ``x.dtype`` after each axis, as scipy does (tested against it)."""
    h, w = x.shape[-2:]
    mh = torch.from_numpy(np.stack([gaussian_matrix(s, h) for s in sigmas])).to(x.device)
    mw = mh if w == h else torch.from_numpy(np.stack([gaussian_matrix(s, w) for s in sigmas]))
    mw = mw.to(x.device)
    xd = x.double()
    # H first, then W (scipy's axis order), rounding to the input dtype in between
    t = torch.einsum("kih,nchw->knciw", mh, xd).to(x.dtype).double()
    return torch.einsum("knciw,kjw->kncij", t, mw).to(x.dtype)


def steps_per_call(todo: int, batch: int, done: int, left: int) -> int:
    """How many consecutive steps of a linear search to evaluate in one model call for ``todo``
    images: enough to fill a call of ``batch`` images, at most the ``done`` steps taken so far
    (so a search never evaluates more than about twice the steps it needs) and the ``left``."""
    return max(1, min(batch // max(todo, 1), max(done, 1), left))


def first_success(ok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``ok`` (K x T, step-major): per column, whether any step succeeded and the first one."""
    k = torch.arange(ok.shape[0], 0, -1, device=ok.device).unsqueeze(1)
    return ok.any(dim=0), (ok * k).argmax(dim=0)


class GaussianBlurSearch(AttackMethod):
    """Foolbox's GaussianBlurAttack, evaluating only the images not fooled yet.

    Same algorithm and numbers as ``fb.attacks.GaussianBlurAttack(distance=l2, steps=steps)``:
    sigma grows linearly (``k / steps * max_sigma``, ``max_sigma = max(H, W)``), each image is
    blurred as scipy's ``gaussian_filter`` over H and W (``gaussian_blur``: the same filter as
    batched matrix products), clipped, and keeps the first sigma that fools. Foolbox blurs and
    classifies the whole batch at every step until all are fooled (its own TODO), so one image
    that resists makes every image of its batch cost ``steps`` model calls; here an image costs
    only the steps it needs. Once few images are left, one model call evaluates several
    consecutive sigmas of each (``steps_per_call``): the first fooling sigma is the same, the
    calls stay full.
    """

    stochastic = False

    def __init__(self, *, steps: int = 1000, max_sigma: float | None = None) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps = int(steps)
        self.max_sigma = max_sigma

    def sigmas(self, x: torch.Tensor) -> list[float]:
        """Foolbox's sigmas: ``epsilon`` accumulated by ``1 / steps`` (as Foolbox does, so they
        are identical), times ``max_sigma``."""
        max_sigma = self.max_sigma if self.max_sigma is not None else max(x.shape[2:])
        out, epsilon, stepsize = [], 0.0, 1.0 / self.steps
        for _ in range(self.steps):
            epsilon += stepsize
            out.append(epsilon * max_sigma)
        return out

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        sigmas = self.sigmas(x)
        result = x.clone()
        todo = torch.arange(len(x), device=x.device)
        step = 0
        while len(todo) and step < len(sigmas):
            k = steps_per_call(len(todo), len(x), step, len(sigmas) - step)
            xb = gaussian_blur(x[todo], sigmas[step : step + k]).clamp_(0.0, 1.0)
            ok = ctx.is_adversarial(xb.flatten(0, 1), y[todo].repeat(k), todo.repeat(k))
            hit, first = first_success(ok.view(k, len(todo)))
            found = torch.nonzero(hit).flatten()
            result[todo[found]] = xb[first[found], found]
            todo = todo[~hit]
            step += k
        return result


class BlendedNoiseSearch(AttackMethod):
    """Foolbox's LinearSearchBlendedUniformNoiseAttack, evaluating only the images not done yet.

    Same algorithm as ``fb.attacks.LinearSearchBlendedUniformNoiseAttack(distance=l2)``: draw
    uniform-noise images until each one is misclassified (at most ``directions`` draws), then
    blend ``(1 - eps) * x + eps * noise`` for ``eps`` in ``linspace(0, 1, steps + 1)`` and keep the
    first ``eps`` that fools (an image whose noise never fooled is still searched, as in Foolbox).
    Foolbox draws and classifies the whole batch until every image is done; here each image
    costs only its own draws and steps (the random numbers differ, the distribution does not).
    Once few images are left, one model call evaluates several draws or steps of each
    (``steps_per_call``): the first fooling draw of i.i.d. draws has the same distribution, and
    the first fooling ``eps`` is the same.
    """

    stochastic = True

    def __init__(self, *, directions: int = 1000, steps: int = 1000) -> None:
        if directions < 1 or steps < 1:
            raise ValueError(f"directions and steps must be >= 1, got {directions}, {steps}")
        self.directions = int(directions)
        self.steps = int(steps)

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = len(x)
        noise = torch.empty_like(x)
        drawn = torch.zeros(n, dtype=torch.bool, device=x.device)
        todo = torch.arange(n, device=x.device)
        done = 0
        while len(todo) and done < self.directions:
            k = steps_per_call(len(todo), n, done, self.directions - done)
            draw = torch.rand((k, len(todo), *x.shape[1:]), dtype=x.dtype, device=x.device)
            ok = ctx.is_adversarial(draw.flatten(0, 1), y[todo].repeat(k), todo.repeat(k))
            hit, first = first_success(ok.view(k, len(todo)))
            # the first fooling draw; the last draw where none fooled (as Foolbox keeps it)
            noise[todo] = draw[torch.where(hit, first, k - 1), torch.arange(len(todo))]
            drawn[todo[hit]] = True
            todo = todo[~hit]
            done += k
        if not drawn.all():
            warnings.warn(
                f"{type(self).__name__} failed to draw sufficient random inputs that are "
                f"adversarial ({int(drawn.sum())} / {n}).",
                stacklevel=2,
            )
        eps_all = torch.from_numpy(np.linspace(0, 1, num=self.steps + 1, dtype=np.float32)[1:])
        eps_all = eps_all.to(device=x.device, dtype=x.dtype)
        best = torch.ones(n, dtype=x.dtype, device=x.device)
        todo = torch.arange(n, device=x.device)
        step = 0
        while len(todo) and step < self.steps:
            k = steps_per_call(len(todo), n, step, self.steps - step)
            e = eps_all[step : step + k].view(k, 1, *([1] * (x.ndim - 1)))
            xb = (1 - e) * x[todo] + e * noise[todo]
            ok = ctx.is_adversarial(xb.flatten(0, 1), y[todo].repeat(k), todo.repeat(k))
            hit, first = first_success(ok.view(k, len(todo)))
            best[todo[hit]] = eps_all[step + first[hit]]
            todo = todo[~hit]
            step += k
        b = best.view(-1, *([1] * (x.ndim - 1)))
        return (1 - b) * x + b * noise


class MinimalSpatial(AttackMethod):
    """Foolbox's SpatialAttack grid (rotations x translations), keeping the smallest L2.

    Spatial attacks are not L2 attacks: the distance reported is the L2 that the fooling
    rotation/translation induces (pixels shifted in from outside the image are zero). Foolbox
    keeps the first fooling transform of its grid; this keeps the one of smallest induced L2.
    Deterministic. Defaults are Foolbox's: rotations in [-30, 30] degrees (5 values),
    translations in [-3, 3] pixels (5 values per axis), 125 transforms.
    """

    stochastic = False

    def __init__(
        self,
        *,
        max_translation: float = 3.0,
        max_rotation: float = 30.0,
        num_translations: int = 5,
        num_rotations: int = 5,
    ) -> None:
        self.max_translation = float(max_translation)
        self.max_rotation = float(max_rotation)
        self.num_translations = int(num_translations)
        self.num_rotations = int(num_rotations)

    def transforms(self) -> list[tuple[float, float, float]]:
        rots = np.linspace(-self.max_rotation, self.max_rotation, self.num_rotations)
        shifts = np.linspace(-self.max_translation, self.max_translation, self.num_translations)
        return [(float(r), float(a), float(b)) for r in rots for a in shifts for b in shifts]

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import eagerpy as ep

        best = x.clone()
        best_norm = torch.full((len(x),), math.inf, dtype=torch.float64, device=x.device)
        xe = ep.astensor(x)
        for rot, dx, dy in self.transforms():
            if rot == 0 and dx == 0 and dy == 0:
                continue
            with warnings.catch_warnings():  # torch.meshgrid without indexing= inside foolbox
                warnings.simplefilter("ignore", UserWarning)
                x_t = rotate_and_shift(xe, translation=(dx, dy), rotation=rot).raw
            x_t = x_t.clamp(0.0, 1.0)
            ok = ctx.is_adversarial(x_t, y)
            norms = l2_norms(x_t - x)
            better = ok & (norms < best_norm)
            best[better] = x_t[better]
            best_norm[better] = norms[better]
        return best


def check_params(name: str, params: dict[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        from robustcli.errors import RobustError

        raise RobustError(
            f"attack {name!r} has no parameter {', '.join(unknown)}: "
            f"it takes {', '.join(sorted(allowed)) or 'none'}"
        )
