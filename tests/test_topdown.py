"""Paper B's BU / TD networks and the top-down layers (robustcli.layers.topdown)."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from robustcli.errors import DataError, RobustError
from robustcli.layers.topdown import (
    GaussianPyramid,
    MergeBlock,
    gaussian_blur,
    gaussian_downscale,
    gaussian_kernel1d,
    gaussian_kernel2d,
    tf_gaussian_resize_matrix,
    upsample_nearest2x,
)
from robustcli.models.topdown_nets import (
    ARRANGEMENTS,
    BACKBONES,
    PARAMETER_COUNTS,
    TFSameMaxPool2d,
    TopDownNet,
    build_paper_b_net,
)

INPUT_SHAPES = {
    "lenetfc": (1, 28, 28),
    "nin_light": (1, 28, 28),
    "nin": (3, 32, 32),
    "resnet32": (3, 32, 32),
}

# Paper B, Table 1: exact counts, and the ones it rounds (in thousands).
PAPER_EXACT = {
    ("lenetfc", "bu"): 7_670,
    ("lenetfc", "td"): 14_452,
    ("nin_light", "bu"): 62_094,
    ("nin_light", "td"): 212_670,
    ("resnet32", "bu"): 467_946,
    ("resnet32", "td"): 528_042,
    ("resnet32", "td_uni"): 319_626,
    ("resnet32", "td_rev"): 563_274,
    ("nin", "bu"): 969_822,
    ("nin", "td"): 3_368_478,
}
PAPER_ROUNDED_K = {
    ("lenetfc", "td_uni"): 23,
    ("lenetfc", "td_rev"): 58,
    ("nin_light", "td_uni"): 215,
    ("nin_light", "td_rev"): 214,
    ("nin", "td_uni"): 3_397,
    ("nin", "td_rev"): 3_388,
}
COMBOS = [(b, a) for b in BACKBONES for a in ARRANGEMENTS]
TD_COMBOS = [(b, a) for b, a in COMBOS if a != "bu"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These nets are small: one intra-op thread avoids OpenMP contention on a 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def n_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build(backbone: str, arrangement: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    return build_paper_b_net(backbone, arrangement, INPUT_SHAPES[backbone][0], **kw)


@functools.cache
def shared(backbone: str, arrangement: str) -> nn.Module:
    """One model per combination, shared by the tests that only read it (keeps the file fast)."""
    return build(backbone, arrangement)


def batch(backbone: str, n: int = 2) -> torch.Tensor:
    return torch.randn(n, *INPUT_SHAPES[backbone], generator=torch.Generator().manual_seed(1))


# --------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("backbone,arrangement", COMBOS)
def test_parameter_count_matches_paper(backbone, arrangement):
    n = n_trainable(shared(backbone, arrangement))
    assert n == PARAMETER_COUNTS[(backbone, arrangement)]
    if (backbone, arrangement) in PAPER_EXACT:
        assert n == PAPER_EXACT[(backbone, arrangement)]
    else:
        assert round(n / 1000) == PAPER_ROUNDED_K[(backbone, arrangement)]


def test_no_buffers_or_duplicates_in_state_dict():
    model = shared("lenetfc", "td")
    keys = list(model.state_dict())
    assert not any("pyramid" in k or k.startswith("last_conv") for k in keys)
    assert len(keys) == len(set(keys))


# --------------------------------------------------------------------------- forward / backward


@pytest.mark.parametrize("backbone,arrangement", COMBOS)
def test_forward_backward_and_last_conv(backbone, arrangement):
    model = build(backbone, arrangement).train()
    assert dict(model.named_modules())[model.last_conv_name] is model.last_conv
    assert any(isinstance(m, nn.Conv2d) for m in model.last_conv.modules())
    seen = []
    model.last_conv.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    out = model(batch(backbone))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([1, 7])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    # Grad-CAM's map: at input resolution in TD, at /4 in BU.
    _, h, w = INPUT_SHAPES[backbone]
    assert tuple(seen[-1][-2:]) == ((h, w) if arrangement != "bu" else (h // 4, w // 4))


@pytest.mark.parametrize("backbone,arrangement", TD_COMBOS)
def test_td_scales_interface(backbone, arrangement):
    model = build(backbone, arrangement).eval()
    assert isinstance(model, TopDownNet)
    x = batch(backbone)
    scales = model.pyramid(x)
    c, h, w = INPUT_SHAPES[backbone]
    assert [s.shape for s in scales] == [
        (2, c, h, w),
        (2, c, h // 2, w // 2),
        (2, c, h // 4, w // 4),
    ]
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(model.forward_scales(scales), ref, rtol=0, atol=0)
        torch.testing.assert_close(model.forward_multi([x, x, x]), ref, rtol=1e-6, atol=1e-6)
        # Perturbing one scale, the others fixed, changes the output.
        for i in range(3):
            perturbed = list(scales)
            noise = torch.randn(scales[i].shape, generator=torch.Generator().manual_seed(10 + i))
            perturbed[i] = scales[i] + noise
            assert (model.forward_scales(perturbed) - ref).abs().max() > 1e-4, f"scale {i}"


def test_activation_and_pyramid_options():
    x = batch("lenetfc")
    for kw in ({"activation": "gelu"}, {"pyramid_method": "tf_resize"}):
        assert build("lenetfc", "td", **kw)(x).shape == (2, 10)
    assert n_trainable(build_paper_b_net("nin_light", "td", 1, activation="silu")) == 212_670


@pytest.mark.parametrize(
    "kwargs",
    [
        {"backbone": "vgg", "arrangement": "td"},
        {"backbone": "nin", "arrangement": "upside_down"},
        {"backbone": "nin", "arrangement": "td", "activation": "swish2"},
        {"backbone": "nin", "arrangement": "td", "pyramid_method": "bilinear"},
    ],
)
def test_builder_rejects_unknown_names(kwargs):
    with pytest.raises(RobustError):
        build_paper_b_net(in_channels=3, **kwargs)


def test_builder_accepts_spelling_variants():
    assert n_trainable(build_paper_b_net("NIN-light", "TD", 1)) == 212_670


def test_input_size_must_be_divisible_by_4():
    with pytest.raises(DataError):
        shared("lenetfc", "td")(torch.zeros(1, 1, 30, 30))


# --------------------------------------------------------------------------- pyramid and blur


@pytest.mark.parametrize("sigma,size", [(1.0, 7), (2.0, 13)])
def test_gaussian_kernel_closed_form(sigma, size):
    r = size // 2
    t = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-(t**2) / (2 * sigma**2))
    k1 = gaussian_kernel1d(sigma)
    assert k1.shape == (size,)
    np.testing.assert_allclose(k1.numpy(), g / g.sum(), rtol=1e-12)
    # The authors' 2-D kernel: exp(-(i^2 + j^2) / (2 sigma^2)) / (2 pi sigma^2), then / sum.
    i, j = np.meshgrid(t, t, indexing="ij")
    k2 = np.exp(-(i**2 + j**2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)
    np.testing.assert_allclose(gaussian_kernel2d(sigma).numpy(), k2 / k2.sum(), rtol=1e-12)
    assert math.isclose(float(gaussian_kernel2d(sigma).sum()), 1.0, rel_tol=1e-12)


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_blur_of_a_delta_is_the_kernel(sigma):
    x = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    x[0, 0, 16, 16] = 1.0
    y = gaussian_blur(x, sigma)[0, 0]
    k = gaussian_kernel2d(sigma)
    r = k.shape[0] // 2
    torch.testing.assert_close(y[16 - r : 17 + r, 16 - r : 17 + r], k, rtol=0, atol=1e-15)
    assert float(y.sum()) == pytest.approx(1.0, abs=1e-12)


def test_blur_uses_reflect_padding():
    x = torch.rand(1, 2, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for sigma in (1.0, 2.0):
        # scipy's "mirror" is TF's REFLECT: d c b | a b c d | c b a
        ref = ndimage.correlate(x[0, 1].numpy(), gaussian_kernel2d(sigma).numpy(), mode="mirror")
        np.testing.assert_allclose(
            gaussian_blur(x, sigma)[0, 1].numpy(), ref, rtol=1e-10, atol=1e-12
        )


def test_downscale_is_blur_then_subsample():
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    for sigma, f in ((1.0, 2), (2.0, 4)):
        torch.testing.assert_close(
            gaussian_downscale(x, sigma, f), gaussian_blur(x, sigma)[..., ::f, ::f]
        )


def test_pyramid_of_a_delta_samples_the_gaussian():
    x = torch.zeros(1, 1, 28, 28, dtype=torch.float64)
    x[0, 0, 12, 12] = 1.0
    high, mid, low = GaussianPyramid()(x)
    assert high is x
    for out, sigma, f in ((mid, 1.0, 2), (low, 2.0, 4)):
        pos = np.arange(out.shape[-1]) * f - 12.0  # offset of each kept pixel from the delta
        g = np.exp(-(pos**2) / (2 * sigma**2)) * (np.abs(pos) <= math.ceil(3 * sigma))
        g /= np.exp(-(np.arange(-3 * sigma, 3 * sigma + 1) ** 2) / (2 * sigma**2)).sum()
        np.testing.assert_allclose(out[0, 0].numpy(), np.outer(g, g), atol=1e-15)


@pytest.mark.parametrize("method", ["gaussian", "tf_resize"])
@pytest.mark.parametrize("size", [28, 32])
def test_pyramid_keeps_a_constant_image_constant(method, size):
    x = torch.full((2, 3, size, size), 0.37, dtype=torch.float64)
    scales = GaussianPyramid(method)(x)
    assert [s.shape[-1] for s in scales] == [size, size // 2, size // 4]
    for s in scales:
        torch.testing.assert_close(s, torch.full_like(s, 0.37), rtol=0, atol=1e-14)


@pytest.mark.parametrize("method", ["gaussian", "tf_resize"])
def test_pyramid_makes_its_filters_once_on_its_device(method, monkeypatch):
    """No filter is made per forward pass (on a GPU that is a host-to-device copy, which waits
    for the GPU's queue), the filters follow ``.to(device)``, and none enters the state dict."""
    import robustcli.layers.topdown as td

    pyr = GaussianPyramid(method)
    assert pyr.state_dict() == {} and list(pyr.parameters()) == []
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    first = pyr(x)  # tf_resize: fills its cache for 32 x 32 float32 on the CPU
    made: list[tuple] = []
    monkeypatch.setattr(td, "gaussian_kernel1d", lambda *a, **k: made.append(a))
    monkeypatch.setattr(td, "tf_gaussian_resize_matrix", lambda *a, **k: made.append(a))
    again = pyr(x)
    monkeypatch.undo()
    assert made == []
    for a, b in zip(again, first, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the same numbers as the stand-alone functions, which make their filters per call
    for level, f in ((1, 2), (2, 4)):
        ref = (
            td.tf_gaussian_downscale(x, f)
            if method == "tf_resize"
            else gaussian_downscale(x, pyr.sigmas[level - 1], f)
        )
        torch.testing.assert_close(first[level], ref, rtol=0, atol=0)
    on_meta = pyr.to("meta")(torch.empty(2, 3, 32, 32, device="meta"))
    assert [s.device.type for s in on_meta] == ["meta"] * 3
    assert [b.device.type for b in pyr.buffers()] == ["meta", "meta"]


@pytest.mark.parametrize("method", ["gaussian", "tf_resize"])
def test_pyramid_first_used_in_inference_mode_still_serves_gradients(method):
    """The filters made once must not be inference tensors: an evaluation under
    ``torch.inference_mode`` followed by an attack's gradient pass would fail otherwise."""
    pyr = GaussianPyramid(method)
    x = torch.rand(2, 1, 20, 20, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        before = [s.clone() for s in pyr(x)]
    xg = x.clone().requires_grad_(True)
    scales = pyr(xg)
    sum(s.sum() for s in scales).backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    for a, b in zip(scales, before, strict=True):
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=0)


def test_tf_resize_matrix_closed_form():
    # Interior row: Gaussian of sigma f/2 input pixels centred at (o + 0.5) f - 0.5, cut at 3 sigma.
    for f in (2, 4):
        m = tf_gaussian_resize_matrix(32, f)
        assert m.shape == (32 // f, 32)
        torch.testing.assert_close(m.sum(1), torch.ones(32 // f, dtype=torch.float64))
        o = 3
        d = np.arange(32) - ((o + 0.5) * f - 0.5)
        g = np.exp(-(d**2) / (2 * (f / 2) ** 2)) * (np.abs(d) < 1.5 * f)
        np.testing.assert_allclose(m[o].numpy(), g / g.sum(), rtol=1e-12)


# --------------------------------------------------------------------------- merge and friends


def test_upsample_nearest2x():
    x = torch.arange(6.0).view(1, 1, 2, 3)
    expected = x.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)
    torch.testing.assert_close(upsample_nearest2x(x), expected)


@pytest.mark.parametrize("low_channels", [8, 4])
def test_merge_block_follows_fig3(low_channels):
    torch.manual_seed(0)
    merge = MergeBlock(low_channels, 4).eval()
    low, high = torch.randn(2, low_channels, 4, 4), torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        p = low
        if low_channels != 4:
            conv, bn, act = merge.project
            assert conv.kernel_size == (1, 1)
            p = act(bn(conv(low)))
        else:
            assert isinstance(merge.project, nn.Identity)
        up = p.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)
        conv3, bn3, act3 = merge.fuse.fuse
        assert conv3.kernel_size == (3, 3) and conv3.in_channels == 8
        expected = act3(bn3(conv3(torch.cat([up + high, high], dim=1))))
        torch.testing.assert_close(merge(low, high), expected)


def test_same_max_pool_matches_tensorflow():
    x = torch.arange(28.0).view(1, 1, 1, 28).expand(1, 1, 28, 28)
    y = TFSameMaxPool2d(3, 2)(x)
    assert y.shape[-2:] == (14, 14)
    # TF 'SAME': windows start at 0, 2, ...; the last one (26, 27, pad) is padded at the end.
    torch.testing.assert_close(y[0, 0, 0], torch.arange(2.0, 29.0, 2).clamp(max=27))
