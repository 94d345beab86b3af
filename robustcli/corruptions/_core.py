"""Batched tensor building blocks shared by the corruptions: random numbers, the recipe's
conversions, the constant-tensor cache and the linear filters (Gaussian, disk, zoom).

Every function works on whole batches ``(N, C, H, W)`` on the device of its input. Linear
filters with fixed coefficients are applied as small matrices (``A @ x @ B.T``, or one sparse
pixel operator for zoom blur) that fold the border rule of the library the recipe used into the
matrix, so the result is the recipe's up to float rounding. Operators are built once with
NumPy/SciPy and cached per size, device and dtype.
"""

from __future__ import annotations

import functools
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


def _draw(
    fn: Callable[..., Tensor],
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """``fn`` (``torch.rand`` / ``torch.randn``) drawn on the generator's device, then moved."""
    dev = _gen_device(generator, device)
    return fn(shape, generator=generator, device=dev, dtype=dtype).to(device)


def rand(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Uniform [0, 1)."""
    return _draw(torch.rand, shape, generator, device, dtype)


def randn(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal."""
    return _draw(torch.randn, shape, generator, device, dtype)


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
