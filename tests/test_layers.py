"""Closed-form checks of the push-pull, attention and multi-scale layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robustcli.layers.attention import SimAM, SqueezeExcitation
from robustcli.layers.multiscale import MultiScalePushPull
from robustcli.layers.pushpull import (
    PullPrefilter,
    PushPullConv2d,
    bilinear_matrix,
    pull_kernel,
    pull_kernel_size,
)

torch.manual_seed(0)


@pytest.mark.parametrize(
    ("k", "h", "size"), [(3, 2, 7), (3, 3, 9), (3, 2.5, 7), (5, 2, 11), (3, 1.5, 5), (2, 2, 5)]
)
def test_pull_kernel_size(k, h, size):
    assert pull_kernel_size(k, h) == size


def test_pull_kernel_is_negated_bilinear_resize_by_hand():
    # A 3x3 kernel resized to 7x7 with align_corners=True samples it at 0, 1/3, ..., 2.
    w = torch.arange(9, dtype=torch.float64).reshape(1, 1, 3, 3)
    got = pull_kernel(w, 2.0)[0, 0]
    pos = torch.arange(7, dtype=torch.float64) / 3
    lo = pos.floor().clamp(max=1).long()
    f = pos - lo
    expected = torch.empty(7, 7, dtype=torch.float64)
    for i in range(7):
        for j in range(7):
            a, b, fa, fb = lo[i], lo[j], f[i], f[j]
            expected[i, j] = (
                (1 - fa) * (1 - fb) * w[0, 0, a, b]
                + (1 - fa) * fb * w[0, 0, a, b + 1]
                + fa * (1 - fb) * w[0, 0, a + 1, b]
                + fa * fb * w[0, 0, a + 1, b + 1]
            )
    torch.testing.assert_close(got, -expected)
    # corners of the pull kernel are the negated corners of the push kernel
    assert got[0, 0] == -w[0, 0, 0, 0] and got[-1, -1] == -w[0, 0, -1, -1]


@pytest.mark.parametrize(("k", "s"), [(3, 7), (3, 9), (5, 11)])
def test_bilinear_matrix_matches_interpolate(k, s):
    w = torch.randn(4, 2, k, k, dtype=torch.float64)
    a = bilinear_matrix(k, s)
    sep = torch.einsum("ia,ocab,jb->ocij", a, w, a)
    ref = F.interpolate(w, size=(s, s), mode="bilinear", align_corners=True)
    torch.testing.assert_close(sep, ref, rtol=1e-6, atol=1e-6)


def test_pull_kernel_recomputed_every_forward():
    layer = PushPullConv2d(2, 3, rectify="none", alpha=1.0)
    x = torch.randn(1, 2, 9, 9)
    before = layer(x)
    with torch.no_grad():
        layer.push.weight.mul_(2)
    torch.testing.assert_close(layer(x), 2 * before)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("scale", [2.0, 3.0])
def test_separable_pull_equals_definition(stride, scale):
    x = torch.randn(2, 4, 15, 15, dtype=torch.float64)
    dense = PushPullConv2d(4, 5, stride=stride, scale=scale, pull_impl="dense").double()
    sep = PushPullConv2d(4, 5, stride=stride, scale=scale, pull_impl="separable").double()
    sep.load_state_dict(dense.state_dict())
    torch.testing.assert_close(sep.pull_response(x), dense.pull_response(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sep(x), dense(x), rtol=1e-6, atol=1e-6)


def test_prefilter_channel_layout():
    # Output channel c*9 + a*3 + b is X_c filtered by A[:, a] A[:, b]^T, exact in float64 (filters
    # rounded to float32, as the buffers are, miss by ~1e-5 at this input scale and fail here).
    pf = PullPrefilter(2, 3, 2.0, 1, 1).double()
    x = 100 * torch.randn(
        1, 2, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    a = bilinear_matrix(3, 7)
    z = pf(x)
    for c, ia, ib in [(0, 0, 0), (1, 2, 1), (1, 1, 2)]:
        f = torch.outer(a[:, ia], a[:, ib])[None, None]
        ref = F.conv2d(x[:, c : c + 1], f, padding=3)
        torch.testing.assert_close(z[:, c * 9 + ia * 3 + ib : c * 9 + ia * 3 + ib + 1], ref)


def test_rectified_layer_matches_definition():
    layer = PushPullConv2d(3, 4, rectify="relu", alpha=0.7).double()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    w = layer.push.weight
    push = F.conv2d(x, w, padding=1)
    pull = F.conv2d(x, pull_kernel(w, 2.0), padding=3)
    torch.testing.assert_close(layer(x), F.relu(push) - 0.7 * F.relu(pull))


@pytest.mark.parametrize("impl", ["dense", "separable"])
def test_unrectified_equals_single_conv_with_tied_kernel(impl):
    # X*K - alpha*X*(-up(K)) = X*(pad(K) + alpha*up(K)): one linear 7x7 convolution.
    alpha = 0.6
    layer = PushPullConv2d(3, 4, rectify="none", alpha=alpha, pull_impl=impl).double()
    x = torch.randn(2, 3, 11, 11, dtype=torch.float64)
    w = layer.push.weight
    up = F.interpolate(w, size=(7, 7), mode="bilinear", align_corners=True)
    kernel = F.pad(w, (2, 2, 2, 2)) + alpha * up
    torch.testing.assert_close(layer(x), F.conv2d(x, kernel, padding=3), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", ["dense", "separable"])
def test_gradient_reaches_push_weights_through_push_and_pull(impl):
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    layer = PushPullConv2d(3, 2, rectify="none", alpha=1.0, pull_impl=impl).double()
    layer(x).sum().backward()
    total = layer.push.weight.grad.clone()
    # the push path alone
    layer.zero_grad()
    F.conv2d(x, layer.push.weight, padding=1).sum().backward()
    push_only = layer.push.weight.grad.clone()
    # the pull path alone
    layer.zero_grad()
    (-layer.pull_response(x)).sum().backward()
    pull_only = layer.push.weight.grad.clone()
    assert push_only.abs().sum() > 0 and pull_only.abs().sum() > 0
    assert not torch.allclose(total, push_only)
    torch.testing.assert_close(total, push_only + pull_only)


def test_trainable_alpha_is_kept_nonnegative():
    layer = PushPullConv2d(2, 3, rectify="relu", alpha=0.5, trainable_alpha=True)
    assert layer.alpha.shape == (1, 3, 1, 1)
    with torch.no_grad():
        layer.alpha.fill_(-1.0)
    x = torch.randn(1, 2, 8, 8)
    torch.testing.assert_close(layer(x), F.relu(layer.push(x)))  # alpha clamped to 0


def test_squeeze_excitation_closed_form_and_parameter_count():
    se = SqueezeExcitation(16, reduction=4).double()
    assert sum(p.numel() for p in se.parameters()) == 148
    x = torch.randn(2, 16, 5, 5, dtype=torch.float64)
    z = x.mean(dim=(2, 3))
    w = torch.sigmoid(se.fc2(torch.relu(se.fc1(z))))
    torch.testing.assert_close(se(x), x * w[:, :, None, None])


def test_simam_closed_form():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    n = 4 * 5 - 1
    mu = x.mean(dim=(2, 3), keepdim=True)
    var = ((x - mu) ** 2).sum(dim=(2, 3), keepdim=True) / n
    e_inv = (x - mu) ** 2 / (4 * (var + 1e-4)) + 0.5
    torch.testing.assert_close(SimAM()(x), x * torch.sigmoid(e_inv))
    assert sum(p.numel() for p in SimAM().parameters()) == 0


def test_attention_applies_to_push_response_only():
    se = SqueezeExcitation(4)
    layer = PushPullConv2d(3, 4, rectify="none", alpha=0.5, attention=se).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    push = layer.push(x)
    expected = se.double()(push) - 0.5 * layer.pull_response(x)
    torch.testing.assert_close(layer(x), expected)


def test_multiscale_equations_3_to_5():
    m = MultiScalePushPull(3, 4, scales=(2, 3), alpha=0.8, attention="se").double()
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    w = m.push.weight
    u_p = F.conv2d(x, w, padding=1)
    v = [u_p - 0.8 * F.conv2d(x, pull_kernel(w, h), padding=s) for h, s in ((2, 3), (3, 4))]
    concat = torch.cat([u_p, *v], dim=1)
    expected = m.fuse(m.attention(concat))
    torch.testing.assert_close(m(x), expected)
    # one push kernel: shared by every scale, stored once
    assert sum(1 for k in m.state_dict() if k.endswith("weight") and "push" in k) == 1
    assert m.fuse.in_channels == 12 and m.fuse.out_channels == 4


# ---- multiply-add counts (robustcli/layers/cost.py): checked against torch's FLOP counter ----


def _counted_forward_flops(module: torch.nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x)
    return counter.get_total_flops()


@pytest.mark.parametrize(("k", "h"), [(3, 2), (3, 3), (5, 2), (3, 2.5)])
def test_pull_taps_are_the_nonzeros_of_linear_interpolation(k, h):
    from robustcli.layers.cost import pull_taps

    s = pull_kernel_size(k, h)
    # a row j interpolates at j*(k-1)/(s-1): one tap where that is an integer, else two
    on_grid = sum(1 for j in range(s) if (j * (k - 1)) % (s - 1) == 0)
    assert pull_taps(bilinear_matrix(k, s)) == 2 * s - on_grid


def test_layer_costs_match_torch_flop_counter():
    """``conv`` and ``definition`` (forward = a third of forward+backward) against
    FlopCounterMode on the plain conv and on the dense layers (2 FLOPs per multiply-add); the
    fused floor lies between the two."""
    from robustcli.layers.cost import layer_cost

    x = torch.randn(1, 6, 8, 8)
    pixels = 8 * 8
    conv = torch.nn.Conv2d(6, 5, 3, padding=1, bias=False)
    assert layer_cost(conv).conv // 3 * 2 * pixels == _counted_forward_flops(conv, x)
    for layer in (
        PushPullConv2d(6, 5, pull_impl="dense"),
        PushPullConv2d(6, 5, scale=3, rectify="gelu", pull_impl="dense"),
        PushPullConv2d(6, 5, rectify="none", pull_impl="dense"),  # one folded 7x7 conv
    ):
        cost = layer_cost(layer)
        assert cost.definition // 3 * 2 * pixels == _counted_forward_flops(layer, x)
        assert cost.conv == layer_cost(conv).conv
        assert 1 < cost.floor_ratio < cost.definition_ratio
    # stride 2: the shared GEMM runs at every input pixel, 4 output pixels' worth
    strided = layer_cost(PushPullConv2d(6, 5, stride=2))
    assert strided.fused - layer_cost(PushPullConv2d(6, 5)).fused == 3 * strided.conv
    # MSPP without attention: push, two dense pulls and the 1x1 fusion are all the FLOPs
    mspp = MultiScalePushPull(6, 5, attention="none", pull_impl="dense")
    cost = layer_cost(mspp)
    assert cost.definition // 3 * 2 * pixels == _counted_forward_flops(mspp, x)
    assert layer_cost(MultiScalePushPull(6, 5)).fused > cost.fused  # SE reads the means
    assert cost.floor_ratio > layer_cost(PushPullConv2d(6, 5)).floor_ratio


def test_model_cost_counts_every_conv_and_linear_layer():
    from robustcli.layers.cost import model_cost
    from robustcli.registry import create_model

    plain, pp = create_model("resnet20").train(), create_model("pp-resnet20").eval()
    c_plain, c_pp = model_cost(plain, (3, 32, 32)), model_cost(pp, (3, 32, 32))
    assert plain.training and not pp.training  # the count leaves the mode as it was
    assert c_plain.conv // 3 * 2 == _counted_forward_flops(plain.eval(), torch.randn(1, 3, 32, 32))
    # push-pull replaced by plain convs: the same network as resnet20
    assert c_pp.conv == c_plain.conv == c_plain.fused
    assert c_plain.conv < c_pp.fused < c_pp.definition
