"""The recipe itself, one image at a time: a NumPy port of ``make_cifar_c.py``.

Slow and for checking only: the tests compare the batched tensor corruptions with it, and the
benchmark times it. It calls the libraries the recipe called (scikit-image, SciPy, OpenCV,
Pillow) with their current APIs (``channel_axis`` for ``multichannel``, ``float64`` for
``np.float_``); ImageMagick's motion blur, which the recipe reached through Wand, is ported to
NumPy (``magick_motion_blur``; the tests check it against ImageMagick when it is installed).
Where OpenCV 5 changed a result the recipe got from OpenCV 3/4, the port says so: warpAffine
is emulated with OpenCV 4's 1/32-pixel coordinates. distanceTransform is called with Intel IPP
switched off: OpenCV's own 5x5 chamfer uses 16-bit fixed-point weights (diagonal 91750 / 65536 =
1.3999939), its IPP branch (taken by builds with IPP, such as the x86-64 pip wheels, in OpenCV 4
and 5 alike) float weights (1.4). Which one the recipe's OpenCV took depends on its build; the
two gave another water-spatter mask value in 1 of 12,000 layers tested.
Needs scikit-image and OpenCV (both come with imagecorruptions-imaug).

Every function maps an (H, W, 3) uint8 image to (H, W, 3) uint8 (``np.uint8(...)`` of the
recipe's float result). ``draws=None`` draws from ``np.random`` as the recipe does; otherwise
``draws`` holds one image's slice of the tensors returned by ``robustcli.corruptions.draw``
(as NumPy arrays), so the two implementations can be compared on the same random numbers.
"""

from __future__ import annotations

from io import BytesIO

import numpy as np

from robustcli.corruptions import blur, digital, noise, weather
from robustcli.corruptions.generate import CORRUPTIONS as CORRUPTION_NAMES


def _params(table: tuple, severity: int):  # noqa: ANN202
    return table[severity - 1]


def _gaussian(x: np.ndarray, sigma: float, **kw) -> np.ndarray:  # noqa: ANN003
    from skimage.filters import gaussian

    return gaussian(x, sigma=sigma, **kw)


def gaussian_noise(x: np.ndarray, severity: int = 1, draws: dict | None = None) -> np.ndarray:
    c = _params(noise.GAUSSIAN_NOISE, severity)
    x = np.array(x) / 255.0
    n = np.random.normal(size=x.shape, scale=c) if draws is None else c * _hwc(draws["z"], 1)
    return np.uint8(np.clip(x + n, 0, 1) * 255)


def shot_noise(x: np.ndarray, severity: int = 1, draws: dict | None = None) -> np.ndarray:
    c = _params(noise.SHOT_NOISE, severity)
    x = np.array(x) / 255.0
    if draws is None:
        k = np.random.poisson(x * c)
    else:  # inverse CDF of the given uniforms: the smallest k with P(X <= k) > u
        from scipy.special import pdtr
        from scipy.stats import poisson

        u = _hwc(draws["u"]).astype(np.float64)
        lam = x * c
        k = np.nan_to_num(poisson.ppf(u, lam)).astype(np.int64)
        k = np.where((k > 0) & (pdtr(k - 1, lam) > u), k - 1, k)
        while (below := pdtr(k, lam) <= u).any():
            k += below
    return np.uint8(np.clip(k / c, 0, 1) * 255)


def impulse_noise(x: np.ndarray, severity: int = 1, draws: dict | None = None) -> np.ndarray:
    import skimage as sk

    c = _params(noise.IMPULSE_NOISE, severity)
    if draws is None:
        out = sk.util.random_noise(np.array(x) / 255.0, mode="s&p", amount=c)
    else:
        u = _hwc(draws["u"])
        out = np.array(x) / 255.0
        out[u < c / 2] = 1
        out[(u >= c / 2) & (u < c)] = 0
    return np.uint8(np.clip(out, 0, 1) * 255)


def speckle_noise(x: np.ndarray, severity: int = 1, draws: dict | None = None) -> np.ndarray:
    c = _params(noise.SPECKLE_NOISE, severity)
    x = np.array(x) / 255.0
    n = np.random.normal(size=x.shape, scale=c) if draws is None else _hwc(draws["z"], 1) * c
    return np.uint8(np.clip(x + x * n, 0, 1) * 255)


def gaussian_blur(x: np.ndarray, severity: int = 1, draws: dict | None = None) -> np.ndarray:
    c = _params(blur.GAUSSIAN_BLUR, severity)
    x = _gaussian(np.array(x) / 255.0, c, channel_axis=-1)
    return np.uint8(np.clip(x, 0, 1) * 255)


