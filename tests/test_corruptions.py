"""CIFAR-10-C corruptions (batched torch) against the recipe, and the official-file loader.

Images: 8 of the 20 real CIFAR-10 test images shipped with foolbox (random images if foolbox
is absent). The per-image NumPy port of make_cifar_c.py (``robustcli.corruptions.reference``,
which calls scikit-image / SciPy / OpenCV / Pillow like the recipe) is the ground truth; both
implementations are fed the same random numbers.
"""

from __future__ import annotations

import glob
import importlib.util
import io
import json
import os
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from robustcli.corruptions import (
    COMMON,
    CORRUPTIONS,
    EXTRA,
    GROUPS,
    SPECS,
    _ops,
    corrupt,
    digital,
    draw,
    generate_dataset,
    load_official,
    reference,
    weather,
)
from robustcli.corruptions.generate import chunk_seed
from robustcli.errors import DataError, OutputExistsError, RobustError

RANDOM = [n for n in CORRUPTIONS if SPECS[n].draw is not None]

# Bit-exact with the recipe given the same random numbers. The rest agree to one grey level
# on a small fraction of values (float32 accumulation where the recipe used float32 with
# another summation order, and OpenCV 5's warpAffine in the reference, see reference.py).
NEAR = {"zoom_blur": 0.005, "elastic_transform": 0.005}
# The set docs/results.md reports (17 of 19); test_matches_recipe checks each of them on the
# test images, the *_sensitive_cases tests below on draws where a float32 motion-blur sum or
# OpenCV's equalizeHist rounding decides a value.
BIT_IDENTICAL = {
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
    "motion_blur", "snow", "frost", "fog", "brightness", "contrast", "pixelate",
    "jpeg_compression", "speckle_noise", "gaussian_blur", "spatter", "saturate",
}  # fmt: skip


def _cifar_images(n: int = 8) -> np.ndarray:
    spec = importlib.util.find_spec("foolbox")
    files = []
    if spec is not None and spec.submodule_search_locations:
        folder = os.path.join(next(iter(spec.submodule_search_locations)), "data")
        files = sorted(glob.glob(os.path.join(folder, "cifar10_*.png")))[:n]
    if len(files) == n:
        return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    rng = np.random.default_rng(0)  # smooth random images with some flat regions
    base = rng.integers(0, 256, (n, 8, 8, 3)).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(b).resize((32, 32), Image.BILINEAR)) for b in base])


