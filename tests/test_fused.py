"""The fused CPU push-pull kernel equals the definition, forward and backward.

The references are the literal definitions: ``F.conv2d`` with the push kernel and with the
bilinear-resized pull kernel (``pull_response_direct``), in float64. The kernel is compiled on
first use; where that is impossible (no C++ compiler or ninja) these tests are skipped and the
layers fall back to the dense pull (tested in test_layers.py). Where a compiler is present the
kernel must build: a build failure (as on AVX2-only CPUs before #16's fix) fails every test here
instead of skipping them silently.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from robustcli.layers import fused
from robustcli.layers.attention import SqueezeExcitation
from robustcli.layers.multiscale import MultiScalePushPull
from robustcli.layers.pushpull import (
    PushPullConv2d,
    bilinear_matrix,
    pull_kernel_size,
    pull_response_direct,
    use_fused,
)

pytestmark = pytest.mark.skipif(
    not fused.can_build(), reason="no C++ compiler / ninja to build the kernel"
)


def test_kernel_builds_where_a_compiler_exists():
    assert fused.available(torch.zeros(1)), fused.kernel_status()


def _definition(x, w, scales, stride, padding):
    return [F.conv2d(x, w, stride=stride, padding=padding)] + [
        -pull_response_direct(x, w, h, stride, padding) for h in scales
    ]


def _bases(k, scales):
    return [bilinear_matrix(k, pull_kernel_size(k, h)) for h in scales]


def _responses(x, w, bases, stride, padding):
    """The kernel's packed [P, Q_1, ...] split into one tensor per response."""
    packed = fused.pushpull_responses(x, w, bases, stride, padding)
    assert packed.shape[1] == w.shape[0] * (1 + len(bases))
    return packed.split(w.shape[0], dim=1)


# (N, C, O, H, W, k, stride, padding, scales): the fast path (stride 1, same padding) with
# output channels below, at and above the SIMD width (one native register: 4 float64 lanes with
# AVX2, 8 with AVX-512; tails, several vectors per tap), odd widths and k=5, and the generic path
# (other strides and paddings). The GEMMs' register tiles (up to 12 rows by 2-4 vectors) get
# partial tiles in both directions from the widths (rows) and the channel counts.
CASES = [
    (2, 33, 72, 5, 13, 3, 1, 1, (2.0,)),
    (1, 64, 64, 8, 8, 3, 1, 1, (2.0, 3.0)),
    (2, 16, 16, 8, 8, 3, 1, 1, (2.0,)),
    (2, 20, 40, 6, 7, 3, 1, 1, (2.0, 3.0)),
    (2, 3, 24, 5, 6, 3, 1, 1, (2.0,)),
    (3, 5, 7, 9, 9, 3, 1, 1, (2.0,)),
    (2, 4, 6, 32, 32, 3, 1, 1, (2.0, 3.0)),
    (2, 3, 4, 13, 7, 3, 1, 1, (2.0, 3.0)),
    (2, 2, 3, 11, 12, 5, 1, 2, (2.0,)),
    (2, 4, 6, 11, 11, 3, 2, 1, (2.0, 3.0)),
    (2, 3, 3, 8, 8, 3, 1, 0, (2.0,)),
    (2, 4, 5, 10, 9, 3, 2, 2, (3.0,)),
]