def glass_blur(x: np.ndarray, severity: int = 1, draws: dict | None = None) -> np.ndarray:
    c = _params(blur.GLASS_BLUR, severity)
    h, w = x.shape[:2]
    x = np.uint8(_gaussian(np.array(x) / 255.0, c[0], channel_axis=-1) * 255)
    for i in range(c[2]):
        for hh in range(h - c[1], c[1], -1):
            for ww in range(w - c[1], c[1], -1):
                if draws is None:
                    dx, dy = np.random.randint(-c[1], c[1], size=(2,))
                else:
                    dx, dy = draws["offsets"][i, :, hh, ww]
                h_prime, w_prime = hh + dy, ww + dx
                # the recipe's "swap" (on views: it copies the neighbour into (hh, ww))
                x[hh, ww], x[h_prime, w_prime] = x[h_prime, w_prime], x[hh, ww]
    return np.uint8(np.clip(_gaussian(x / 255.0, c[0], channel_axis=-1), 0, 1) * 255)


def defocus_blur(x: np.ndarray, severity: int = 1, draws: dict | None = None) -> np.ndarray:
    import cv2

    c = _params(blur.DEFOCUS_BLUR, severity)
    x = np.array(x) / 255.0
    kernel = blur.defocus_kernel(*c)
    channels = np.array([cv2.filter2D(x[:, :, d], -1, kernel) for d in range(3)])
    return np.uint8(np.clip(channels.transpose((1, 2, 0)), 0, 1) * 255)


def magick_motion_blur(
    x: np.ndarray, radius: float, sigma: float, angle: float, dtype: type = np.float64
) -> np.ndarray:
    """ImageMagick's ``MotionBlurImage`` on uint8 (H, W) or (H, W, C), 8-bit result (PNG).

    The taps are summed in ``dtype``: float64 (as ImageMagick) matches it on every value
    tested; float32 (for the tests) rounds some sums to the other side of a quantum boundary.
    """
    from robustcli.corruptions._ops import motion_blur_kernel, motion_blur_offsets

    kernel = motion_blur_kernel(radius, sigma)
    ox, oy = motion_blur_offsets(len(kernel), np.array([angle]))
    h, w = x.shape[:2]
    rows = np.arange(h)[:, None]
    cols = np.arange(w)[None, :]
    out = np.zeros(x.shape, dtype=dtype)
    for i, k in enumerate(kernel.astype(dtype)):
        src = x[np.clip(rows + oy[0, i], 0, h - 1), np.clip(cols + ox[0, i], 0, w - 1)]
        out += k * src.astype(dtype)
    q = np.clip(np.floor(dtype(257) * out + dtype(0.5)), 0, 65535)  # Q16 quantum
    return np.uint8(np.floor(q / 257))  # 8-bit PNG as ImageMagick 6.9 writes it


def motion_blur(x: np.ndarray, severity: int = 1, draws: dict | None = None) -> np.ndarray:
    c = _params(blur.MOTION_BLUR, severity)
    angle = np.random.uniform(-45, 45) if draws is None else float(draws["angle"])
    return magick_motion_blur(np.array(x), c[0], c[1], angle)


def clipped_zoom(img: np.ndarray, zoom_factor: float) -> np.ndarray:
    from scipy.ndimage import zoom as scizoom

    h = img.shape[0]
    ch = int(np.ceil(h / zoom_factor))
    top = (h - ch) // 2
    img = scizoom(img[top : top + ch, top : top + ch], (zoom_factor, zoom_factor, 1), order=1)
    trim_top = (img.shape[0] - h) // 2
    return img[trim_top : trim_top + h, trim_top : trim_top + h]


def zoom_blur(x: np.ndarray, severity: int = 1, draws: dict | None = None) -> np.ndarray:
    factors = [
        np.arange(1, 1.06, 0.01),
        np.arange(1, 1.11, 0.01),
        np.arange(1, 1.16, 0.01),
        np.arange(1, 1.21, 0.01),
        np.arange(1, 1.26, 0.01),
    ][severity - 1]
    x = (np.array(x) / 255.0).astype(np.float32)
    out = np.zeros_like(x)
    for z in factors:
        out += clipped_zoom(x, z)
    x = (x + out) / (len(factors) + 1)
    return np.uint8(np.clip(x, 0, 1) * 255)


