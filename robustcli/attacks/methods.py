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
    """

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

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = len(x)
        best = x.clone()
        best_norm = torch.full((n,), math.inf, dtype=torch.float64, device=x.device)
        lo = torch.zeros(n, dtype=torch.float64, device=x.device)
        hi = torch.full((n,), math.inf, dtype=torch.float64, device=x.device)

        def attack(rows: torch.Tensor, eps: torch.Tensor) -> None:
            x_adv, ok = self._attack_rows(ctx, x, y, rows, eps)
            norms = l2_norms(x_adv - x[rows])
            better = ok & (norms < best_norm[rows])
            best[rows[better]] = x_adv[better]
            best_norm[rows[better]] = norms[better]
            hi[rows[ok]] = eps[ok]
            lo[rows[~ok]] = torch.maximum(lo[rows[~ok]], eps[~ok])

        for eps in self.grid(x):
            rows = torch.nonzero(torch.isinf(hi)).flatten()
            if len(rows) == 0:
                break
            attack(rows, torch.full((len(rows),), eps, dtype=torch.float64, device=x.device))

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


class PointwiseSearch(AttackMethod):
    """Foolbox's PointwiseAttack (Schott et al. 2018), started from its salt-and-pepper attack,
    evaluating only the images that still have work.

    1. Start: ``SaltAndPepperNoiseAttack(steps=init_steps)``; images it cannot fool are failures
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
    """

    stochastic = True

    def __init__(self, *, init_steps: int = 1000, l2_binary_search: bool = True) -> None:
        self.init = fb.attacks.SaltAndPepperNoiseAttack(steps=init_steps)
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
        start = _raw(self.init.run(ctx.fmodel(), x, fb.criteria.Misclassification(y)))
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

        def passes(tol: float, search: bool) -> None:
            active = torch.arange(len(rows), device=x.device)
            while len(active):
                lengths, order = self._orders((af[active] - xf[active]).abs() > tol)
                changed = torch.zeros(len(active), dtype=torch.bool, device=x.device)
                for i in range(order.shape[1]):
                    sel = lengths > i
                    rel, idx = active[sel], order[sel, i]
                    old, new = af[rel, idx], xf[rel, idx]
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