IMAGES = _cifar_images()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.from_numpy(IMAGES).permute(0, 3, 1, 2).contiguous()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mad(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


# ----------------------------------------------------------------------------------------------
# names, groups, API
# ----------------------------------------------------------------------------------------------


def test_names_and_groups():
    assert len(CORRUPTIONS) == len(set(CORRUPTIONS)) == 19
    assert CORRUPTIONS[:15] == COMMON and CORRUPTIONS[15:] == EXTRA
    assert EXTRA == ["speckle_noise", "gaussian_blur", "spatter", "saturate"]
    assert sorted(n for g in GROUPS.values() for n in g) == sorted(CORRUPTIONS)
    assert GROUPS["extra"] == EXTRA
    assert list(GROUPS) == ["noise", "blur", "weather", "digital", "extra"]
    assert all(len(SPECS[n].params) == 5 for n in CORRUPTIONS)


def test_bad_arguments(x):
    with pytest.raises(RobustError, match="unknown corruption"):
        corrupt(x, "fog_machine", 1)
    for severity in (0, 6, 2.5, True):
        with pytest.raises(RobustError, match="severity"):
            corrupt(x, "fog", severity)
    with pytest.raises(DataError, match=r"\(N, 3, H, W\)"):
        corrupt(x.permute(0, 2, 3, 1), "fog", 1)
    with pytest.raises(DataError, match="at least"):
        corrupt(x[..., :4, :4], "fog", 1)
    with pytest.raises(DataError, match="uint8 or float"):
        corrupt(x.long(), "fog", 1)


def test_float_input_is_quantised(x):
    as_float = x.float() / 255
    assert torch.equal(corrupt(as_float, "contrast", 3), corrupt(x, "contrast", 3))


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_changes_image_and_keeps_shape(x, name):
    for severity in (1, 5):
        y = corrupt(x, name, severity, gen())
        assert y.dtype == torch.uint8 and y.shape == x.shape
        assert mad(y, x) > 0.5


@pytest.mark.parametrize("name", RANDOM)
def test_seeded(x, name):
    a = corrupt(x, name, 3, gen(1))
    assert torch.equal(a, corrupt(x, name, 3, gen(1)))
    assert not torch.equal(a, corrupt(x, name, 3, gen(2)))


def test_deterministic_ones_need_no_generator(x):
    for name in set(CORRUPTIONS) - set(RANDOM):
        assert torch.equal(corrupt(x, name, 2), corrupt(x, name, 2, gen(5)))


# ----------------------------------------------------------------------------------------------
# the batched corruptions against the per-image recipe, on the same random numbers
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_matches_recipe(x, name):
    for severity in range(1, 6):
        draws = draw(name, x.shape, severity, gen(severity))
        ours = corrupt(x, name, severity, gen(severity)).permute(0, 2, 3, 1).numpy()
        ref = np.stack(
            [
                reference.corrupt_one(
                    IMAGES[i], name, severity, {k: v[i].numpy() for k, v in draws.items()}
                )
                for i in range(len(IMAGES))
            ]
        )
        diff = np.abs(ours.astype(int) - ref.astype(int))
        if name in NEAR:
            assert diff.max() <= 1 and (diff > 0).mean() <= NEAR[name], (severity, diff.max())
        else:
            assert diff.max() == 0, (severity, diff.max(), (diff > 0).mean())


def test_bit_identical_set():
    assert set(CORRUPTIONS) - set(NEAR) == BIT_IDENTICAL and len(BIT_IDENTICAL) == 17


def _recipe_on(name: str, severity: int, seed: int, n: int, idx: list[int]):
    """(ours, recipe) on images ``idx`` of a batch of ``n`` whose draws come from ``seed``:
    cases found by searching draws where the former float32 motion blur or (1/x)*255 histogram
    equalisation gave another value than the recipe."""
    images = _cifar_images(20)
    x = torch.from_numpy(images[[i % len(images) for i in idx]]).permute(0, 3, 1, 2)
    draws = draw(name, (n, 3, 32, 32), severity, gen(seed))
    draws = {k: v[idx] for k, v in draws.items()}
    c = SPECS[name].param(severity)
    ours = SPECS[name].apply(x.contiguous(), c, **draws).permute(0, 2, 3, 1).numpy()
    ref = np.stack(
        [
            reference.corrupt_one(img, name, severity, {k: v[j].numpy() for k, v in draws.items()})
            for j, img in enumerate(x.permute(0, 2, 3, 1).numpy())
        ]
    )
    return ours, ref


def test_motion_blur_sensitive_cases():
    """Sums where float32 accumulation lands on the other side of a quantum boundary."""
    for seed, (radius, sigma) in ((0, (6, 2)), (0, (8, 2)), (3, (12, 6))):
        rng = np.random.default_rng(seed)
        imgs = rng.integers(0, 256, (4, 32, 32), dtype=np.uint8)
        angles = rng.uniform(-135, 45, 4)
        ours = _ops.magick_round(
            _ops.motion_blur(
                torch.from_numpy(imgs[:, None]), radius, sigma, torch.from_numpy(angles)
            )
        )[:, 0].numpy()
        ref = [
            reference.magick_motion_blur(im, radius, sigma, a)
            for im, a in zip(imgs, angles, strict=True)
        ]
        f32 = [
            reference.magick_motion_blur(im, radius, sigma, a, np.float32)
            for im, a in zip(imgs, angles, strict=True)
        ]
        assert np.array_equal(ours, np.stack(ref)), (radius, sigma)
        assert not np.array_equal(np.stack(f32), np.stack(ref))  # the case does test float64
    ours, ref = _recipe_on("snow", 5, 3005, 1000, [454, 747])
    assert np.array_equal(ours, ref)


def test_spatter_sensitive_cases():
    for severity, seed, idx in ((1, 1, [651]), (2, 2002, [303, 737]), (1, 3001, [351, 859])):
        ours, ref = _recipe_on("spatter", severity, seed, 1000, idx)
        assert np.array_equal(ours, ref), (severity, seed)


def test_equalize_hist_rounding():
    """equalizeHist: ``sum * (255.f / n)`` in float32, ties to even (cvRound), as cv2 does."""
    cv2 = pytest.importorskip("cv2")

    def image(counts: dict[int, int]) -> np.ndarray:
        return np.concatenate([np.full(c, v, np.uint8) for v, c in counts.items()]).reshape(32, 32)

    cases = [
        # n = 1024 - 174 = 850: 325 * (255.f / 850) = 97.50001 -> 98, but 325 * ((1.f / 850)
        # * 255) = 97.49999 -> 97
        {0: 174, 1: 325, 2: 525},
        # n = 510, scale 0.5 exactly: exact ties 0.5, 1.5, 2.5, 3.5, 4.5 -> 0, 2, 2, 4, 4
        {0: 514, 1: 1, 2: 2, 3: 2, 4: 2, 5: 2, 200: 501},
    ]
    assert np.float32(325) * (np.float32(1) / np.float32(850) * np.float32(255)) < 97.5
    rng = np.random.default_rng(0)
    randoms = [rng.integers(0, rng.integers(2, 30), (32, 32)).astype(np.uint8) for _ in range(300)]
    imgs = np.stack([image(c) for c in cases] + randoms)
    ours = _ops.cv_equalize_hist(torch.from_numpy(imgs)).numpy()
    for i, a in enumerate(imgs):
        assert np.array_equal(ours[i], cv2.equalizeHist(a)), i
    assert ours[0][imgs[0] == 1][0] == 98
    assert [ours[1][imgs[1] == v][0] for v in range(1, 6)] == [0, 2, 2, 4, 4]


# ----------------------------------------------------------------------------------------------
# severity: the corruption gets stronger (with the recipe's own exceptions)
# ----------------------------------------------------------------------------------------------

# Mean absolute difference to the clean image grows strictly with severity, except:
# - saturate: severities 1-2 desaturate (x0.3, x0.1) and 3-5 oversaturate (x1.5, x2+0.1,
#   x2.5+0.2); each regime grows on its own.
# - spatter: severities 1-3 are water, 4-5 mud; each regime grows on its own.
# - motion_blur: severities 3 and 4 are (radius 6, sigma 2) and (8, 2); the extra taps weigh
#   < 1e-9, so with the same angles they are the same image.
# - frost: the image is darkened (x1, 1, .9, .85, .75) while the frost weight grows (.2, .3,
#   .4, .4, .45); the pixel difference peaks at 3 but the correlation with the clean image
#   falls at every step.
# - glass_blur: severities 1-3 blur more (sigma .05, .25, .4) with one pass of pixel copies,
#   4-5 (sigma .25, .4) with two: within a pass count the image gets smoother, and two passes
#   move it further than one.
# - elastic_transform: the random affine shrinks (2.56, 2.24, 1.92, 1.6, .96 px) while the
#   elastic field grows; each part alone grows (elastic) or shrinks (affine) monotonically.
NON_MONOTONE = {"saturate", "spatter", "motion_blur", "frost", "glass_blur", "elastic_transform"}


def _mads(x: torch.Tensor, name: str) -> list[float]:
    return [mad(corrupt(x, name, s, gen(0)), x) for s in range(1, 6)]


@pytest.mark.parametrize("name", sorted(set(CORRUPTIONS) - NON_MONOTONE))
def test_monotone_in_severity(x, name):
    m = _mads(x, name)
    assert all(b > a for a, b in zip(m, m[1:], strict=False)), m


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.float().flatten(1)
    b = b.float().flatten(1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean().item()


def _tv(y: torch.Tensor) -> float:
    y = y.float()
    return (
        (y[..., 1:, :] - y[..., :-1, :]).abs().mean()
        + (y[..., :, 1:] - y[..., :, :-1]).abs().mean()
    ).item()


def test_severity_regimes(x):
    m = _mads(x, "saturate")
    assert m[0] < m[1] and m[2] < m[3] < m[4], m
    m = _mads(x, "spatter")
    assert m[0] < m[1] < m[2] and m[3] < m[4], m
    m = _mads(x, "motion_blur")
    assert m[0] < m[1] < m[2] <= m[3] < m[4], m
    c = [_corr(corrupt(x, "frost", s, gen(0)), x) for s in range(1, 6)]
    assert all(b < a for a, b in zip(c, c[1:], strict=False)), c
    glass = [corrupt(x, "glass_blur", s, gen(0)) for s in range(1, 6)]
    tv = [_tv(g) for g in glass]
    assert tv[0] > tv[1] > tv[2] and tv[3] > tv[4], tv
    assert mad(glass[3], x) > mad(glass[1], x) and mad(glass[4], x) > mad(glass[2], x)


def test_elastic_parts(x):
    elastic, affine = [], []
    for s in range(1, 6):
        c = SPECS["elastic_transform"].param(s)
        d = draw("elastic_transform", x.shape, s, gen(0))
        only_elastic = dict(d, affine=torch.full_like(d["affine"], 0.5))  # zero jitter
        only_affine = dict(d, dx=torch.full_like(d["dx"], 0.5), dy=torch.full_like(d["dy"], 0.5))
        elastic.append(mad(digital.elastic_transform(x, c, **only_elastic), x))
        affine.append(mad(digital.elastic_transform(x, c, **only_affine), x))
    assert elastic[0] == 0 and all(b > a for a, b in zip(elastic, elastic[1:], strict=False))
    assert all(b < a for a, b in zip(affine, affine[1:], strict=False)), affine


# ----------------------------------------------------------------------------------------------
# closed forms
# ----------------------------------------------------------------------------------------------


def _flat(value: int, n: int = 64) -> torch.Tensor:
    return torch.full((n, 3, 32, 32), value, dtype=torch.uint8)


@pytest.mark.parametrize("severity", range(1, 6))
def test_gaussian_noise_statistics(severity):
    sigma = SPECS["gaussian_noise"].param(severity)
    flat = _flat(128)
    d = draw("gaussian_noise", flat.shape, severity, gen(severity))
    z = d["z"]
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01
    y = corrupt(flat, "gaussian_noise", severity, gen(severity)).double()
    noise = (y + 0.5) / 255 - 128 / 255  # truncation: the value lies in [y, y + 1) / 255
    expected_sd = (sigma**2 + 1 / (12 * 255**2)) ** 0.5
    assert abs(noise.mean().item()) < 3 * expected_sd / noise.numel() ** 0.5 + 1e-4
    assert abs(noise.std().item() / expected_sd - 1) < 0.02


@pytest.mark.parametrize("severity", (1, 5))
def test_shot_noise_law(severity):
    """The table sampler gives the law of np.uint8(clip(Poisson(x c) / c) * 255)."""
    from scipy.stats import poisson

    lam_scale = SPECS["shot_noise"].param(severity)
    level = 60
    y = corrupt(_flat(level, 128), "shot_noise", severity, gen(3)).double()
    lam = level / 255.0 * lam_scale
    k = np.arange(int(lam + 40 * np.sqrt(lam) + 40))
    values = np.uint8(np.clip(k / lam_scale, 0, 1) * 255).astype(float)
    p = poisson.pmf(k, lam)
    mean = (p * values).sum()
    sd = np.sqrt((p * (values - mean) ** 2).sum())
    assert abs(y.mean().item() - mean) < 4 * sd / y.numel() ** 0.5
    assert abs(y.std().item() / sd - 1) < 0.03


def test_impulse_noise_fractions():
    amount = SPECS["impulse_noise"].param(5)
    y = corrupt(_flat(100), "impulse_noise", 5, gen(0))
    n = y.numel()
    for value in (0, 255):
        frac = (y == value).sum().item() / n
        assert abs(frac - amount / 2) < 4 * (amount / 2 / n) ** 0.5
    assert ((y == 0) | (y == 255) | (y == 100)).all()


def _random_images(n: int = 16) -> torch.Tensor:
    rng = np.random.default_rng(7)
    imgs = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    imgs[0] = 0
    imgs[1] = 255
    imgs[2] = imgs[2, :1]  # grey pixels (all channels equal)
    imgs[3, :, :16] = 200  # flat region
    return torch.from_numpy(imgs)


@pytest.mark.parametrize("severity", range(1, 6))
def test_contrast_exact(x, severity):
    c = SPECS["contrast"].param(severity)
    imgs = torch.cat([x, _random_images()])
    hwc = imgs.permute(0, 2, 3, 1).numpy() / 255.0
    means = np.mean(hwc, axis=(1, 2), keepdims=True)
    expected = np.uint8(np.clip((hwc - means) * c + means, 0, 1) * 255)
    assert np.array_equal(corrupt(imgs, "contrast", severity).permute(0, 2, 3, 1).numpy(), expected)


@pytest.mark.parametrize("name", ("brightness", "saturate"))
def test_hsv_corruptions_exact(x, name):
    import skimage as sk

    imgs = torch.cat([x, _random_images()])
    for severity in range(1, 6):
        c = SPECS[name].param(severity)
        out = corrupt(imgs, name, severity).permute(0, 2, 3, 1).numpy()
        for i, img in enumerate(imgs.permute(0, 2, 3, 1).numpy()):
            hsv = sk.color.rgb2hsv(img / 255.0)
            if name == "brightness":
                hsv[:, :, 2] = np.clip(hsv[:, :, 2] + c, 0, 1)
            else:
                hsv[:, :, 1] = np.clip(hsv[:, :, 1] * c[0] + c[1], 0, 1)
            expected = np.uint8(np.clip(sk.color.hsv2rgb(hsv), 0, 1) * 255)
            assert np.array_equal(out[i], expected), (severity, i)


def test_hsv_roundtrip_bitwise():
    import skimage as sk

    rng = np.random.default_rng(1)
    rgb = rng.random((4, 3, 16, 16))
    rgb[0, :, :4] = rgb[0, :1, :4]  # grey
    rgb[1, 1] = rgb[1, 0]  # red == green maxima
    h, s, v = _ops.rgb_to_hsv(torch.from_numpy(rgb))
    ref = sk.color.rgb2hsv(np.moveaxis(rgb, 1, -1))
    assert np.array_equal(np.stack([h, s, v], -1), ref)
    back = _ops.hsv_to_rgb(h, s, v).numpy()
    assert np.array_equal(np.moveaxis(back, 1, -1), sk.color.hsv2rgb(ref))


@pytest.mark.parametrize("severity", range(1, 6))
def test_pixelate_is_pillow_box(x, severity):
    c = SPECS["pixelate"].param(severity)
    side = int(32 * c)
    imgs = torch.cat([x, _random_images()])
    small = _ops.pil_resize_box(imgs, side, side)
    out = corrupt(imgs, "pixelate", severity)
    assert small.shape[-2:] == (side, side)
    for i, img in enumerate(imgs.permute(0, 2, 3, 1).numpy()):
        pil_small = Image.fromarray(img).resize((side, side), Image.BOX)
        assert np.array_equal(small[i].permute(1, 2, 0).numpy(), np.asarray(pil_small))
        pil = pil_small.resize((32, 32), Image.BOX)
        assert np.array_equal(out[i].permute(1, 2, 0).numpy(), np.asarray(pil))
    # blocky: upsampling by BOX repeats source columns/rows, 32 - side of them
    repeated_cols = (out[..., :, 1:] == out[..., :, :-1]).all(dim=(1, 2)).sum(1)
    assert (repeated_cols >= 32 - side).all()


@pytest.mark.parametrize("severity", range(1, 6))
def test_jpeg_is_real_jpeg(x, severity):
    quality = SPECS["jpeg_compression"].param(severity)
    imgs = torch.cat([x, _random_images(4)])
    out = corrupt(imgs, "jpeg_compression", severity)
    arr = imgs.permute(0, 2, 3, 1).numpy()
    for i, img in enumerate(arr):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=quality)
        buf.seek(0)
        expected = np.asarray(Image.open(buf).convert("RGB"))
        assert np.array_equal(out[i].permute(1, 2, 0).numpy(), expected)
    assert np.array_equal(digital._jpeg_pil(arr, quality), out.permute(0, 2, 3, 1).numpy())


def test_jpeg_in_worker_threads_does_not_warn():
    """eval-c corrupts in worker threads: torchvision 0.29's codec deprecation stays silenced
    there too (a catch_warnings per call restored the global filters under the other thread)."""
    from concurrent.futures import ThreadPoolExecutor

    imgs = _random_images(8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ThreadPoolExecutor(max_workers=4) as pool:
            outs = list(pool.map(lambda _: corrupt(imgs, "jpeg_compression", 3), range(200)))
    assert all(torch.equal(o, outs[0]) for o in outs)
    assert not [w for w in caught if issubclass(w.category, DeprecationWarning)]


def test_glass_copies_like_the_recipe():
    """NumPy's tuple swap on views copies the neighbour: glass blur duplicates pixels."""
    img = np.arange(32 * 32 * 3, dtype=np.int64).reshape(32, 32, 3)
    img[1, 1], img[0, 0] = img[0, 0], img[1, 1]
    assert np.array_equal(img[1, 1], img[0, 0])


def test_frost_photographs_loaded_once(x):
    corrupt(x, "frost", 1, gen(0))
    before = weather.frost_images.cache_info().misses
    for s in range(1, 6):
        corrupt(x, "frost", s, gen(s))
    assert weather.frost_images.cache_info().misses == before
    photos = weather.frost_images(32, 32)
    assert len(photos) == 5 and all(p.shape[0] > 33 and p.shape[1] > 33 for p in photos)


def test_other_image_sizes():
    rng = np.random.default_rng(3)
    imgs = torch.from_numpy(rng.integers(0, 256, (2, 3, 24, 40), dtype=np.uint8))
    for name in CORRUPTIONS:
        y = corrupt(imgs, name, 3, gen(0))
        assert y.shape == imgs.shape and y.dtype == torch.uint8, name


# ----------------------------------------------------------------------------------------------
# the library replicas against the libraries
# ----------------------------------------------------------------------------------------------


def _imagemagick() -> list[str] | None:
    for exe in ("magick", "convert-im6.q16", "convert"):
        path = shutil.which(exe)
        if not path:
            continue
        try:
            out = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.stdout.startswith("Version: ImageMagick"):
            return [path, "convert"] if exe == "magick" else [path]
    return None


@pytest.mark.skipif(_imagemagick() is None, reason="ImageMagick is not installed")
def test_motion_blur_matches_imagemagick(tmp_path):
    import cv2

    magick = _imagemagick()
    rng = np.random.default_rng(0)
    cases = [((6, 1), 30.0, 3), ((9, 2.5), -44.0, 3), ((14, 12), -100.0, 1), ((8, 2), 7.5, 1)]
    for (radius, sigma), angle, channels in cases:
        shape = (32, 32, 3) if channels == 3 else (32, 32)
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(img).save(tmp_path / "in.png")
        subprocess.run(
            [
                *magick,
                str(tmp_path / "in.png"),
                "-motion-blur",
                f"{radius}x{sigma}+{angle}",
                str(tmp_path / "out.png"),
            ],
            check=True,
        )
        out = cv2.imread(str(tmp_path / "out.png"), cv2.IMREAD_UNCHANGED)
        if out.ndim == 3:
            out = out[..., ::-1]
        t = torch.from_numpy(img).float().reshape(1, 32, 32, -1).permute(0, 3, 1, 2)
        ours = _ops.magick_round(_ops.motion_blur(t, radius, sigma, torch.tensor([angle])))
        ours = ours[0].permute(1, 2, 0).squeeze(-1).numpy()
        assert np.array_equal(ours, out.reshape(ours.shape)), (radius, sigma, angle)


def test_distance_transform_ipp():
    """OpenCV's own chamfer has 16-bit fixed-point weights (diagonal 91750 / 65536); builds
    with Intel IPP take IPP's branch, with float weights (1.4), in OpenCV 4 and 5 alike."""
    cv2 = pytest.importorskip("cv2")
    src = np.full((8, 8), 255, np.uint8)
    src[4, 4] = 0
    ours = _ops.cv_distance_transform_l2_5(torch.from_numpy(src == 0)[None])[0].numpy()
    assert ours[3, 3] == np.float32(91750 / 65536) and ours[3, 4] == 1
    ipp = cv2.ipp.useIPP()
    try:
        cv2.ipp.setUseIPP(False)
        assert np.array_equal(ours, np.minimum(cv2.distanceTransform(src, cv2.DIST_L2, 5), 20))
        cv2.ipp.setUseIPP(True)
        if cv2.ipp.useIPP():  # a build with IPP
            assert cv2.distanceTransform(src, cv2.DIST_L2, 5)[3, 3] == np.float32(1.4)
    finally:
        cv2.ipp.setUseIPP(ipp)


def test_opencv_replicas():
    """The spatter chain's OpenCV calls (distanceTransform without IPP, see above)."""
    cv2 = pytest.importorskip("cv2")
    ipp = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)
    try:
        _opencv_replicas(cv2)
    finally:
        cv2.ipp.setUseIPP(ipp)


def _opencv_replicas(cv2) -> None:  # noqa: ANN001
    rng = np.random.default_rng(0)
    liquid = weather.SPATTER[2]
    z = torch.from_numpy(rng.standard_normal((12, 32, 32)))
    layer = _ops.gaussian_filter(z * liquid[1] + liquid[0], liquid[2])
    layer = torch.where(layer < liquid[3], 0.0, layer)
    img8 = torch.trunc(layer * 255).long().bitwise_and_(255).to(torch.uint8)
    img8[0] = torch.from_numpy(rng.integers(0, 256, (32, 32), dtype=np.uint8))
    edges = _ops.cv_canny(img8, 50, 150)
    dist = _ops.cv_distance_transform_l2_5(edges, cap=20.0)
    ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
    for i, a in enumerate(img8.numpy()):
        ref_edges = cv2.Canny(a, 50, 150)
        assert np.array_equal(edges[i].numpy(), ref_edges > 0), i
        ref_dist = np.minimum(cv2.distanceTransform(255 - ref_edges, cv2.DIST_L2, 5), 20)
        ours = dist[i].numpy()
        assert np.array_equal(ours, ref_dist), i
        b = cv2.blur(ours, (3, 3))
        assert np.array_equal(_ops.cv_box3(dist[i : i + 1])[0].numpy(), b), i
        b8 = b.astype(np.uint8)
        eq = cv2.equalizeHist(b8)
        assert np.array_equal(_ops.cv_equalize_hist(torch.from_numpy(b8)[None])[0].numpy(), eq)
        f = cv2.filter2D(eq, cv2.CV_8U, ker)
        assert np.array_equal(_ops.cv_filter2d_u8(torch.from_numpy(eq)[None], ker)[0].numpy(), f)
        assert np.array_equal(
            _ops.cv_box3(torch.from_numpy(f)[None])[0].numpy(), cv2.blur(f, (3, 3))
        )
    flat = np.full((1, 32, 32), 7, np.uint8)  # a single grey level stays as it is
    assert np.array_equal(
        _ops.cv_equalize_hist(torch.from_numpy(flat)).numpy()[0], cv2.equalizeHist(flat[0])
    )


def test_gaussian_filter_is_scipy_bitwise():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    a = rng.random((3, 32, 32))
    for sigma, mode, truncate in (
        (0.4, "nearest", 4.0),
        (1.0, "nearest", 4.0),
        (6.4, "reflect", 3.0),
        (0.96, "reflect", 3.0),
    ):
        ours = _ops.gaussian_filter(torch.from_numpy(a), sigma, mode, truncate).numpy()
        ref = np.stack([gaussian_filter(c, sigma, mode=mode, truncate=truncate) for c in a])
        assert np.array_equal(ours, ref), (sigma, mode)


def test_zoom_matrix_is_scipy_zoom():
    rng = np.random.default_rng(0)
    img = rng.random((32, 32, 3)).astype(np.float64)
    for z in (1.0, 1.05, 1.25, 1.75, 2.25):
        ours = _ops.zoom_separable(torch.from_numpy(np.moveaxis(img, -1, 0)), z).numpy()
        assert np.allclose(np.moveaxis(ours, 0, -1), reference.clipped_zoom(img, z), atol=1e-12)


# ----------------------------------------------------------------------------------------------
# writing and loading the official layout
# ----------------------------------------------------------------------------------------------


def _labels(n: int) -> np.ndarray:
    return (np.arange(n) % 10).astype(np.int64)


def test_generate_dataset_layout(tmp_path, x):
    nhwc = x.permute(0, 2, 3, 1).numpy()[:6]
    out = generate_dataset(
        nhwc,
        _labels(6),
        tmp_path / "c",
        ["contrast", "gaussian_noise"],
        seed=3,
        progress=False,
        batch_size=4,
        workers=1,
    )
    data = np.load(out / "gaussian_noise.npy")
    assert data.dtype == np.uint8 and data.shape == (30, 32, 32, 3)
    labels = np.load(out / "labels.npy")
    assert labels.dtype == np.uint8 and np.array_equal(labels, np.tile(_labels(6), 5))
    meta = json.loads((out / "generation.json").read_text())
    assert meta["severities"] == [1, 2, 3, 4, 5] and meta["seed"] == 3
    # severity-major, batch b of severity s seeded from (seed, name, s, b)
    batch = torch.from_numpy(nhwc[4:6]).permute(0, 3, 1, 2)
    g = torch.Generator().manual_seed(chunk_seed(3, "gaussian_noise", 4, 1))
    expected = corrupt(batch, "gaussian_noise", 4, generator=g).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(data[3 * 6 + 4 : 3 * 6 + 6], expected)
    assert not list(out.glob("*.tmp"))
    # NCHW input, another worker count, and a subset run give the same bytes
    again = generate_dataset(
        x[:6],
        _labels(6),
        tmp_path / "d",
        ["gaussian_noise"],
        seed=3,
        progress=False,
        batch_size=4,
        workers=2,
    )
    assert (again / "gaussian_noise.npy").read_bytes() == (out / "gaussian_noise.npy").read_bytes()
    # the loader reads it back
    data_set = load_official(out)
    assert data_set.corruptions == ("gaussian_noise", "contrast")  # the recipe's order
    assert np.array_equal(data_set.images("gaussian_noise", 4), data[18:24])
    assert np.array_equal(data_set.labels, _labels(6))
    assert len(list(data_set)) == 10


def test_generate_dataset_refuses_and_forces(tmp_path, x):
    target = tmp_path / "c"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="not empty"):
        generate_dataset(x[:2], _labels(2), target, ["fog"], progress=False)
    generate_dataset(x[:2], _labels(2), target, ["fog"], [2, 4], progress=False, force=True)
    loaded = load_official(target)
    assert loaded.severities == (2, 4) and loaded.n == 2
    with pytest.raises(DataError, match="severity 1"):
        loaded.images("fog", 1)
    with pytest.raises(DataError, match="labels"):
        generate_dataset(x[:2], _labels(3), tmp_path / "e", ["fog"], progress=False)
    with pytest.raises(DataError, match="uint8"):
        generate_dataset(x[:2].float(), _labels(2), tmp_path / "e", ["fog"], progress=False)