@pytest.mark.parametrize(("n", "c", "o", "h", "w", "k", "stride", "padding", "scales"), CASES)
def test_responses_equal_definition(n, c, o, h, w, k, stride, padding, scales):
    torch.manual_seed(0)
    x = torch.randn(n, c, h, w, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(o, c, k, k, dtype=torch.float64, requires_grad=True)
    got = _responses(x, weight, _bases(k, scales), stride, padding)
    want = _definition(x, weight, scales, stride, padding)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # backward: the same random cotangents through both
    cot = [torch.randn_like(t) for t in want]
    g_got = torch.autograd.grad(
        sum((a * u).sum() for a, u in zip(got, cot, strict=True)), (x, weight)
    )
    g_want = torch.autograd.grad(
        sum((b * u).sum() for b, u in zip(want, cot, strict=True)), (x, weight)
    )
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


def test_responses_gradcheck_with_an_unused_output():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    bases = _bases(3, (2.0, 3.0))
    # only the second pull is used: the other gradients arrive as None
    assert torch.autograd.gradcheck(lambda x, w: _responses(x, w, bases, 1, 1)[2], (x, w))


@pytest.mark.parametrize("alpha_shape", [(), (1, 5, 1, 1)])
def test_fused_relu_equals_definition_and_gradcheck(alpha_shape):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 8, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    alpha = (torch.rand(alpha_shape, dtype=torch.float64) + 0.5).requires_grad_(True)
    basis = bilinear_matrix(3, 7)
    got = fused.pushpull_relu(x, w, basis, alpha)
    push, pull = _definition(x, w, (2.0,), 1, 1)
    torch.testing.assert_close(got, F.relu(push) - alpha * F.relu(-pull), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda x, w, a: fused.pushpull_relu(x, w, basis, a), (x, w, alpha)
    )


@pytest.mark.parametrize(("c", "o"), [(16, 16), (12, 12), (24, 20), (40, 72)])
def test_float32_matches_float64(c, o):
    """float32 (8 or 16 lanes: full vectors and tails, several register tiles) against float64,
    responses and the fused ReLU with its gradients."""
    torch.manual_seed(3)
    x = torch.randn(4, c, 32, 32, dtype=torch.float64, requires_grad=True)
    w = (torch.randn(o, c, 3, 3, dtype=torch.float64) * 0.1).requires_grad_(True)
    bases = _bases(3, (2.0,))
    hi = _responses(x, w, bases, 1, 1)
    lo = _responses(x.float(), w.float(), bases, 1, 1)
    for a, b in zip(lo, hi, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)
    alpha = torch.tensor(0.8, dtype=torch.float64)
    cot = torch.randn(4, o, 32, 32, dtype=torch.float64)
    ys = [fused.pushpull_relu(t, u, bases[0], alpha) for t, u in ((x, w), (x.float(), w.float()))]
    torch.testing.assert_close(ys[1].double(), ys[0], rtol=1e-4, atol=1e-4)
    g_hi = torch.autograd.grad(ys[0], (x, w), cot)
    g_lo = torch.autograd.grad(ys[1], (x, w), cot.float())
    for a, b in zip(g_lo, g_hi, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=1e-3)


LAYERS = {
    "pp relu": lambda impl: PushPullConv2d(4, 6, pull_impl=impl),
    "pp relu trainable alpha": lambda impl: PushPullConv2d(
        4, 6, trainable_alpha=True, alpha=0.7, pull_impl=impl
    ),
    "pp relu bias stride 2": lambda impl: PushPullConv2d(4, 6, stride=2, bias=True, pull_impl=impl),
    "pp gelu": lambda impl: PushPullConv2d(4, 6, rectify="gelu", pull_impl=impl),
    "pp attn se": lambda impl: PushPullConv2d(
        4, 6, rectify="none", attention=SqueezeExcitation(6), pull_impl=impl
    ),
    "pp relu 20 channels": lambda impl: PushPullConv2d(4, 20, pull_impl=impl),
    "pp linear": lambda impl: PushPullConv2d(4, 6, rectify="none", alpha=0.8, pull_impl=impl),
    "pp attn se bias trainable alpha": lambda impl: PushPullConv2d(
        4,
        6,
        rectify="none",
        bias=True,
        trainable_alpha=True,
        attention=SqueezeExcitation(6),
        pull_impl=impl,
    ),
    "mspp": lambda impl: MultiScalePushPull(4, 6, pull_impl=impl),
    "mspp trainable alpha": lambda impl: MultiScalePushPull(
        4, 6, trainable_alpha=True, alpha=0.6, pull_impl=impl
    ),
    # 8 / 16 output channels fill float64 vectors: the kernel's own per-sample products
    "pp attn se 8 channels": lambda impl: PushPullConv2d(
        4, 8, rectify="none", attention=SqueezeExcitation(8), pull_impl=impl
    ),
    "mspp 16 channels trainable alpha": lambda impl: MultiScalePushPull(
        4, 16, trainable_alpha=True, alpha=0.6, fusion_bias=True, pull_impl=impl
    ),
    "mspp no attention": lambda impl: MultiScalePushPull(4, 6, attention="none", pull_impl=impl),
    "mspp simam": lambda impl: MultiScalePushPull(4, 6, attention="simam", pull_impl=impl),
    "mspp bias": lambda impl: MultiScalePushPull(4, 6, bias=True, fusion_bias=True, pull_impl=impl),
    "mspp stride 2": lambda impl: MultiScalePushPull(4, 6, stride=2, pull_impl=impl),
}


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layers_auto_equal_dense(name, layout):
    """The default (auto: fused on CPU) and the dense definition agree in outputs and in the
    gradients of the input and of every parameter, for either memory layout of the input."""
    torch.manual_seed(4)
    auto, dense = LAYERS[name]("auto").double(), LAYERS[name]("dense").double()
    dense.load_state_dict(auto.state_dict())
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    assert use_fused("auto", x)
    y_auto, y_dense = auto(x), dense(x)
    torch.testing.assert_close(y_auto, y_dense, rtol=1e-12, atol=1e-12)
    cot = torch.randn_like(y_dense)
    g_auto = torch.autograd.grad(y_auto, [x, *auto.parameters()], cot)
    g_dense = torch.autograd.grad(y_dense, [x, *dense.parameters()], cot)
    for a, b in zip(g_auto, g_dense, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


def test_mix_by_means_kernel_products_equal_bmm():
    """The kernel's per-sample products (channels filling vectors) against torch.bmm."""
    torch.manual_seed(5)
    r = torch.randn(3, 5, 7, 32, dtype=torch.float64)  # N x HW x C
    f = torch.randn(3, 16, 32, dtype=torch.float64)
    g = torch.randn(3, 35, 16, dtype=torch.float64)
    gz = torch.randn(3, 32, dtype=torch.float64)
    r = r.reshape(3, 35, 32)
    assert fused._lanes_fit(r, 16, 32)
    ops = torch.ops.robustcli_pushpull
    torch.testing.assert_close(ops.mix_forward(r, f), torch.bmm(r, f.transpose(1, 2)))
    torch.testing.assert_close(ops.mix_grad_weight(g, r), torch.bmm(g.transpose(1, 2), r))
    want = torch.bmm(g, f) + gz[:, None, :] / 35
    torch.testing.assert_close(ops.mix_grad_input(g, f, gz), want)
    torch.testing.assert_close(ops.mix_grad_input(g, f, gz.new_empty(0)), torch.bmm(g, f))


def test_channels_last_in_channels_last_out():
    layer = PushPullConv2d(4, 6)
    x = torch.randn(2, 4, 9, 9).contiguous(memory_format=torch.channels_last)
    y = layer(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, layer(x.contiguous()))


def test_auto_selection_by_dtype_and_autocast():
    x = torch.randn(1, 2, 5, 5)
    assert use_fused("auto", x) and use_fused("fused", x)
    assert not use_fused("dense", x) and not use_fused("separable", x)
    assert not use_fused("auto", x.half()) and not use_fused("auto", x.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert use_fused("auto", x) and use_fused("auto", x.bfloat16())


@pytest.mark.parametrize("rectify", ["relu", "none"])
def test_bf16_autocast_computes_push_pull_in_float32(rectify):
    """Under bf16 autocast the kernel computes in float32: the result of the float32 layer."""
    torch.manual_seed(6)
    x = torch.randn(2, 4, 9, 9).bfloat16().float()
    layers = [
        PushPullConv2d(4, 16, rectify=rectify, attention=None),
        MultiScalePushPull(4, 16),
    ]
    for layer in layers:
        want = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = layer(x.bfloat16())
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want)


def test_kernel_can_be_disabled_by_environment():
    code = (
        "import torch; from robustcli.layers import fused; "
        "print(fused.available(torch.zeros(1))); print(fused.kernel_status())"
    )
    env = dict(os.environ, ROBUSTCLI_PP_KERNEL="0")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] == "False"
    assert "disabled by ROBUSTCLI_PP_KERNEL=0" in out[1]
