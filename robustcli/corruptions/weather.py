"""Weather corruptions: snow, frost, fog and spatter (make_cifar_c.py constants).

See ``noise.py`` for the ``<name>_draw`` / ``<name>`` convention.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path

import numpy as np
import torch

from robustcli.corruptions import _ops
from robustcli.errors import DataError

Tensor = torch.Tensor

# (loc, scale, zoom, threshold, blur radius, blur sigma, blend)
SNOW = (
    (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
    (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
    (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
    (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
    (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
)
FROST = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))  # image * a + frost * b
FOG = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))  # (strength, wibble decay)
# (loc, scale, sigma, threshold, intensity, mode 0 = water / 1 = mud)
SPATTER = (
    (0.62, 0.1, 0.7, 0.7, 0.5, 0),
    (0.65, 0.1, 0.8, 0.7, 0.5, 0),
    (0.65, 0.3, 1, 0.69, 0.5, 0),
    (0.65, 0.1, 0.7, 0.69, 0.6, 1),
    (0.65, 0.1, 0.5, 0.68, 0.6, 1),
)

FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
FROST_SCALE = 0.2  # the recipe's cv2.resize(fx=0.2, fy=0.2) for 32x32 images

# ----------------------------------------------------------------------------------------------


def snow_draw(n, h, w, c, generator, device) -> dict[str, Tensor]:  # noqa: ANN001
    return {
        "z": _ops.randn((n, h, w), generator, device),
        "angle": -135.0 + 90.0 * _ops.rand((n,), generator, device, torch.float64),
    }


def snow(x: Tensor, c: tuple, z: Tensor, angle: Tensor) -> Tensor:
    """Zoomed, thresholded normal noise, motion-blurred at U(-135, -45) degrees (8-bit, like the
    recipe's PNG round trip through ImageMagick), added twice (once rotated by 180 degrees) to
    the image blended towards its brightened grey version."""
    loc, scale, zoom, threshold, radius, sigma, blend = c
    layer = z.double() * scale + loc
    if zoom != 1:
        layer = _ops.zoom_separable(layer, zoom)
    layer = torch.where(layer < threshold, 0.0, layer)
    layer8 = layer.clamp_(0, 1).mul_(255).to(torch.uint8)  # .astype(np.uint8) of the PIL 'L' image
    flakes = _ops.motion_blur(layer8.unsqueeze(1), radius, sigma, angle, quantize=True)
    out = torch.empty_like(x)
    for part in _ops.chunks(x.shape[0], x.device):
        snow = flakes[part].to(torch.float64).div_(255)  # cv2.imdecode(...) / 255.
        y = _ops.unit(x[part])  # float32, as the recipe
        r, g, b = y.unbind(1)
        gray = (r * 0.299 + g * 0.587 + b * 0.114).unsqueeze(1)  # cv2.COLOR_RGB2GRAY (float32)
        y = blend * y + (1 - blend) * torch.maximum(y, gray * 1.5 + 0.5)
        out[part] = _ops.to_uint8(y.double().add_(snow).add_(snow.flip(-1, -2)))
    return out


# ----------------------------------------------------------------------------------------------


def _frost_dir() -> Path:
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the frost corruption needs the frost photographs shipped with imagecorruptions: "
            "pip install imagecorruptions-imaug"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "frost"


@functools.cache
def frost_images(h: int, w: int) -> tuple[np.ndarray, ...]:
    """frost1-5 as RGB uint8, resized once like the recipe (``cv2.resize(fx=fy=0.2)``, bilinear).

    For images too large for a 0.2 scale (the recipe is for 32x32) the scale grows just enough
    for every photograph to hold an (H + 1) x (W + 1) crop.
    """
    import cv2

    folder = _frost_dir()
    photos = []
    for name in FROST_FILES:
        img = cv2.imread(str(folder / name))
        if img is None:
            raise DataError(
                f"cannot read frost photograph {folder / name}: reinstall imagecorruptions-imaug"
            )
        photos.append(img)
    need = max(max((h + 1) / p.shape[0], (w + 1) / p.shape[1]) for p in photos)
    scale = FROST_SCALE if need <= FROST_SCALE else math.ceil(need * 1000) / 1000
    out = []
    for p in photos:
        small = cv2.resize(p, (0, 0), fx=scale, fy=scale)
        out.append(np.ascontiguousarray(small[..., ::-1]))  # BGR -> RGB
    return tuple(out)


@functools.cache
def _frost_stack(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    photos = frost_images(h, w)
    sizes = np.array([p.shape[:2] for p in photos])
    stack = np.zeros((len(photos), sizes[:, 0].max(), sizes[:, 1].max(), 3), dtype=np.uint8)
    for i, p in enumerate(photos):
        stack[i, : p.shape[0], : p.shape[1]] = p
    return stack, sizes


def frost_draw(n, h, w, c, generator, device) -> dict[str, Tensor]:  # noqa: ANN001
    _, sizes = _frost_stack(h, w)
    sizes_t = torch.as_tensor(sizes, device=device)
    idx = _ops.randint(0, len(sizes), (n,), generator, device)
    u = _ops.rand((n, 2), generator, device, torch.float64)
    # np.random.randint(0, size - 32): uniform over [0, size - 32)
    span = (sizes_t[idx] - torch.tensor([h, w], device=device)).to(torch.float64)
    start = torch.floor(u * span).long()
    return {"index": idx, "top": start[:, 0], "left": start[:, 1]}


@functools.cache
def _frost_lut(a: float, b: float) -> np.ndarray:
    """``np.uint8(np.clip(a * x + b * frost, 0, 255))`` for every (x, frost) byte pair."""
    xv = np.arange(256, dtype=np.uint8)
    return np.uint8(np.clip(a * xv[:, None] + b * xv[None, :], 0, 255)).reshape(-1)


def frost(x: Tensor, c: tuple[float, float], index: Tensor, top: Tensor, left: Tensor) -> Tensor:
    """``clip(a * x + b * crop)`` with a random crop of one of frost1-5, exact (via a table)."""
    n, _, h, w = x.shape
    stack = _ops.cached(("frost", h, w), lambda: _frost_stack(h, w)[0], x.device)
    rows = top.view(n, 1, 1) + torch.arange(h, device=x.device).view(1, h, 1)
    cols = left.view(n, 1, 1) + torch.arange(w, device=x.device).view(1, 1, w)
    crop = stack[index.view(n, 1, 1), rows, cols].permute(0, 3, 1, 2)  # (N, 3, H, W)
    lut = _ops.cached(("frost-lut", c), lambda: _frost_lut(*c), x.device)
    return lut[x.long() * 256 + crop.long()]


# ----------------------------------------------------------------------------------------------


def plasma_size(h: int, w: int) -> int:
    """The recipe's mapsize (32 for CIFAR): the next power of two >= max(H, W)."""
    return 1 << max(1, math.ceil(math.log2(max(h, w))))


def fog_draw(n, h, w, c, generator, device) -> dict[str, Tensor]:  # noqa: ANN001
    m = plasma_size(h, w)
    return {"u": _ops.rand((n, m * m - 1), generator, device, torch.float64)}


def plasma_fractal(u: Tensor, mapsize: int, wibble_decay: float) -> Tensor:
    """The recipe's diamond-square heightmap, batched: (N, mapsize, mapsize) float64 in [0, 1].

    ``u`` holds the uniforms in the order the recipe draws them (mapsize**2 - 1 per image).
    """
    n = u.shape[0]
    m = mapsize
    grid = torch.zeros((n, m, m), dtype=torch.float64, device=u.device)
    step = m
    wibble = 100.0
    used = 0

    def wibbled_mean(total: Tensor) -> Tensor:
        nonlocal used
        k = total.shape[1] * total.shape[2]
        draw = u[:, used : used + k].reshape(total.shape)
        used += k
        # array / 4 + wibble * np.random.uniform(-wibble, wibble, shape)
        return total / 4 + wibble * (-wibble + (wibble - -wibble) * draw)

    while step >= 2:
        half = step // 2
        corner = grid[:, 0:m:step, 0:m:step]
        square = corner + torch.roll(corner, -1, dims=1)
        square = square + torch.roll(square, -1, dims=2)
        grid[:, half:m:step, half:m:step] = wibbled_mean(square)
        down_right = grid[:, half:m:step, half:m:step]
        up_left = grid[:, 0:m:step, 0:m:step]
        lt = (down_right + torch.roll(down_right, 1, dims=1)) + (
            up_left + torch.roll(up_left, -1, dims=2)
        )
        grid[:, 0:m:step, half:m:step] = wibbled_mean(lt)
        tt = (down_right + torch.roll(down_right, 1, dims=2)) + (
            up_left + torch.roll(up_left, -1, dims=1)
        )
        grid[:, half:m:step, 0:m:step] = wibbled_mean(tt)
        step //= 2
        wibble /= wibble_decay
    grid = grid - grid.amin(dim=(1, 2), keepdim=True)
    return grid / grid.amax(dim=(1, 2), keepdim=True)


def fog(x: Tensor, c: tuple[float, float], u: Tensor) -> Tensor:
    """``clip((x + s * plasma) * max(x) / (max(x) + s))``, float64 as the recipe."""
    strength, decay = c
    n, _, h, w = x.shape
    plasma = plasma_fractal(u, plasma_size(h, w), decay)[:, :h, :w].unsqueeze(1)
    y = _ops.unit(x, torch.float64)
    peak = y.amax(dim=(1, 2, 3), keepdim=True)
    y = y + strength * plasma
    return _ops.to_uint8(y * peak / (peak + strength))


# ----------------------------------------------------------------------------------------------

_EMBOSS = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
_WATER = (175 / 255.0, 238 / 255.0, 238 / 255.0)
_MUD = (63 / 255.0, 42 / 255.0, 20 / 255.0)


def spatter_draw(n, h, w, c, generator, device) -> dict[str, Tensor]:  # noqa: ANN001
    return {"z": _ops.randn((n, h, w), generator, device)}


def spatter_water_mask(liquid: Tensor) -> Tensor:
    """The recipe's water spatter intensity from a thresholded liquid layer (N, H, W) float64:
    uint8 cast (wrapping like NumPy's), Canny, distance transform, blur, histogram
    equalisation, emboss, blur, times the liquid. Returns float32 (N, H, W), not normalised."""
    liquid8 = torch.trunc(liquid * 255).long().bitwise_and_(255).to(torch.uint8)
    edges = _ops.cv_canny(liquid8, 50, 150)
    # 255 - edges is zero on the edges; cv2.threshold(dist, 20, 20, THRESH_TRUNC) caps at 20
    dist = _ops.cv_distance_transform_l2_5(edges, cap=20.0)
    dist = _ops.cv_box3(dist).to(torch.uint8)
    dist = _ops.cv_equalize_hist(dist)
    dist = _ops.cv_filter2d_u8(dist, _EMBOSS)
    dist = _ops.cv_box3(dist).to(torch.float32)
    return liquid8.to(torch.float32) * dist


def spatter(x: Tensor, c: tuple, z: Tensor) -> Tensor:
    """Water (severities 1-3) or mud (4-5) splashes from blurred, thresholded normal noise."""
    loc, scale, sigma, threshold, intensity, mode = c
    liquid = _ops.gaussian_filter(z.double() * scale + loc, sigma, mode="nearest")
    liquid = torch.where(liquid < threshold, 0.0, liquid)
    if mode == 0:
        m = spatter_water_mask(liquid)
        peak = m.amax(dim=(1, 2), keepdim=True)
        m = ((m / peak) * intensity).unsqueeze(1)  # 0 / 0 = NaN without water, as the recipe
        color = torch.tensor(_WATER, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    else:
        m = (liquid > threshold).to(torch.float32)
        m = _ops.gaussian_filter(m, intensity, mode="nearest")
        m = torch.where(m < 0.8, 0.0, m).unsqueeze(1)
        color = torch.tensor(_MUD, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    out = torch.empty_like(x)
    for part in _ops.chunks(x.shape[0], x.device):
        y = _ops.unit(x[part])  # float32
        mp = m[part]
        if mode == 0:
            y = y.add_(mp * color).clamp_(0, 1).mul_(255)
            out[part] = torch.nan_to_num_(y, nan=0.0).to(torch.uint8)  # np.uint8(nan) == 0
        else:
            out[part] = _ops.to_uint8(y.mul_(1 - mp).add_(color * mp))
    return out
