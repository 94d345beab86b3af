"""Exact replicas of the ImageMagick, scikit-image and Pillow routines the recipes use.

They follow those libraries' integer and rounding rules bit for bit on batches
``(N, C, H, W)``; ``tests/test_corruptions.py`` compares them with the libraries themselves.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from robustcli.corruptions._core import cached, chunks

Tensor = torch.Tensor

# ----------------------------------------------------------------------------------------------
# ImageMagick MotionBlurImage
# ----------------------------------------------------------------------------------------------

MAGICK_SQ2PI = 2.50662827463100024161235523934010416269302368164062  # sqrt(2 pi)


def motion_blur_kernel(radius: float, sigma: float) -> np.ndarray:
    """ImageMagick's one-sided Gaussian line kernel, 2*ceil(radius)+1 taps ~ exp(-i^2/2s^2)."""
    width = int(2.0 * math.ceil(radius) + 1.0)
    sigma = sigma if abs(sigma) >= 1e-12 else 1e-12
    i = np.arange(width, dtype=np.float64)
    k = np.exp(-(i * i) / (2.0 * sigma * sigma)) / (MAGICK_SQ2PI * sigma)
    return k / k.sum()


def motion_blur_offsets(width: int, angles_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image tap offsets (ox, oy), each (N, width), as ImageMagick computes them."""
    rad = np.pi * np.asarray(angles_deg, dtype=np.float64) / 180.0
    px = width * np.sin(rad)
    py = width * np.cos(rad)
    hyp = np.hypot(px, py)
    i = np.arange(width, dtype=np.float64)
    ox = np.ceil((i[None] * py[:, None]) / hyp[:, None] - 0.5).astype(np.int64)
    oy = np.ceil((i[None] * px[:, None]) / hyp[:, None] - 0.5).astype(np.int64)
    return ox, oy


def motion_blur(
    x: Tensor, radius: float, sigma: float, angles_deg: Tensor, *, quantize: bool = False
) -> Tensor:
    """ImageMagick ``MotionBlurImage(radius, sigma, angle)`` with edge virtual pixels.

    ``out(x, y) = sum_i k[i] * in(x + ox_i, y + oy_i)``, accumulated in float64 tap by tap,
    each product rounded and then added (ImageMagick sums in double; so does the reference
    port, and the two sums are equal bit for bit): float32 sums land on the other side of a
    rounding boundary of ``magick_round`` on ~1e-5 of the values. Returns the unrounded float64
    sums in the input's scale, or with ``quantize`` ImageMagick's 8-bit result (``magick_round``,
    applied block by block while the sums are in cache). The images are sorted by angle, so for
    each tap the images sharing its offset form a few runs, each blurred with one shifted slice
    of an edge-padded tensor.
    """
    n, c, h, w = x.shape
    kernel = motion_blur_kernel(radius, sigma)
    width = len(kernel)
    angles = angles_deg.detach().cpu().numpy()
    order = np.argsort(angles, kind="stable")
    ox, oy = motion_blur_offsets(width, angles[order])
    left, right = max(0, -int(ox.min())), max(0, int(ox.max()))
    top, bottom = max(0, -int(oy.min())), max(0, int(oy.max()))
    order_t = torch.from_numpy(order).to(x.device)
    xs_all = x.index_select(0, order_t)
    dtype = torch.uint8 if quantize else torch.float64
    out = torch.empty((n, c, h, w), dtype=dtype, device=x.device)
    # on CPU, blocks of 16 images keep the float64 sums in cache (1.5x faster than one block)
    for part in chunks(n, x.device, size=16):
        p0 = part.start
        xs = xs_all[part].to(torch.float64)
        xp = F.pad(xs, (left, right, top, bottom), mode="replicate")
        ys = torch.mul(xs, float(kernel[0]))  # tap 0 has offset (0, 0)
        # k * pixel into a buffer, then added: ``add_(alpha=k)`` would fuse the two (one rounding)
        prod = torch.empty_like(ys)
        for i in range(1, width):
            oxi, oyi = ox[part, i], oy[part, i]
            change = np.flatnonzero((np.diff(oxi) != 0) | (np.diff(oyi) != 0)) + 1
            bounds = [0, *change.tolist(), part.stop - p0]
            for a, b in zip(bounds[:-1], bounds[1:], strict=True):
                dx, dy = int(oxi[a]) + left, int(oyi[a]) + top
                torch.mul(xp[a:b, :, dy : dy + h, dx : dx + w], float(kernel[i]), out=prod[a:b])
            ys.add_(prod)
        out[order_t[part]] = magick_round(ys) if quantize else ys
    return out


def magick_round(y: Tensor) -> Tensor:
    """ImageMagick 6 (Q16) writing a blurred 8-bit value to an 8-bit PNG: the sum is rounded to
    16 bits (``q = round(257 v)``), and the PNG writer keeps ``floor(q / 257)``. Measured on
    ImageMagick 6.9.11 for every pixel of the test images."""
    q = y.mul_(257).add_(0.5).floor_().clamp_(0, 65535)
    return q.div_(257).to(torch.uint8)  # q >= 0: truncating is the floor


# ----------------------------------------------------------------------------------------------
# scikit-image rgb2hsv / hsv2rgb, operation for operation (float64)
# ----------------------------------------------------------------------------------------------


def rgb_to_hsv(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``skimage.color.rgb2hsv`` on (N, 3, H, W) float64; returns the h, s, v planes.

    Bit for bit: skimage computes ``(g - b) / d``, ``2 + (b - r) / d`` or ``4 + (r - g) / d``
    (the last channel equal to the max wins); adding 0.0 in the red case changes nothing.
    """
    r, g, b = x.unbind(1)
    v = torch.maximum(torch.maximum(r, g), b)
    delta = v - torch.minimum(torch.minimum(r, g), b)
    flat = delta == 0.0
    safe = torch.where(flat, 1.0, delta)
    s = torch.where(flat, 0.0, delta / torch.where(flat, 1.0, v))
    blue, green = b == v, g == v
    num = torch.where(blue, r - g, torch.where(green, b - r, g - b))
    offset = torch.where(blue, 4.0, torch.where(green, 2.0, torch.zeros_like(v)))
    h = torch.remainder(offset.add_(num.div_(safe)).div_(6.0), 1.0)
    return h.masked_fill_(flat, 0.0), s, v


def hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """``skimage.color.hsv2rgb`` from float64 planes; returns (N, 3, H, W). By sector
    ``floor(6h) % 6`` the output is (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q)."""
    h6 = h * 6
    hi = torch.floor(h6)
    f = h6 - hi
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    sector = torch.remainder(hi, 6)
    is_ = [sector == k for k in range(6)]
    red = torch.where(is_[0] | is_[5], v, torch.where(is_[1], q, torch.where(is_[4], t, p)))
    green = torch.where(is_[1] | is_[2], v, torch.where(is_[0], t, torch.where(is_[3], q, p)))
    blue = torch.where(is_[3] | is_[4], v, torch.where(is_[2], t, torch.where(is_[5], q, p)))
    return torch.stack((red, green, blue), dim=1)


# ----------------------------------------------------------------------------------------------
# Pillow's BOX resampling (8-bit fixed point), exactly
# ----------------------------------------------------------------------------------------------

_PIL_PRECISION_BITS = 32 - 8 - 2


@functools.cache
def pil_box_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Fixed-point (out, in) coefficient matrix of Pillow's BOX filter (``precompute_coeffs``
    followed by ``normalize_coeffs_8bpc``)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    ss = 1.0 / filterscale
    out = np.zeros((out_size, in_size), dtype=np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        ws = []
        for x in range(xmax):
            t = (x + xmin - center + 0.5) * ss
            ws.append(1.0 if -0.5 < t <= 0.5 else 0.0)
        total = sum(ws)
        for x, wgt in enumerate(ws):
            wgt = wgt / total if total != 0.0 else 0.0
            fixed = wgt * (1 << _PIL_PRECISION_BITS)
            out[xx, xmin + x] = int(-0.5 + fixed) if wgt < 0 else int(0.5 + fixed)
    return out


@functools.cache
def _pil_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The BOX matrix as (out, taps) source indices and fixed-point weights (0-padded)."""
    k = pil_box_matrix(in_size, out_size)
    taps = max(1, int((k != 0).sum(1).max()))
    idx = np.zeros((out_size, taps), dtype=np.int64)
    wts = np.zeros((out_size, taps), dtype=np.int64)
    for o in range(out_size):
        nz = np.flatnonzero(k[o])
        idx[o, : len(nz)] = nz
        wts[o, : len(nz)] = k[o, nz]
    return idx, wts


def _pil_pass(x: Tensor, dim: int, in_size: int, out_size: int) -> Tensor:
    """One 8-bit pass along ``dim``: clip8((sum_t k_t * x[idx_t] + 2**21) >> 22), in int32."""
    idx_np, wts_np = _pil_taps(in_size, out_size)
    idx = cached(("piltaps-idx", in_size, out_size), lambda: idx_np, x.device)
    if (wts_np.shape[1] == 1) and (wts_np == 1 << _PIL_PRECISION_BITS).all():
        return x.index_select(dim, idx[:, 0])  # a pure copy (upsampling by BOX)
    wts = cached(("piltaps-w", in_size, out_size), lambda: wts_np, x.device, torch.int32)
    shape = [1] * x.ndim
    shape[dim] = out_size
    acc = torch.full((), 1 << (_PIL_PRECISION_BITS - 1), dtype=torch.int32, device=x.device)
    for t in range(idx.shape[1]):
        acc = acc + x.index_select(dim, idx[:, t]).to(torch.int32) * wts[:, t].view(shape)
    return (acc >> _PIL_PRECISION_BITS).clamp_(0, 255).to(torch.uint8)


def pil_resize_box(x: Tensor, out_h: int, out_w: int) -> Tensor:
    """``PIL.Image.resize((out_w, out_h), Image.BOX)`` of uint8 (N, C, H, W) images, exactly:
    horizontal pass, 8-bit intermediate, vertical pass (a pass is skipped when its size stays)."""
    h, w = x.shape[-2:]
    y = x
    if out_w != w:
        y = _pil_pass(y, y.ndim - 1, w, out_w)
    if out_h != h:
        y = _pil_pass(y, y.ndim - 2, h, out_h)
    return y
