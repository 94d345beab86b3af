"""Foolbox's searches along one line or grid of perturbations: Gaussian blur of growing sigma
(``GaussianBlurSearch``), blending towards uniform noise (``BlendedNoiseSearch``) and the
rotation/translation grid (``MinimalSpatial``), each evaluating only the images not done yet."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from foolbox.attacks.spatial_attack_transformations import rotate_and_shift

from robustcli.attacks.methods.base import (
    AttackContext,
    AttackMethod,
    first_success,
    l2_norms,
    steps_per_call,
)


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
