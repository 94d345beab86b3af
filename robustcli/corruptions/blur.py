"""Blur corruptions: defocus, glass, motion, zoom and Gaussian blur (make_cifar_c.py constants).

See ``noise.py`` for the ``<name>_draw`` / ``<name>`` convention.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from robustcli.corruptions import _ops

Tensor = torch.Tensor

GAUSSIAN_BLUR = (0.4, 0.6, 0.7, 0.8, 1.0)  # sigma
DEFOCUS_BLUR = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))  # (radius, alias)
GLASS_BLUR = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))
MOTION_BLUR = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))  # ImageMagick (radius, sigma)
ZOOM_BLUR = tuple(
    tuple(float(z) for z in np.arange(1, end, 0.01)) for end in (1.06, 1.11, 1.16, 1.21, 1.26)
)  # np.arange as in the recipe: 7, 12, 16, 21 and 26 zoom factors


def gaussian_blur(x: Tensor, c: float) -> Tensor:
    """``skimage.filters.gaussian(x / 255., sigma=c)`` per channel (mode 'nearest', truncate 4)."""
    return _ops.to_uint8(_ops.gaussian_filter(_ops.unit(x, torch.float64), c, mode="nearest"))


# ----------------------------------------------------------------------------------------------


@functools.cache
def defocus_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The recipe's ``disk``: an aliased disk on the 17x17 grid (-8..8), normalised, then
    ``cv2.GaussianBlur(ksize=(3, 3), sigmaX=alias_blur)``; float32 like the recipe."""
    import cv2

    grid = np.arange(-8, 8 + 1) if radius <= 8 else np.arange(-radius, radius + 1)
    ksize = (3, 3) if radius <= 8 else (5, 5)
    xx, yy = np.meshgrid(grid, grid)
    disk = np.array((xx**2 + yy**2) <= radius**2, dtype=np.float32)
    disk /= np.sum(disk)
    return cv2.GaussianBlur(disk, ksize=ksize, sigmaX=alias_blur)


@functools.cache
def _defocus_terms(radius: float, alias_blur: float) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The kernel as a short sum of separable (column, row) pairs (SVD of its non-zero block)."""
    k = defocus_kernel(radius, alias_blur).astype(np.float64)
    nz = np.nonzero(k)
    half = int(max(np.abs(nz[0] - k.shape[0] // 2).max(), np.abs(nz[1] - k.shape[1] // 2).max()))
    centre = k.shape[0] // 2
    block = k[centre - half : centre + half + 1, centre - half : centre + half + 1]
    u, s, vt = np.linalg.svd(block)
    keep = s > s[0] * 1e-12
    return tuple((u[:, i] * s[i], vt[i]) for i in np.nonzero(keep)[0])


def defocus_blur(x: Tensor, c: tuple[float, float]) -> Tensor:
    """``cv2.filter2D(x / 255., -1, disk(radius, alias))`` per channel (BORDER_REFLECT_101), in
    float64 like the recipe (the float32 kernel sums to slightly above 1, so flat regions keep
    their value only if the arithmetic is this precise)."""
    y = _ops.unit(x, torch.float64)
    h, w = x.shape[-2:]
    out = None
    for i, (col, row) in enumerate(_defocus_terms(*c)):
        key = ("defocus", c, i)
        mh = _ops.cached(
            (*key, "h", h), lambda col=col: _ops.filter_matrix(h, col, "mirror"), x.device, y.dtype
        )
        mw = _ops.cached(
            (*key, "w", w), lambda row=row: _ops.filter_matrix(w, row, "mirror"), x.device, y.dtype
        )
        term = _ops.separable(y, mh, mw)
        out = term if out is None else out.add_(term)
    return _ops.to_uint8(out)


# ----------------------------------------------------------------------------------------------


def glass_blur_draw(n, h, w, c, generator, device) -> dict[str, Tensor]:  # noqa: ANN001
    _, delta, iterations = c
    # one (dx, dy) = randint(-delta, delta) per visited pixel and iteration (drawn for all)
    offsets = _ops.randint(-delta, delta, (n, iterations, 2, h, w), generator, device)
    return {"offsets": offsets.to(torch.int8)}


def glass_blur(x: Tensor, c: tuple[float, int, int], offsets: Tensor) -> Tensor:
    """Gaussian blur, local pixel "swaps", Gaussian blur (the recipe's glass blur).

    The recipe's swap ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` runs on NumPy views, so it
    copies the neighbour into (h, w) and leaves (h', w') unchanged. With max_delta = 1 the
    neighbour (h + dy, w + dx), dx, dy in {-1, 0}, is visited later in the reverse raster scan,
    so every copy reads the value from the start of the pass: one pass is a single gather.
    """
    sigma, delta, iterations = c
    if delta != 1:  # the recipe only uses 1; larger deltas would read already-updated pixels
        raise ValueError("glass_blur is implemented for max_delta = 1 (the recipe's value)")
    n, ch, h, w = x.shape
    if len(_ops.gaussian_weights(sigma)) > 1:
        y = _ops.gaussian_filter(_ops.unit(x, torch.float64), sigma).mul_(255).to(torch.uint8)
    else:  # a one-tap Gaussian is the identity, and x / 255. * 255 == x exactly
        y = x
    rows = torch.arange(h, device=x.device).view(h, 1)
    cols = torch.arange(w, device=x.device).view(1, w)
    visited = (rows > delta) & (rows <= h - delta) & (cols > delta) & (cols <= w - delta)
    base = rows * w + cols
    for it in range(iterations):
        dx = offsets[:, it, 0].long()
        dy = offsets[:, it, 1].long()
        src = torch.where(visited, base + dy * w + dx, base)  # (N, H, W)
        y = y.reshape(n, ch, h * w).gather(2, src.reshape(n, 1, h * w).expand(n, ch, h * w))
        y = y.reshape(n, ch, h, w)
    return _ops.to_uint8(_ops.gaussian_filter(_ops.unit(y, torch.float64), sigma))


# ----------------------------------------------------------------------------------------------


def motion_blur_draw(n, h, w, c, generator, device) -> dict[str, Tensor]:  # noqa: ANN001
    return {"angle": -45.0 + 90.0 * _ops.rand((n,), generator, device, torch.float64)}


def motion_blur(x: Tensor, c: tuple[float, float], angle: Tensor) -> Tensor:
    """ImageMagick ``MotionBlurImage(radius, sigma, angle)``, angle ~ U(-45, 45), quantised to
    8 bits as the recipe's PNG round trip through ImageMagick does (sums in float64)."""
    return _ops.motion_blur(x, c[0], c[1], angle, quantize=True)


# ----------------------------------------------------------------------------------------------


def zoom_blur(x: Tensor, c: tuple[float, ...]) -> Tensor:
    """Mean of the image and its centre zooms (``scipy.ndimage.zoom``, order 1) by each factor,
    applied as one sparse (HW x HW) operator (float32, as the recipe)."""
    h, w = x.shape[-2:]
    y = _ops.apply_pixel_operator(
        _ops.unit(x), ("zoom_blur", h, w, c), lambda: _ops.zoom_blur_operator(h, w, c)
    )
    return _ops.to_uint8(y)
