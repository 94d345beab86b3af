"""CIFAR-10-C corruptions as batched tensor operations, and the official-file loader.

Public API::

    CORRUPTIONS        the 19 names in the recipe's order (15 common, then 4 extra)
    COMMON, EXTRA      CORRUPTIONS[:15], CORRUPTIONS[15:]
    GROUPS             noise / blur / weather / digital / extra -> names
    corrupt(images, name, severity, generator=None) -> uint8 (N, 3, H, W)
    generate_dataset(images, labels, out_dir, corruptions=CORRUPTIONS, severities=(1, ..., 5),
                     seed=0, progress=True, *, force=False, batch_size=1000, device="cpu",
                     workers=None) -> Path
    load_official(root, corruptions=None) -> CorruptedSet   (memory-mapped, any N)

Mechanics and constants are those of ``make_cifar_c.py`` (Hendrycks & Dietterich, ICLR 2019).
Outputs are ``np.uint8(clip(x) * 255)`` of the recipe's float result: truncated, not rounded.
``reference.py`` is a per-image NumPy port of the recipe calling its libraries; the tests feed
both the same random numbers. Deviations:

- Random numbers come from a ``torch.Generator`` instead of NumPy's global state: same laws,
  other streams, so generated files are not the official files image by image. Shot noise
  draws Poisson(x * lambda) by inverse CDF of a 24-bit uniform (exact law up to 2**-24);
  impulse noise picks salt / pepper with one uniform per value (skimage's two Bernoulli draws
  have the same law); the snow and spatter normals are drawn in float32.
- Given the same draws the output is the recipe's bit for bit, except zoom blur (float32 like
  the recipe, summed in another order) and elastic transform (float64 bilinear sampling):
  one grey level on under 0.5% of values.
- Library versions: motion blur and the snow layer reproduce ImageMagick 6.9 (Q16) exactly,
  including its 8-bit PNG output ``floor(round(257 v) / 257)`` (sums in float64);
  warpAffine follows OpenCV <= 4 (1/32-pixel source coordinates; OpenCV 5 differs by ~1e-5);
  distanceTransform follows OpenCV's own 16-bit fixed-point chamfer (diagonal 1.3999939),
  not the IPP branch of builds with Intel IPP (float weights, 1.4; another water-spatter
  mask value in 1 of 12,000 layers tested); map_coordinates' 'reflect' border follows SciPy
  >= 1.6.
- Glass blur keeps the recipe's NumPy behaviour: its tuple "swap" on views copies the
  neighbour pixel instead of swapping (a one-pass gather here).
- JPEG uses torchvision's libjpeg-turbo codec when it imports (byte-identical to Pillow's
  files, tested), else Pillow per image.
- Float input is rounded to uint8 first (the recipe starts from 8-bit images).
- Other image sizes than 32x32 work (the recipe's constants are for 32x32): glass blur's
  pixel range, fog's plasma size and elastic's ``IMSIZE`` follow the image, clipped zooms
  crop each axis on its own, and frost photographs are scaled above 0.2 only when a crop
  would not fit.
"""

from robustcli.corruptions.generate import (
    COMMON,
    CORRUPTIONS,
    EXTRA,
    GROUPS,
    SEVERITIES,
    SPECS,
    Corruption,
    corrupt,
    draw,
    generate_dataset,
)
from robustcli.corruptions.official import CorruptedSet, load_official

__all__ = [
    "COMMON",
    "CORRUPTIONS",
    "EXTRA",
    "GROUPS",
    "SEVERITIES",
    "SPECS",
    "CorruptedSet",
    "Corruption",
    "corrupt",
    "draw",
    "generate_dataset",
    "load_official",
]
