"""Our paper-B attacks against Foolbox 3's own implementations (and scipy's blur).

Deterministic attacks (blur, contrast, seeded salt-and-pepper) must give Foolbox's images;
stochastic ones (additive noise on an epsilon grid, blended noise) the same distribution of
distances (two-sample KS test on pooled repeats, fixed seeds). The batched searches, which
evaluate several steps per model call once few images are left, are checked against a
step-by-step reference with a fake model whose decision is known. The model is a small MLP
trained here on scikit-learn's real 8x8 digits upsampled to 16x16.
"""

from __future__ import annotations

import math
import warnings

import foolbox as fb
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from scipy.stats import ks_2samp
from torch import nn

from robustcli.attacks import AttackTarget, run_attack
from robustcli.attacks.methods import (
    BlendedNoiseSearch,
    EpsilonSearch,
    GaussianBlurSearch,
    SaltAndPepperSearch,
    gaussian_blur,
    geometric_grid,
    noise_draw,
    steps_per_call,
)
from robustcli.attacks.runner import _seed
from robustcli.attacks.target import BatchContext, Budget
from robustcli.data import load_dataset

MEAN, STD = (0.3,), (0.37,)


@pytest.fixture(scope="module")
def digits():
    out = []
    for split in ("train", "test"):
        x, y = load_dataset("digits", split)
        x = F.interpolate(x.float() / 255, size=(16, 16), mode="bilinear", align_corners=False)
        out += [x.clamp(0, 1), y]
    return out


