"""Digital and colour corruptions: brightness, contrast, saturate, elastic transform, pixelate
and JPEG (make_cifar_c.py constants).

See ``noise.py`` for the ``<name>_draw`` / ``<name>`` convention.
"""

from __future__ import annotations

import functools
import io
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from robustcli.corruptions import _ops

Tensor = torch.Tensor

BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)  # added to the HSV value
CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)  # (x - mean) * c + mean
SATURATE = ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))  # HSV saturation * a + b
PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)  # BOX down to int(32 * c), BOX back up
JPEG_COMPRESSION = (80, 65, 58, 50, 40)  # quality
ELASTIC_IMSIZE = 32
# (alpha, sigma, affine), in multiples of the image size (the recipe's IMSIZE = 32)
ELASTIC_TRANSFORM = (
    (0, 0, 0.08),
    (0.05, 0.2, 0.07),
    (0.08, 0.06, 0.06),
    (0.1, 0.04, 0.05),
    (0.1, 0.03, 0.03),
)


def brightness(x: Tensor, c: float) -> Tensor:
    """HSV value + c, as skimage's rgb2hsv / hsv2rgb in float64 (bit for bit)."""
    h, s, v = _ops.rgb_to_hsv(_ops.unit(x, torch.float64))
    return _ops.to_uint8(_ops.hsv_to_rgb(h, s, torch.clamp(v + c, 0, 1)))


def saturate(x: Tensor, c: tuple[float, float]) -> Tensor:
    """HSV saturation * a + b, as skimage's rgb2hsv / hsv2rgb in float64 (bit for bit)."""
    h, s, v = _ops.rgb_to_hsv(_ops.unit(x, torch.float64))
    return _ops.to_uint8(_ops.hsv_to_rgb(h, torch.clamp(s * c[0] + c[1], 0, 1), v))


def contrast(x: Tensor, c: float) -> Tensor:
    """``(x - mean) * c + mean`` per channel in float64, bit for bit: the channel mean is summed
    sequentially in pixel order, as NumPy's ``mean(axis=(0, 1))`` does on an HWC image."""
    n, ch, h, w = x.shape
    y = _ops.unit(x, torch.float64)
    means = y.reshape(n, ch, h * w).cumsum(-1)[..., -1:].div_(h * w).unsqueeze(-1)
    return _ops.to_uint8((y - means) * c + means)


# ----------------------------------------------------------------------------------------------


def pixelate(x: Tensor, c: float) -> Tensor:
    """``img.resize((int(W * c), int(H * c)), BOX).resize((W, H), BOX)``, Pillow-exact."""
    h, w = x.shape[-2:]
    small = _ops.pil_resize_box(x, int(h * c), int(w * c))
    return _ops.pil_resize_box(small, h, w)


_TV_CODEC_DEPRECATED = "The image decoding and encoding capabilities of TorchVision are deprecated"


def _silence_codec_deprecation() -> None:
    """Ignore torchvision 0.29's deprecation of its image codecs (they still work; without them
    ``jpeg_compression`` falls back to Pillow). A targeted filter, not ``catch_warnings``: that
    restores the global filter list on exit and so races with eval-c's worker threads. Added only
    when missing (pytest resets filters per test): each insertion resets every module's
    warning registry, re-showing "once" warnings, so it is not repeated per batch."""
    for action, message, *_ in warnings.filters:
        if action == "ignore" and message is not None and message.pattern == _TV_CODEC_DEPRECATED:
            return
    warnings.filterwarnings("ignore", message=_TV_CODEC_DEPRECATED, category=DeprecationWarning)


@functools.lru_cache(maxsize=1)
def _torchvision_jpeg():  # noqa: ANN202
    """torchvision's libjpeg-turbo codec, or None when torchvision cannot be imported."""
    try:
        from torchvision.io import decode_jpeg, encode_jpeg
    except Exception:  # a torchvision built for another torch fails in many ways
        return None
    return encode_jpeg, decode_jpeg


