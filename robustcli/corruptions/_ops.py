"""Batched tensor building blocks shared by the corruptions.

Every function works on whole batches ``(N, C, H, W)`` on the device of its input. Linear
filters with fixed coefficients (Gaussian, disk, zoom) are applied as small matrices
(``A @ x @ B.T``, or one sparse pixel operator for zoom blur) that fold the border rule of the
library the recipe used into the matrix, so the result is the recipe's up to float rounding.
Operators are built once with NumPy/SciPy and cached per size, device and dtype.

The replicas of OpenCV, Pillow and ImageMagick routines follow those libraries' integer and
rounding rules; ``tests/test_corruptions.py`` compares them with the libraries themselves.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Hashable

import numpy as np
import torch
import torch.nn.functional as F

Tensor = torch.Tensor

# ----------------------------------------------------------------------------------------------
# random numbers (drawn on the generator's device, then moved to the images' device)
# ----------------------------------------------------------------------------------------------


def _gen_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def rand(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Uniform [0, 1)."""
    dev = _gen_device(generator, device)
    return torch.rand(shape, generator=generator, device=dev, dtype=dtype).to(device)


def randn(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    dev = _gen_device(generator, device)
    return torch.randn(shape, generator=generator, device=dev, dtype=dtype).to(device)


def randint(
    low: int,
    high: int,
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device,
) -> Tensor:
    """Integers in [low, high), like ``np.random.randint``."""
    dev = _gen_device(generator, device)
    return torch.randint(low, high, shape, generator=generator, device=dev).to(device)


# ----------------------------------------------------------------------------------------------
# conversions with the recipe's semantics
# ----------------------------------------------------------------------------------------------


def unit(x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``np.array(img) / 255.`` (in ``dtype``)."""
    return x.to(dtype).div_(255)


def to_uint8(y: Tensor) -> Tensor:
    """``np.uint8(np.clip(y, 0, 1) * 255)``: clip, scale, truncate (no rounding). In place."""
    return y.clamp_(0, 1).mul_(255).to(torch.uint8)


def chunks(n: int, device: torch.device, size: int = 256) -> list[slice]:
    """Batch slices that keep float temporaries in cache on CPU (one slice on GPU)."""
    if device.type != "cpu":
        return [slice(0, n)]
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


# ----------------------------------------------------------------------------------------------
# cached constant tensors
# ----------------------------------------------------------------------------------------------

_TENSORS: dict[Hashable, Tensor] = {}


def cached(
    key: Hashable,
    build: Callable[[], np.ndarray | Tensor],
    device: torch.device,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """``build()`` as a tensor on ``device``, built once per (key, device, dtype)."""
    full = (key, str(device), dtype)
    t = _TENSORS.get(full)
    if t is None:
        value = build()
        t = torch.as_tensor(value) if not isinstance(value, Tensor) else value
        t = t.to(device=device, dtype=dtype) if dtype is not None else t.to(device)
        _TENSORS[full] = t
    return t


# ----------------------------------------------------------------------------------------------
# 1-D filter operators with SciPy / OpenCV border rules
# ----------------------------------------------------------------------------------------------


def border_index(j: np.ndarray, n: int, mode: str) -> np.ndarray:
    """Source index for (possibly out-of-range) indices ``j`` on an axis of length ``n``.

    ``nearest`` = SciPy 'nearest' / OpenCV BORDER_REPLICATE (aaa|abcd|ddd);
    ``reflect`` = SciPy 'reflect' / OpenCV BORDER_REFLECT (cba|abcd|dcb);
    ``mirror``  = SciPy 'mirror' / OpenCV BORDER_REFLECT_101 (dcb|abcd|cba).
    """
    j = np.asarray(j)
    if n == 1:
        return np.zeros_like(j)
    if mode == "nearest":
        return np.clip(j, 0, n - 1)
    if mode == "reflect":
        j = np.mod(j, 2 * n)
        return np.where(j < n, j, 2 * n - 1 - j)
    if mode == "mirror":
        period = 2 * n - 2
        j = np.mod(j, period)
        return np.where(j < n, j, period - j)
    raise ValueError(f"unknown border mode {mode!r}")


def filter_matrix(n: int, weights: np.ndarray, mode: str) -> np.ndarray:
    """(n, n) matrix of the correlation ``out[i] = sum_k w[k] in[i + k - r]`` with a border rule."""
    weights = np.asarray(weights, dtype=np.float64)
    r = len(weights) // 2
    out = np.zeros((n, n))
    rows = np.arange(n)
    for k, w in enumerate(weights):
        np.add.at(out, (rows, border_index(rows + k - r, n, mode)), w)
    return out


def gaussian_weights(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter1d`` weights (radius ``int(truncate * sigma + 0.5)``)."""
    radius = int(truncate * float(sigma) + 0.5)
    if sigma <= 1e-15 or radius == 0:
        return np.ones(1)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x**2)
    return phi / phi.sum()


def separable(x: Tensor, mh: Tensor, mw: Tensor) -> Tensor:
    """``mh @ x @ mw.T`` on the last two dimensions."""
    return torch.matmul(mh, torch.matmul(x, mw.T))


def pad2d(x: Tensor, pad: int, mode: str) -> Tensor:
    """Pad the last two dims of ``x`` by ``pad`` with a ``border_index`` rule."""
    h, w = x.shape[-2:]
    if pad == 0:
        return x
    if mode == "nearest" and x.ndim in (3, 4) and x.is_floating_point():
        return F.pad(x, (pad, pad, pad, pad), mode="replicate")
    if mode == "mirror" and x.ndim in (3, 4) and x.is_floating_point() and pad < min(h, w):
        return F.pad(x, (pad, pad, pad, pad), mode="reflect")
    if mode == "reflect" and pad <= min(h, w):
        x = torch.cat([x[..., :pad, :].flip(-2), x, x[..., h - pad :, :].flip(-2)], dim=-2)
        return torch.cat([x[..., :pad].flip(-1), x, x[..., w - pad :].flip(-1)], dim=-1)
    ih = torch.from_numpy(border_index(np.arange(-pad, h + pad), h, mode)).to(x.device)
    iw = torch.from_numpy(border_index(np.arange(-pad, w + pad), w, mode)).to(x.device)
    return x.index_select(-2, ih).index_select(-1, iw)


def _correlate_symmetric(xp: Tensor, weights: np.ndarray, dim: int, n: int) -> Tensor:
    """SciPy's ``correlate1d`` loop for a symmetric odd kernel on an already padded axis:
    ``out = x[i] * w[0] + sum_{j=r..1} (x[i-j] + x[i+j]) * w[j]`` (same rounding steps)."""
    r = len(weights) // 2
    out = xp.narrow(dim, r, n) * float(weights[r])
    for j in range(r, 0, -1):
        pair = xp.narrow(dim, r - j, n) + xp.narrow(dim, r + j, n)
        out.add_(pair.mul_(float(weights[r - j])))
    return out


def gaussian_filter(
    x: Tensor, sigma: float, mode: str = "nearest", truncate: float = 4.0, exact: bool = True
) -> Tensor:
    """``scipy.ndimage.gaussian_filter`` (skimage's ``gaussian``) over the last two dims.

    ``exact``: computed in float64 in SciPy's order (rows, then columns) and with its rounding
    steps, so float64 input gives SciPy's result bit for bit; float32 input is rounded to
    float32 after each pass, as SciPy stores each pass in the output dtype. (The input is padded
    once on both axes: padding one axis commutes with filtering the other.) Otherwise two
    matrix products in the input dtype (same result up to float rounding, faster for wide
    kernels). Returns the input dtype.
    """
    weights = gaussian_weights(sigma, truncate)
    if len(weights) == 1:
        return x.clone()
    if not exact:
        h, w = x.shape[-2:]
        key = ("gauss", float(sigma), mode, float(truncate))
        mh = cached((*key, h), lambda: filter_matrix(h, weights, mode), x.device, x.dtype)
        mw = cached((*key, w), lambda: filter_matrix(w, weights, mode), x.device, x.dtype)
        return separable(x, mh, mw)
    h, w = x.shape[-2:]
    r = len(weights) // 2
    xp = pad2d(x.double(), r, mode)
    y = _correlate_symmetric(xp, weights, xp.ndim - 2, h)
    if x.dtype != torch.float64:
        y = y.to(x.dtype).double()
    return _correlate_symmetric(y, weights, y.ndim - 1, w).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# zoom (scipy.ndimage.zoom, order 1) as matrices
# ----------------------------------------------------------------------------------------------


@functools.cache
def clipped_zoom_matrix(length: int, factor: float) -> np.ndarray:
    """(L, L) matrix of the recipe's ``clipped_zoom`` along one axis.

    Centre crop of ``ceil(L / factor)`` samples, ``scipy.ndimage.zoom(order=1)`` by ``factor``,
    centre trim back to ``L``. Built by zooming the basis vectors with SciPy itself, so SciPy's
    output size and coordinate mapping are reproduced exactly.
    """
    from scipy.ndimage import zoom

    ch = int(np.ceil(length / factor))
    top = (length - ch) // 2
    crop = np.eye(length)[top : top + ch]  # (ch, L): crop as a matrix
    zoomed = zoom(crop, (factor, 1), order=1)  # column j = zoom(crop(e_j))
    trim = (zoomed.shape[0] - length) // 2
    return np.ascontiguousarray(zoomed[trim : trim + length])


def zoom_separable(x: Tensor, factor: float) -> Tensor:
    """``clipped_zoom(x, factor)`` on the last two dims."""
    h, w = x.shape[-2:]
    mh = cached(("zoom", h, factor), lambda: clipped_zoom_matrix(h, factor), x.device, x.dtype)
    mw = cached(("zoom", w, factor), lambda: clipped_zoom_matrix(w, factor), x.device, x.dtype)
    return separable(x, mh, mw)


def zoom_blur_operator(h: int, w: int, factors: tuple[float, ...]):  # -> scipy.sparse.csr_array
    """Sparse (HW, HW) operator of ``(x + sum_z clipped_zoom(x, z)) / (len(factors) + 1)``."""
    import scipy.sparse as sp

    total = sp.identity(h * w, format="csr")
    for z in factors:
        a = sp.csr_array(clipped_zoom_matrix(h, z))
        b = sp.csr_array(clipped_zoom_matrix(w, z))
        total = total + sp.kron(a, b, format="csr")
    total = (total / (len(factors) + 1)).tocsr()
    total.eliminate_zeros()
    total.sort_indices()
    return total


def apply_pixel_operator(x: Tensor, key: Hashable, build: Callable) -> Tensor:
    """``out[n, c] = M @ x[n, c].flatten()`` for a sparse (HW, HW) operator built by ``build``."""
    n, c, h, w = x.shape

    def to_torch() -> Tensor:
        m = build()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            return torch.sparse_csr_tensor(
                torch.from_numpy(m.indptr.astype(np.int64)),
                torch.from_numpy(m.indices.astype(np.int64)),
                torch.from_numpy(m.data),
                size=m.shape,
            )

    op = cached(key, to_torch, x.device, x.dtype)
    cols = x.reshape(n * c, h * w).T.contiguous()  # (HW, NC): one column per channel image
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        y = torch.sparse.mm(op, cols)
    return y.T.reshape(n, c, h, w)


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


# ----------------------------------------------------------------------------------------------
# OpenCV routines used by the spatter corruption, on (N, H, W) batches, exactly
# ----------------------------------------------------------------------------------------------


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