def snow(x: np.ndarray, severity: int = 1, draws: dict | None = None) -> np.ndarray:
    import cv2

    c = _params(weather.SNOW, severity)
    h, w = x.shape[:2]
    x = np.array(x, dtype=np.float32) / 255.0
    if draws is None:
        layer = np.random.normal(size=x.shape[:2], loc=c[0], scale=c[1])
        angle = np.random.uniform(-135, -45)
    else:
        layer = c[0] + c[1] * np.asarray(draws["z"], dtype=np.float64)
        angle = float(draws["angle"])
    layer = clipped_zoom(layer[..., np.newaxis], c[2])
    layer[layer < c[3]] = 0
    layer = (np.clip(layer.squeeze(), 0, 1) * 255).astype(np.uint8)
    layer = magick_motion_blur(layer, c[4], c[5], angle) / 255.0
    layer = layer[..., np.newaxis]
    gray = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).reshape(h, w, 1)
    x = c[6] * x + (1 - c[6]) * np.maximum(x, gray * 1.5 + 0.5)
    return np.uint8(np.clip(x + layer + np.rot90(layer, k=2), 0, 1) * 255)


def frost(x: np.ndarray, severity: int = 1, draws: dict | None = None) -> np.ndarray:
    import cv2

    c = _params(weather.FROST, severity)
    h, w = x.shape[:2]
    if draws is None:  # as the recipe: read and resize a photograph for every image
        idx = np.random.randint(5)
        fr = cv2.imread(str(weather._frost_dir() / weather.FROST_FILES[idx]))
        fr = cv2.resize(fr, (0, 0), fx=weather.FROST_SCALE, fy=weather.FROST_SCALE)
        top, left = np.random.randint(0, fr.shape[0] - h), np.random.randint(0, fr.shape[1] - w)
        fr = fr[top : top + h, left : left + w][..., [2, 1, 0]]
    else:
        idx, top, left = int(draws["index"]), int(draws["top"]), int(draws["left"])
        fr = weather.frost_images(h, w)[idx][top : top + h, left : left + w]
    return np.uint8(np.clip(c[0] * np.array(x) + c[1] * fr, 0, 255))