def _jpeg_pil(arr: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    out = np.empty_like(arr)
    for i in range(arr.shape[0]):
        buf = io.BytesIO()
        Image.fromarray(arr[i]).save(buf, "JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as img:
            out[i] = np.asarray(img.convert("RGB"))
    return out


def jpeg_compression(x: Tensor, c: int) -> Tensor:
    """Real JPEG at quality ``c`` (libjpeg defaults: 4:2:0, islow DCT), per image on CPU.

    Uses torchvision's encoder/decoder when available (the same libjpeg-turbo calls as Pillow:
    byte-identical files and pixels, checked in the tests, but without Python per image), else
    Pillow like the recipe.
    """
    cpu = x.cpu()
    codec = _torchvision_jpeg()
    if codec is not None:
        encode, decode = codec
        _silence_codec_deprecation()
        out = torch.stack(decode(encode(list(cpu), quality=c)))
    else:
        arr = _jpeg_pil(cpu.permute(0, 2, 3, 1).contiguous().numpy(), c)
        out = torch.from_numpy(arr).permute(0, 3, 1, 2)
    return out.contiguous().to(x.device)


# ----------------------------------------------------------------------------------------------


def elastic_constants(c: tuple[float, float, float], h: int, w: int) -> tuple[float, ...]:
    """(alpha, sigma, affine) in pixels: the recipe's ``IMSIZE * k`` with IMSIZE = min(H, W)."""
    size = min(h, w)
    return tuple(size * k for k in c)


def elastic_transform_draw(n, h, w, c, generator, device) -> dict[str, Tensor]:  # noqa: ANN001
    return {
        "affine": _ops.rand((n, 3, 2), generator, device, torch.float64),
        "dx": _ops.rand((n, h, w), generator, device, torch.float64),
        "dy": _ops.rand((n, h, w), generator, device, torch.float64),
    }


def _affine_points(h: int, w: int) -> np.ndarray:
    center = np.float32((h, w)) // 2
    square = min(h, w) // 3
    return np.float32([center + square, [center[0] + square, center[1] - square], center - square])


def _warp_affine_reflect101(img: Tensor, inv: Tensor) -> Tensor:
    """``cv2.warpAffine(img, M, (W, H), borderMode=BORDER_REFLECT_101)`` (bilinear) of float32
    (N, C, H, W), given the inverse maps ``inv`` (N, 2, 3) float64, as OpenCV <= 4 computes it:
    fixed-point source coordinates rounded to 1/32 pixel. (OpenCV 5 samples float images at
    the exact coordinates; the recipe ran on OpenCV 3/4.)"""
    n, ch, h, w = img.shape
    dev = img.device
    xs = torch.arange(w, device=dev, dtype=torch.float64)
    ys = torch.arange(h, device=dev, dtype=torch.float64)
    ab = 1024.0  # AB_SCALE
    # X = (rint(M0 * x * 1024) + rint((M1 * y + M2) * 1024) + 16) >> 5, likewise Y
    ax = torch.round(inv[:, 0, 0, None] * xs * ab)  # (N, W)
    bx = torch.round(inv[:, 1, 0, None] * xs * ab)
    ay = torch.round((inv[:, 0, 1, None] * ys + inv[:, 0, 2, None]) * ab)  # (N, H)
    by = torch.round((inv[:, 1, 1, None] * ys + inv[:, 1, 2, None]) * ab)
    big_x = torch.floor((ax[:, None, :] + ay[:, :, None] + 16) / 32).long()  # (N, H, W)
    big_y = torch.floor((bx[:, None, :] + by[:, :, None] + 16) / 32).long()
    # source positions on OpenCV's 1/32-pixel grid, sampled with align_corners=True
    # "reflection" (= BORDER_REFLECT_101); float64 keeps the k/32 weights exact enough
    sx = big_x.to(torch.float64) / 32
    sy = big_y.to(torch.float64) / 32
    grid = torch.stack((sx * (2.0 / (w - 1)) - 1, sy * (2.0 / (h - 1)) - 1), -1)
    out = F.grid_sample(
        img.double(), grid, mode="bilinear", padding_mode="reflection", align_corners=True
    )
    return out.to(torch.float32)


def elastic_transform(x: Tensor, c: tuple, affine: Tensor, dx: Tensor, dy: Tensor) -> Tensor:
    """Random affine of three points (cv2.warpAffine, BORDER_REFLECT_101), then a smooth random
    displacement field (``scipy.ndimage.map_coordinates`` order 1, mode 'reflect')."""
    n, ch, h, w = x.shape
    alpha, sigma, spread = elastic_constants(c, h, w)
    dev = x.device
    img = _ops.unit(x)  # float32
    pts1 = torch.from_numpy(_affine_points(h, w)).to(dev)  # (3, 2) float32, (x, y) pairs
    jitter = (-spread + (spread - -spread) * affine).to(torch.float32)
    pts2 = pts1 + jitter  # float32, as the recipe
    # cv2.getAffineTransform: M (2x3) with [x', y'] = M @ [x, y, 1]
    src = torch.cat([pts1.double(), torch.ones(3, 1, dtype=torch.float64, device=dev)], 1)
    m = torch.linalg.solve(src.expand(n, 3, 3), pts2.double()).transpose(1, 2)  # (N, 2, 3)
    # cv2.invertAffineTransform
    det = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]
    d = torch.where(det != 0, 1.0 / det, 0.0)
    a11, a22 = m[:, 1, 1] * d, m[:, 0, 0] * d
    a12, a21 = -m[:, 0, 1] * d, -m[:, 1, 0] * d
    b1 = -a11 * m[:, 0, 2] - a12 * m[:, 1, 2]
    b2 = -a21 * m[:, 0, 2] - a22 * m[:, 1, 2]
    inv = torch.stack([torch.stack([a11, a12, b1], 1), torch.stack([a21, a22, b2], 1)], 1)
    img = _warp_affine_reflect101(img, inv)
    # displacement: gaussian(uniform(-1, 1), sigma, mode='reflect', truncate=3) * alpha
    # (matrix form: a last-bit difference here moves a sample by ~1e-16 pixel)
    fields = torch.stack([-1.0 + 2.0 * dx, -1.0 + 2.0 * dy])
    fields = _ops.gaussian_filter(fields, sigma, mode="reflect", truncate=3, exact=False)
    disp_x, disp_y = (fields * alpha).to(torch.float32).unbind(0)
    # map_coordinates(order=1, mode='reflect'): reflection about the pixel edges, which is
    # grid_sample's "reflection" with align_corners=False (then clipped to the edge pixels)
    rows = torch.arange(h, device=dev, dtype=torch.float64).view(1, h, 1)
    cols = torch.arange(w, device=dev, dtype=torch.float64).view(1, 1, w)
    cy = rows + disp_y.double()
    cx = cols + disp_x.double()
    grid = torch.stack(((2 * cx + 1) / w - 1, (2 * cy + 1) / h - 1), -1)
    out = F.grid_sample(
        img.double(), grid, mode="bilinear", padding_mode="reflection", align_corners=False
    ).to(torch.float32)
    return _ops.to_uint8(out)
