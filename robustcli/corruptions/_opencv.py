"""Exact replicas of the OpenCV routines used by the spatter corruption, on (N, H, W) batches.

They follow OpenCV's integer and rounding rules bit for bit; ``tests/test_corruptions.py``
compares them with ``cv2`` itself.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from robustcli.corruptions._core import pad2d

Tensor = torch.Tensor


def _windows3(x: Tensor) -> list[list[Tensor]]:
    """The 3x3 neighbourhood views of a tensor padded by 1: ``win[dy][dx]``."""
    h, w = x.shape[-2] - 2, x.shape[-1] - 2
    return [[x[..., dy : dy + h, dx : dx + w] for dx in range(3)] for dy in range(3)]


def cv_canny(img: Tensor, low: float, high: float) -> Tensor:
    """``cv2.Canny(img, low, high)`` (aperture 3, L1 gradient) of uint8 (N, H, W); bool edges.

    Sobel with BORDER_REPLICATE, OpenCV's integer tangent test for the gradient direction and
    its strict / non-strict neighbour comparisons, magnitudes > floor(low) as candidates and >
    floor(high) as seeds, then hysteresis through 8-connected candidates.
    """
    p = pad2d(img.to(torch.int32), 1, "nearest")
    h, w = img.shape[-2:]
    diff_x = p[..., :, 2:] - p[..., :, :w]  # (N, H + 2, W)
    dx = diff_x[..., :h, :] + 2 * diff_x[..., 1 : h + 1, :] + diff_x[..., 2:, :]
    smooth_x = p[..., :, :w] + 2 * p[..., :, 1 : w + 1] + p[..., :, 2:]
    dy = smooth_x[..., 2:, :] - smooth_x[..., :h, :]
    ax, ay = dx.abs(), dy.abs()
    mag = ax + ay
    m = _windows3(F.pad(mag, (1, 1, 1, 1)))  # magnitude outside the image is 0
    centre = m[1][1]
    tg22x = ax * int(0.4142135623730950488016887242097 * (1 << 15) + 0.5)
    ay = ay << 15
    horizontal = ay < tg22x
    vertical = ay > tg22x + (ax << 16)
    same_sign = (dx ^ dy) >= 0  # OpenCV's s = +1: compare with up-left and down-right
    keep_d = torch.where(
        same_sign,
        (centre > m[0][0]) & (centre > m[2][2]),
        (centre > m[0][2]) & (centre > m[2][0]),
    )
    keep = torch.where(
        horizontal,
        (centre > m[1][0]) & (centre >= m[1][2]),
        torch.where(vertical, (centre > m[0][1]) & (centre >= m[2][1]), keep_d),
    )
    candidate = keep & (mag > int(math.floor(low)))
    edges = candidate & (mag > int(math.floor(high)))
    # hysteresis: grow strong edges through 8-connected candidates until nothing changes
    while True:
        grown = _dilate3(edges) & candidate
        if torch.equal(grown, edges):
            return edges
        edges = grown


def _dilate3(b: Tensor) -> Tensor:
    """3x3 binary dilation of bool (N, H, W), zero outside."""
    p = F.pad(b.to(torch.uint8), (1, 1, 1, 1))
    h, w = b.shape[-2:]
    rows = torch.maximum(torch.maximum(p[..., :, :w], p[..., :, 1 : w + 1]), p[..., :, 2:])
    out = torch.maximum(torch.maximum(rows[..., :h, :], rows[..., 1 : h + 1, :]), rows[..., 2:, :])
    return out.bool()


_DIST_SHIFT = 16


def cv_distance_transform_l2_5(zero_mask: Tensor, cap: float = 20.0) -> Tensor:
    """``min(cv2.distanceTransform(src, cv2.DIST_L2, 5), cap)`` (float32) where ``zero_mask``
    marks the zero pixels of ``src``: OpenCV's own two-pass 5x5 chamfer in 16-bit fixed point
    (diagonal 91750 / 65536 = 1.3999939), with the in-row recurrence of each pass solved by a
    running minimum. OpenCV builds with Intel IPP (4 and 5 alike) take IPP's branch instead,
    with float weights (1.4); ``cv2.ipp.setUseIPP(False)`` selects the one replicated here.

    OpenCV starts from INT_MAX; any start above ``cap`` gives the same capped result, so a
    smaller one keeps the sums in int32.
    """
    n, h, w = zero_mask.shape
    dev = zero_mask.device
    hv = int(round(1.0 * (1 << _DIST_SHIFT)))
    diag = int(round(1.4 * (1 << _DIST_SHIFT)))
    long_ = int(round(2.1969 * (1 << _DIST_SHIFT)))
    b = 2
    inf = int(cap * (1 << _DIST_SHIFT)) + 1 + 2 * (h + w) * long_  # > cap after any path
    assert inf + 4 * (h + w) * long_ < 2**31
    # rows first, so that each row of the whole batch is one contiguous block
    tmp = torch.full((h + 2 * b, n, w + 2 * b), inf, dtype=torch.int32, device=dev)
    cols = torch.arange(w, device=dev, dtype=torch.int32) * hv
    zero = zero_mask.to(torch.bool).transpose(0, 1).contiguous()  # (H, N, W)

    def mins(*terms: Tensor) -> Tensor:
        out = terms[0]
        for t in terms[1:]:
            out = torch.minimum(out, t)
        return out

    for i in range(h):
        r = i + b
        up2, up1 = tmp[r - 2], tmp[r - 1]
        a = mins(
            up2[:, b - 1 : b - 1 + w] + long_,
            up2[:, b + 1 : b + 1 + w] + long_,
            up1[:, b - 2 : b - 2 + w] + long_,
            up1[:, b - 1 : b - 1 + w] + diag,
            up1[:, b : b + w] + hv,
            up1[:, b + 1 : b + 1 + w] + diag,
            up1[:, b + 2 : b + 2 + w] + long_,
        )
        a.masked_fill_(zero[i], 0)
        # t[j] = min(a[j], t[j-1] + hv) = hv*j + cummin_k(a[k] - hv*k); left border is "inf"
        tmp[r, :, b : b + w] = torch.cummin(a - cols, dim=1).values + cols
    out = torch.empty((h, n, w), dtype=torch.float32, device=dev)
    for i in range(h - 1, -1, -1):
        r = i + b
        dn2, dn1 = tmp[r + 2], tmp[r + 1]
        a = mins(
            tmp[r, :, b : b + w],
            dn2[:, b + 1 : b + 1 + w] + long_,
            dn2[:, b - 1 : b - 1 + w] + long_,
            dn1[:, b + 2 : b + 2 + w] + long_,
            dn1[:, b + 1 : b + 1 + w] + diag,
            dn1[:, b : b + w] + hv,
            dn1[:, b - 1 : b - 1 + w] + diag,
            dn1[:, b - 2 : b - 2 + w] + long_,
        )
        # t[j] = min(a[j], t[j+1] + hv): suffix running minimum; right border is "inf"
        row = torch.cummin((a + cols).flip(1), dim=1).values.flip(1) - cols
        tmp[r, :, b : b + w] = row
        out[i] = row.to(torch.float32) * (1.0 / (1 << _DIST_SHIFT))
    return out.clamp_max_(cap).transpose(0, 1).contiguous()


def _sum3x3(p: Tensor) -> Tensor:
    """Sums over every 3x3 window of a tensor padded by 1 (separable: rows, then columns)."""
    h, w = p.shape[-2] - 2, p.shape[-1] - 2
    rows = p[..., :, :w] + p[..., :, 1 : w + 1] + p[..., :, 2:]
    return rows[..., :h, :] + rows[..., 1 : h + 1, :] + rows[..., 2:, :]


def cv_box3(x: Tensor) -> Tensor:
    """``cv2.blur(x, (3, 3))`` (BORDER_REFLECT_101) of float32 or uint8 (N, H, W).

    uint8: ``round(sum / 9)``; float32: ``float(sum * (1. / 9))`` with the sum taken in double,
    as OpenCV's box filter does (the sums here are exact: the distance values are multiples of
    2**-16 below 21, so float32 holds their sums exactly).
    """
    if x.dtype == torch.uint8:
        s = _sum3x3(pad2d(x.to(torch.int32), 1, "mirror"))
        return torch.div(s + 4, 9, rounding_mode="floor").to(torch.uint8)
    s = _sum3x3(pad2d(x, 1, "mirror"))
    return (s.double() * (1.0 / 9)).to(torch.float32)


def cv_filter2d_u8(x: Tensor, kernel: np.ndarray) -> Tensor:
    """``cv2.filter2D(x, cv2.CV_8U, kernel)`` for an integer 3x3 kernel (BORDER_REFLECT_101)."""
    win = _windows3(pad2d(x.to(torch.int32), 1, "mirror"))
    s = sum(int(kernel[dy][dx]) * win[dy][dx] for dy in range(3) for dx in range(3))
    return s.clamp_(0, 255).to(torch.uint8)


def cv_equalize_hist(x: Tensor) -> Tensor:
    """``cv2.equalizeHist`` of uint8 (N, H, W), per image: ``lut[i] = cvRound(sum * scale)``
    with ``scale = 255.f / (total - first_count)`` divided in float32 and ``cvRound`` rounding
    exact ties to even (as ``torch.round``; checked with cv2)."""
    n, h, w = x.shape
    total = h * w
    flat = x.reshape(n, total).long()
    hist = torch.zeros((n, 256), dtype=torch.int64, device=x.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat))
    nonzero = hist > 0
    first = nonzero.to(torch.int64).argmax(1, keepdim=True)  # first non-empty bin
    first_count = hist.gather(1, first)
    csum = hist.cumsum(1)
    partial = csum - csum.gather(1, first)  # sum of bins (first, i]
    denom = (total - first_count).clamp(min=1).to(torch.float32)
    # a tensor numerator: ``255.0 / t`` is computed as ``t.reciprocal() * 255``, off by one ulp
    # for ~20% of denominators, which moves products near .5 to the other side
    scale = torch.full_like(denom, 255.0) / denom
    lut = torch.round(partial.to(torch.float32) * scale).clamp_(0, 255)
    bins = torch.arange(256, device=x.device)
    lut = torch.where(bins[None] <= first, 0.0, lut).to(torch.uint8)
    out = lut.gather(1, flat).reshape(n, h, w)
    single = (first_count == total).reshape(n, 1, 1)  # one grey level: OpenCV keeps it
    return torch.where(single, x, out)