def plasma_fractal(mapsize: int = 32, wibbledecay: float = 3, uniforms: np.ndarray | None = None):  # noqa: ANN201
    """The recipe's diamond-square heightmap; ``uniforms`` replaces ``np.random.random`` draws."""
    assert mapsize & (mapsize - 1) == 0
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize = mapsize
    wibble = 100.0
    used = 0

    def uniform(low: float, high: float, shape: tuple) -> np.ndarray:
        nonlocal used
        if uniforms is None:
            return np.random.uniform(low, high, shape)
        k = int(np.prod(shape))
        u = uniforms[used : used + k].reshape(shape)
        used += k
        return low + (high - low) * u

    def wibbledmean(array: np.ndarray) -> np.ndarray:
        return array / 4 + wibble * uniform(-wibble, wibble, array.shape)

    def fillsquares() -> None:
        cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
        squareaccum += np.roll(squareaccum, shift=-1, axis=1)
        maparray[stepsize // 2 : mapsize : stepsize, stepsize // 2 : mapsize : stepsize] = (
            wibbledmean(squareaccum)
        )

    def filldiamonds() -> None:
        size = maparray.shape[0]
        drgrid = maparray[stepsize // 2 : size : stepsize, stepsize // 2 : size : stepsize]
        ulgrid = maparray[0:size:stepsize, 0:size:stepsize]
        ldrsum = drgrid + np.roll(drgrid, 1, axis=0)
        lulsum = ulgrid + np.roll(ulgrid, -1, axis=1)
        ltsum = ldrsum + lulsum
        maparray[0:size:stepsize, stepsize // 2 : size : stepsize] = wibbledmean(ltsum)
        tdrsum = drgrid + np.roll(drgrid, 1, axis=1)
        tulsum = ulgrid + np.roll(ulgrid, -1, axis=0)
        ttsum = tdrsum + tulsum
        maparray[stepsize // 2 : size : stepsize, 0:size:stepsize] = wibbledmean(ttsum)

    while stepsize >= 2:
        fillsquares()
        filldiamonds()
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def fog(x: np.ndarray, severity: int = 1, draws: dict | None = None) -> np.ndarray:
    c = _params(weather.FOG, severity)
    h, w = x.shape[:2]
    x = np.array(x) / 255.0
    max_val = x.max()
    u = None if draws is None else draws["u"]
    plasma = plasma_fractal(weather.plasma_size(h, w), c[1], u)
    x += c[0] * plasma[:h, :w][..., np.newaxis]
    return np.uint8(np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255)


def spatter(x: np.ndarray, severity: int = 1, draws: dict | None = None) -> np.ndarray:
    import cv2

    c = _params(weather.SPATTER, severity)
    x = np.array(x, dtype=np.float32) / 255.0
    if draws is None:
        liquid_layer = np.random.normal(size=x.shape[:2], loc=c[0], scale=c[1])
    else:
        liquid_layer = c[0] + c[1] * np.asarray(draws["z"], dtype=np.float64)
    liquid_layer = _gaussian(liquid_layer, c[2])
    liquid_layer[liquid_layer < c[3]] = 0
    if c[5] == 0:
        with np.errstate(invalid="ignore", over="ignore"):
            liquid_layer = (liquid_layer * 255).astype(np.uint8)
        m = water_mask(liquid_layer)
        m = cv2.cvtColor(m, cv2.COLOR_GRAY2BGRA)
        with np.errstate(invalid="ignore", divide="ignore"):
            m /= np.max(m, axis=(0, 1))
        m *= c[4]
        color = np.concatenate(
            (
                175 / 255.0 * np.ones_like(m[..., :1]),
                238 / 255.0 * np.ones_like(m[..., :1]),
                238 / 255.0 * np.ones_like(m[..., :1]),
            ),
            axis=2,
        )
        color = cv2.cvtColor(color, cv2.COLOR_BGR2BGRA)
        x = cv2.cvtColor(x, cv2.COLOR_BGR2BGRA)
        out = cv2.cvtColor(np.clip(x + m * color, 0, 1), cv2.COLOR_BGRA2BGR) * 255
        with np.errstate(invalid="ignore"):
            return np.uint8(np.nan_to_num(out, nan=0.0))
    m = np.where(liquid_layer > c[3], 1, 0)
    m = _gaussian(m.astype(np.float32), c[4])
    m[m < 0.8] = 0
    color = np.concatenate(
        (
            63 / 255.0 * np.ones_like(x[..., :1]),
            42 / 255.0 * np.ones_like(x[..., :1]),
            20 / 255.0 * np.ones_like(x[..., :1]),
        ),
        axis=2,
    )
    color *= m[..., np.newaxis]
    x *= 1 - m[..., np.newaxis]
    return np.uint8(np.clip(x + color, 0, 1) * 255)


def water_mask(liquid_u8: np.ndarray) -> np.ndarray:
    """The recipe's OpenCV chain for water spatter, up to ``liquid_layer * dist`` (float32)."""
    import cv2

    dist = 255 - cv2.Canny(liquid_u8, 50, 150)
    ipp = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)  # OpenCV's fixed-point chamfer, whatever the build (module docs)
    try:
        dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
    finally:
        cv2.ipp.setUseIPP(ipp)
    _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
    dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
    dist = cv2.equalizeHist(dist)
    ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
    dist = cv2.filter2D(dist, cv2.CV_8U, ker)
    dist = cv2.blur(dist, (3, 3)).astype(np.float32)
    return liquid_u8 * dist


def contrast(x: np.ndarray, severity: int = 1, draws: dict | None = None) -> np.ndarray:
    c = _params(digital.CONTRAST, severity)
    x = np.array(x) / 255.0
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return np.uint8(np.clip((x - means) * c + means, 0, 1) * 255)


def brightness(x: np.ndarray, severity: int = 1, draws: dict | None = None) -> np.ndarray:
    import skimage as sk

    c = _params(digital.BRIGHTNESS, severity)
    x = sk.color.rgb2hsv(np.array(x) / 255.0)
    x[:, :, 2] = np.clip(x[:, :, 2] + c, 0, 1)
    return np.uint8(np.clip(sk.color.hsv2rgb(x), 0, 1) * 255)


def saturate(x: np.ndarray, severity: int = 1, draws: dict | None = None) -> np.ndarray:
    import skimage as sk

    c = _params(digital.SATURATE, severity)
    x = sk.color.rgb2hsv(np.array(x) / 255.0)
    x[:, :, 1] = np.clip(x[:, :, 1] * c[0] + c[1], 0, 1)
    return np.uint8(np.clip(sk.color.hsv2rgb(x), 0, 1) * 255)


def jpeg_compression(x: np.ndarray, severity: int = 1, draws: dict | None = None) -> np.ndarray:
    from PIL import Image

    c = _params(digital.JPEG_COMPRESSION, severity)
    output = BytesIO()
    Image.fromarray(np.array(x)).save(output, "JPEG", quality=c)
    return np.uint8(Image.open(output))


def pixelate(x: np.ndarray, severity: int = 1, draws: dict | None = None) -> np.ndarray:
    from PIL import Image

    c = _params(digital.PIXELATE, severity)
    h, w = x.shape[:2]
    img = Image.fromarray(np.array(x))
    img = img.resize((int(w * c), int(h * c)), Image.BOX)
    return np.uint8(img.resize((w, h), Image.BOX))


def elastic_transform(
    image: np.ndarray, severity: int = 1, draws: dict | None = None
) -> np.ndarray:
    import cv2
    from scipy.ndimage import map_coordinates

    shape = image.shape
    c = digital.elastic_constants(_params(digital.ELASTIC_TRANSFORM, severity), *shape[:2])
    image = np.array(image, dtype=np.float32) / 255.0
    shape_size = shape[:2]
    center_square = np.float32(shape_size) // 2
    square_size = min(shape_size) // 3
    pts1 = np.float32(
        [
            center_square + square_size,
            [center_square[0] + square_size, center_square[1] - square_size],
            center_square - square_size,
        ]
    )
    if draws is None:
        jitter = np.random.uniform(-c[2], c[2], size=pts1.shape)
        ux = np.random.uniform(-1, 1, size=shape[:2])
        uy = np.random.uniform(-1, 1, size=shape[:2])
    else:
        jitter = -c[2] + (c[2] - -c[2]) * draws["affine"]
        ux = -1.0 + 2.0 * draws["dx"]
        uy = -1.0 + 2.0 * draws["dy"]
    pts2 = pts1 + jitter.astype(np.float32)
    m = cv2.getAffineTransform(pts1, pts2)
    image = warp_affine_reflect101(image, m)
    dx = (_gaussian(ux, c[1], mode="reflect", truncate=3) * c[0]).astype(np.float32)
    dy = (_gaussian(uy, c[1], mode="reflect", truncate=3) * c[0]).astype(np.float32)
    dx, dy = dx[..., np.newaxis], dy[..., np.newaxis]
    x, y, z = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    indices = np.reshape(y + dy, (-1, 1)), np.reshape(x + dx, (-1, 1)), np.reshape(z, (-1, 1))
    out = map_coordinates(image, indices, order=1, mode="reflect").reshape(shape)
    return np.uint8(np.clip(out, 0, 1) * 255)


def warp_affine_reflect101(image: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``cv2.warpAffine(image, m, (W, H), borderMode=cv2.BORDER_REFLECT_101)`` as OpenCV <= 4
    computes it: source coordinates in fixed point, rounded to 1/32 pixel. OpenCV 5 samples
    float images at exact coordinates; there the 1/32 positions are handed to ``cv2.remap``."""
    import cv2

    h, w = image.shape[:2]
    if int(cv2.__version__.split(".")[0]) < 5:
        return cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REFLECT_101)
    inv = cv2.invertAffineTransform(m)
    xs, ys = np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)
    # OpenCV's WarpAffineInvoker: AB_BITS = 10, INTER_BITS = 5, round_delta = 16
    ax = np.rint(inv[0, 0] * xs * 1024).astype(np.int64)
    bx = np.rint(inv[1, 0] * xs * 1024).astype(np.int64)
    ay = np.rint((inv[0, 1] * ys + inv[0, 2]) * 1024).astype(np.int64)
    by = np.rint((inv[1, 1] * ys + inv[1, 2]) * 1024).astype(np.int64)
    map_x = ((ax[None, :] + ay[:, None] + 16) >> 5).astype(np.float32) / 32
    map_y = ((bx[None, :] + by[:, None] + 16) >> 5).astype(np.float32) / 32
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def _hwc(a: np.ndarray, as_float64: int = 0) -> np.ndarray:
    """A per-image (3, H, W) draw in the recipe's (H, W, 3) layout (float64 if asked: the
    recipe's normal draws are float64)."""
    a = np.moveaxis(np.asarray(a), 0, -1)
    return a.astype(np.float64) if as_float64 else a


CORRUPTIONS = {name: globals()[name] for name in CORRUPTION_NAMES}


def corrupt_one(img: np.ndarray, name: str, severity: int, draws: dict | None = None) -> np.ndarray:
    """The recipe on one (H, W, 3) uint8 image."""
    return CORRUPTIONS[name](img, severity, draws)