def _official(tmp_path, n: int = 7, names: tuple[str, ...] = ("fog", "snow")):
    root = tmp_path / "CIFAR-10-C"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in names:
        np.save(root / f"{name}.npy", rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8))
    np.save(root / "labels.npy", np.tile(_labels(n), 5).astype(np.uint8))
    return root


def test_load_official_any_n(tmp_path):
    root = _official(tmp_path, n=7)
    data = load_official(root)
    assert (
        data.corruptions == ("snow", "fog") and data.n == 7 and data.severities == (1, 2, 3, 4, 5)
    )
    full = np.load(root / "fog.npy")
    assert np.array_equal(data.images("fog", 3), full[14:21])
    assert isinstance(data.images("fog", 3).base, np.memmap) or isinstance(
        data.images("fog", 3), np.memmap
    )
    assert data.labels.dtype == np.uint8 and np.array_equal(data.labels, _labels(7))
    assert load_official(root, ["fog"]).corruptions == ("fog",)


def _expect_error(root, match: str, names=None) -> None:
    with pytest.raises(DataError, match=match) as err:
        load_official(root, names)
    message = str(err.value)
    assert "\n" not in message and ":" in message  # one line: the problem, then the fix


def test_load_official_errors(tmp_path):
    _expect_error(tmp_path / "nope", "not found.*download")
    root = _official(tmp_path)
    _expect_error(root, "missing.*download", ["gaussian_noise"])
    _expect_error(root, "unknown corruption", ["fogg"])
    np.save(root / "fog.npy", np.zeros((35, 32, 32, 3), np.float32))
    _expect_error(root, "dtype float32, expected uint8", ["fog"])
    np.save(root / "fog.npy", np.zeros((35, 32, 32), np.uint8))
    _expect_error(root, r"shape \(35, 32, 32\)", ["fog"])
    np.save(root / "fog.npy", np.zeros((36, 32, 32, 3), np.uint8))
    _expect_error(root, "not divisible by the 5 severities", ["fog"])
    np.save(root / "fog.npy", np.zeros((40, 32, 32, 3), np.uint8))
    _expect_error(root, "40 rows but labels.npy has 35", ["fog"])
    np.save(root / "fog.npy", np.array([{"a": 1}] * 35, dtype=object), allow_pickle=True)
    _expect_error(root, "not a readable .npy", ["fog"])
    (root / "snow.npy").write_bytes(b"not a numpy file")
    _expect_error(root, "not a readable .npy", ["snow"])
    np.save(root / "labels.npy", np.arange(35, dtype=np.uint8))
    _expect_error(root, "not the test labels repeated", ["fog"])
    np.save(root / "labels.npy", np.zeros(34, np.uint8))
    _expect_error(root, "not a positive multiple", ["fog"])
    np.save(root / "labels.npy", np.zeros(35, np.float32))
    _expect_error(root, "1-D integer", ["fog"])
    (root / "labels.npy").unlink()
    _expect_error(root, "labels.npy is missing", ["fog"])
    empty = tmp_path / "empty"
    empty.mkdir()
    _expect_error(empty, "no <corruption>.npy")


def test_load_official_refuses_a_folder_being_written(tmp_path):
    """While another process holds the writer's lock (as `robust corrupt` does), the folder is
    refused with the holder's pid; once the lock is gone it loads."""
    fcntl = pytest.importorskip("fcntl")
    from robustcli.io import lock_path

    root = _official(tmp_path)
    lock = lock_path(root)
    lock.write_text("4242\n")
    with open(lock) as fh:  # another open file description: what a second process would hold
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        _expect_error(root, r"being written by another robustcli process \(pid 4242")
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    assert load_official(root).n == 7  # a stale, unheld lock file does not block readers


# ----------------------------------------------------------------------------------------------
# GPU (only where one is present)
# ----------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_cuda_matches_cpu(x, name):
    cpu = corrupt(x, name, 3, gen(0))
    gpu = corrupt(x.cuda(), name, 3, gen(0))  # CPU generator: the same random numbers
    assert gpu.device.type == "cuda"
    diff = (gpu.cpu().int() - cpu.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01