@pytest.fixture(scope="module")
def target(digits):
    xtr, ytr, _, _ = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(0, len(xtr), (64,), generator=gen)
        loss = F.cross_entropy(model((xtr[idx] - MEAN[0]) / STD[0]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return AttackTarget(model.eval(), MEAN, STD, name="mlp")


@pytest.fixture(scope="module")
def sample(digits, target):
    """Correctly classified test digits, some of each class."""
    _, _, xte, yte = digits
    idx = torch.arange(0, 360, 12)
    x, y = xte[idx], yte[idx]
    ok = target.predict(x) == y
    assert ok.float().mean() > 0.7  # the model learned something
    return x[ok], y[ok]


def _distances(adv: torch.Tensor, x: torch.Tensor, fooled: torch.Tensor) -> np.ndarray:
    d = (adv.double() - x.double()).flatten(1).norm(dim=1).numpy()
    return np.where(fooled.numpy(), d, math.inf)


def _fb_distances(target, adv, x, y) -> np.ndarray:
    adv = adv.clamp(0, 1)
    return _distances(adv, x, target.predict(adv) != y)


# ------------------------------------------------------------------ blur: scipy and Foolbox


@pytest.mark.parametrize("shape", [(3, 2, 16, 16), (2, 1, 9, 13)])
def test_gaussian_blur_equals_scipy_gaussian_filter(shape):
    """Also for kernels much wider than the image (repeated reflection at the borders)."""
    rng = np.random.default_rng(0)
    x = rng.random(shape, dtype=np.float32)
    sigmas = [0.016, 0.4, 1.0, 2.5, 7.0, 16.0, 40.0]
    ours = gaussian_blur(torch.from_numpy(x), sigmas).numpy()
    assert ours.shape == (len(sigmas), *shape) and ours.dtype == np.float32
    for k, s in enumerate(sigmas):
        ref = gaussian_filter(x, [0, 0, s, s])
        np.testing.assert_allclose(ours[k], ref, rtol=0, atol=1e-6)


def test_blur_equals_foolbox_blur(target, sample):
    x, y = sample
    theirs = fb.attacks.GaussianBlurAttack(distance=fb.distances.l2, steps=80).run(
        target.fmodel(), x, fb.criteria.Misclassification(y)
    )
    ours = run_attack(target, "blur", x, y, params={"steps": 80}, batch_size=len(x))
    assert (ours.status == "adversarial").any()
    torch.testing.assert_close(ours.adversarials, theirs.clamp(0, 1), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(
        np.isfinite(ours.distances), np.isfinite(_fb_distances(target, theirs, x, y))
    )


class ThresholdContext:
    """A fake model: row ``r`` is fooled once its image is at L2 >= ``thr[r]`` from the clean
    one. Counts the images it classifies."""

    def __init__(self, x: torch.Tensor, thr: torch.Tensor) -> None:
        self.x, self.thr, self.images, self.calls = x, thr, 0, 0

    def fmodel(self, rows=None):  # pragma: no cover - not used by these attacks
        raise AssertionError

    def is_adversarial(self, x_adv, y, rows=None):
        rows = torch.arange(len(self.x)) if rows is None else rows
        self.images += len(x_adv)
        self.calls += 1
        d = (x_adv.double() - self.x[rows].double()).flatten(1).norm(dim=1)
        return d >= self.thr[rows]


def test_batched_blur_search_finds_the_first_fooling_sigma(sample):
    """Against the step-by-step search with scipy's filter: same first sigma per row, also for
    rows found late (several sigmas per model call) and rows never found."""
    x = sample[0][:12]
    method = GaussianBlurSearch(steps=50)
    sigmas = method.sigmas(x)
    ref_d = np.stack(
        [
            (
                torch.from_numpy(np.clip(gaussian_filter(x.numpy(), [0, 0, s, s]), 0, 1)).double()
                - x.double()
            )
            .flatten(1)
            .norm(dim=1)
            .numpy()
            for s in sigmas
        ]
    )  # steps x rows
    # thresholds that rows reach at very different steps, two never
    steps = np.array([0, 1, 2, 3, 5, 8, 13, 21, 34, 49, 50, 50])
    thr = [ref_d[s, r] if s < len(sigmas) else math.inf for r, s in enumerate(steps)]
    ctx = ThresholdContext(x, torch.tensor(thr, dtype=torch.float64) - 1e-9)
    out = method.run(ctx, x, torch.zeros(len(x), dtype=torch.long))
    for r, s in enumerate(steps):
        if s < len(sigmas):
            first = int(np.argmax(ref_d[:, r] >= thr[r] - 1e-9))
            ref = np.clip(gaussian_filter(x[r : r + 1].numpy(), [0, 0, *[sigmas[first]] * 2]), 0, 1)
            np.testing.assert_allclose(out[r : r + 1].numpy(), ref, rtol=0, atol=1e-6)
        else:
            assert torch.equal(out[r], x[r])
    # several sigmas per call once few rows are left: fewer calls than steps
    assert ctx.calls < len(sigmas)


class RecordingContext(ThresholdContext):
    """``ThresholdContext`` that keeps the images of its first call (the first noise draws)."""

    first: torch.Tensor | None = None

    def is_adversarial(self, x_adv, y, rows=None):
        if self.first is None:
            self.first = x_adv.clone()
        return super().is_adversarial(x_adv, y, rows)


def test_batched_blended_search_finds_the_first_fooling_epsilon(sample):
    """Every noise draw fools (thresholds below any noise distance); the blend search must stop
    at the first eps of ``linspace(0, 1, steps + 1)`` whose blend reaches the row's threshold,
    also for rows found late (several eps per model call) and a row never found (eps 1)."""
    x = sample[0][:10]
    steps = 60
    eps = np.linspace(0, 1, steps + 1, dtype=np.float32)[1:]
    first_k = [0, 1, 2, 5, 10, 20, 35, 50, 59, None]
    probe = RecordingContext(x, torch.zeros(len(x), dtype=torch.float64))
    torch.manual_seed(0)
    BlendedNoiseSearch(directions=1, steps=1).run(probe, x, torch.zeros(len(x)).long())
    noise = probe.first
    assert noise is not None
    size = (noise.double() - x.double()).flatten(1).norm(dim=1)
    thr = torch.tensor(
        [
            math.inf if k is None else (float(eps[k]) - 0.5 / steps) * float(size[r])
            for r, k in enumerate(first_k)
        ],
        dtype=torch.float64,
    )
    thr[-1] = math.inf
    ctx = ThresholdContext(x, thr)
    # rows that never reach their threshold: let the noise draw itself still count as fooling
    ctx.thr = torch.minimum(thr, size - 1e-6)
    torch.manual_seed(0)
    out = BlendedNoiseSearch(directions=1, steps=steps).run(ctx, x, torch.zeros(len(x)).long())
    for r, k in enumerate(first_k):
        e = 1.0 if k is None else float(eps[k])
        torch.testing.assert_close(out[r], (1 - e) * x[r] + e * noise[r], rtol=0, atol=1e-6)
    assert ctx.calls < 1 + steps  # several eps per call once few rows are left


NOISES = {
    "gaussian": fb.attacks.L2AdditiveGaussianNoiseAttack,
    "uniform": fb.attacks.L2AdditiveUniformNoiseAttack,
}


@pytest.mark.parametrize("noise", sorted(NOISES))
def test_noise_draw_equals_foolbox_noise_attack(target, sample, noise):
    """The direct torch draw is Foolbox's ``run`` bit for bit (same seed, one epsilon per row),
    and ``k`` draws at once consume the random stream as ``k`` single draws do."""
    import eagerpy as ep

    x, _ = sample
    eps = torch.linspace(0.1, 6.0, len(x))
    torch.manual_seed(1)
    theirs = NOISES[noise]().run(
        target.fmodel(), x, None, epsilon=ep.astensor(eps.view(-1, 1, 1, 1))
    )
    torch.manual_seed(1)
    ours = noise_draw(noise, x, eps.view(1, -1))
    assert ours.shape == (1, *x.shape)
    assert torch.equal(ours[0], theirs)
    torch.manual_seed(1)
    three = noise_draw(noise, x, eps.view(1, -1).expand(3, -1), k=3)
    torch.manual_seed(1)
    singles = [noise_draw(noise, x, eps.view(1, -1))[0] for _ in range(3)]
    torch.testing.assert_close(three, torch.stack(singles), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("noise", sorted(NOISES))
def test_direct_noise_search_step_by_step_equals_the_foolbox_path(target, sample, noise):
    """One grid epsilon per call: the direct draws give the images Foolbox's ``run`` gives, over
    the whole search (grid and bisection), with the same seed."""
    x, y = sample
    via_foolbox = type("ViaFoolbox", (NOISES[noise],), {})()  # not the direct path's class
    outs = []
    for attack in (via_foolbox, NOISES[noise]()):
        method = EpsilonSearch(attack, start=0.2, ratio=1.25, refine=2, stochastic=True)
        method.max_steps_per_call = 1
        torch.manual_seed(3)
        outs.append(method.run(BatchContext(target, x, Budget()), x, y))
    assert not torch.equal(outs[0], x)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("noise", sorted(NOISES))
def test_batched_noise_search_finds_the_first_fooling_epsilon(noise):
    """Several grid epsilons per call once few rows are left: each row still gets its first
    fooling grid epsilon and the same bisection of its bracket as step by step. Mid-grey
    images, so no noise is clipped and a candidate's L2 is its epsilon; the fake model fools a
    row from a threshold L2 on, set between grid points and away from the bisection points."""
    n = 12
    x = torch.full((n, 1, 16, 16), 0.5)
    grid = geometric_grid(0.05, 16.0, 1.1)
    first = [0, 1, 2, 3, 5, 8, 13, 21, 30, 34, 35, None]
    thr = torch.tensor(
        [0.03 if s == 0 else math.inf if s is None else grid[s - 1] * 1.1**0.3 for s in first],
        dtype=torch.float64,
    )
    out, calls = [], []
    for cap in (1, None):
        method = EpsilonSearch(NOISES[noise](), start=0.05, ratio=1.1, refine=2, stochastic=True)
        method.max_steps_per_call = cap
        ctx = ThresholdContext(x, thr)
        torch.manual_seed(0)
        out.append(_distances(method.run(ctx, x, torch.zeros(n).long()), x, torch.ones(n) > 0))
        calls.append(ctx.calls)
    step, batched = out
    assert np.isfinite(step[:-1]).all() and step[-1] == 0 and batched[-1] == 0
    assert (step[:-1] >= thr.numpy()[:-1] - 1e-6).all()
    np.testing.assert_allclose(batched, step, rtol=1e-5)
    assert calls[1] < calls[0]


def test_steps_per_call_fills_the_batch_and_at_most_doubles():
    assert steps_per_call(64, 64, 0, 1000) == 1
    assert steps_per_call(4, 64, 100, 1000) == 16
    assert steps_per_call(1, 64, 3, 1000) == 3  # at most the steps done so far
    assert steps_per_call(1, 64, 900, 10) == 10  # never past the end


# ------------------------------------------------------------------ deterministic: same images


def test_contrast_equals_foolbox_contrast(target, sample):
    x, y = sample
    theirs = fb.attacks.BinarySearchContrastReductionAttack(
        distance=fb.distances.l2, binary_search_steps=10
    ).run(target.fmodel(), x, fb.criteria.Misclassification(y))
    ours = run_attack(target, "contrast", x, y, params={"binary_search_steps": 10})
    np.testing.assert_allclose(ours.distances, _fb_distances(target, theirs, x, y), atol=1e-6)


def test_seeded_salt_pepper_equals_foolbox_salt_pepper(target, sample):
    """The runner seeds repeat r of batch b from (seed, attack, r, b): with that seed Foolbox's
    own attack gives the same images."""

    x, y = sample
    ours = run_attack(
        target, "salt-pepper", x, y, params={"steps": 50}, repeats=1, batch_size=len(x)
    )
    _seed(0, "salt-pepper", 0, 0)
    theirs = fb.attacks.SaltAndPepperNoiseAttack(steps=50).run(
        target.fmodel(), x, fb.criteria.Misclassification(y)
    )
    assert (ours.status == "adversarial").any()
    np.testing.assert_allclose(ours.distances, _fb_distances(target, theirs, x, y), atol=1e-6)


def test_salt_pepper_search_equals_foolbox_salt_pepper(target, sample):
    """The torch salt-and-pepper search (the pointwise start) gives Foolbox's images with the
    same seed, though it classifies only the rows that could improve."""
    x, y = sample
    torch.manual_seed(4)
    theirs = fb.attacks.SaltAndPepperNoiseAttack(steps=80).run(
        target.fmodel(), x, fb.criteria.Misclassification(y)
    )
    torch.manual_seed(4)
    budget = Budget()
    ours = SaltAndPepperSearch(steps=80).run(BatchContext(target, x, budget), x, y)
    assert (target.predict(ours) != y).any()
    assert torch.equal(ours, theirs)
    assert budget.images < 81 * len(x)


# ------------------------------------------------------------------ stochastic: same distribution

KS_P = 1e-3  # fixed seeds: the outcome is reproducible; a real difference gives p << 1e-3
REPS = 30  # repeats pooled per side (each a run on all sample images)


def _pooled(runs: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(runs)


def _same_distribution(ours: np.ndarray, theirs: np.ndarray) -> None:
    fo, ft = np.isfinite(ours), np.isfinite(theirs)
    assert fo.sum() > 50 and ft.sum() > 50
    assert abs(fo.mean() - ft.mean()) < 0.1  # success rates
    p = ks_2samp(ours[fo], theirs[ft]).pvalue
    assert p > KS_P, (np.median(ours[fo]), np.median(theirs[ft]), p)


@pytest.mark.parametrize("noise", ["gaussian", "uniform"])
def test_noise_grid_search_has_foolbox_distribution(target, sample, noise):
    """Ours on the epsilon grid (refine 0, rows stop at their first success) against Foolbox's
    attack called with the same grid (every row at every epsilon), per row its first success."""
    x, y = sample
    cls = {
        "gaussian": fb.attacks.L2AdditiveGaussianNoiseAttack,
        "uniform": fb.attacks.L2AdditiveUniformNoiseAttack,
    }[noise]
    params = {"start": 0.2, "ratio": 1.25, "refine": 0}
    grid = geometric_grid(0.2, math.sqrt(x[0].numel()), 1.25)
    ours, theirs = [], []
    for rep in range(REPS):
        out = run_attack(target, noise, x, y, params=params, repeats=1, seed=rep)
        ours.append(np.where(out.status == "adversarial", out.distances, math.inf))
        torch.manual_seed(100 + rep)
        _, clipped, success = cls()(
            target.fmodel(), x, fb.criteria.Misclassification(y), epsilons=grid
        )
        d = np.full(len(x), math.inf)
        for xa, ok in zip(clipped, success, strict=True):
            new = ok.numpy() & np.isinf(d)
            d[new] = _distances(xa, x, ok)[new]
        theirs.append(d)
    _same_distribution(_pooled(ours), _pooled(theirs))


def test_blended_has_foolbox_distribution(target, sample):
    x, y = sample
    ours, theirs = [], []
    attack = fb.attacks.LinearSearchBlendedUniformNoiseAttack(
        distance=fb.distances.l2, directions=20, steps=100
    )
    for rep in range(REPS):
        out = run_attack(
            target, "blended", x, y, params={"directions": 20, "steps": 100}, repeats=1, seed=rep
        )
        ours.append(np.where(out.status == "adversarial", out.distances, math.inf))
        torch.manual_seed(100 + rep)
        with warnings.catch_warnings():  # "failed to draw sufficient random inputs"
            warnings.simplefilter("ignore", UserWarning)
            adv = attack.run(target.fmodel(), x, fb.criteria.Misclassification(y))
        theirs.append(_fb_distances(target, adv, x, y))
    _same_distribution(_pooled(ours), _pooled(theirs))
