"""Top-down (TD) building blocks of paper B (Lelekas et al. 2020): pyramid, upsampling, merge.

A TD network sees its input at three scales (full, /2, /4), starts processing at /4 and merges
in the finer scales on the way up. This file holds the pieces that are not backbone code:

- ``GaussianPyramid``: the 3-scale input. Each coarse scale is blurred and subsampled *directly
  from the full-resolution image* (not from the previous scale), as in the authors' code.
- ``upsample_nearest2x``: nearest-neighbour x2 upsampling (the paper prefers it to bilinear for
  robustness, and to transposed convolutions for checkerboard artifacts).
- ``MergeBlock``: the resolution merge of paper Fig. 3, and ``AddConcatFuse``, its
  add-then-concatenate core (also used, in pre-activation order, by the TD ResNet).

Authors' code: github.com/giannislelekas/topdown, ``src/lib/blurring.py`` and
``src/models/models_BUvsTD.py`` (TensorFlow 1.14 / Keras). Where it differs from the paper's
prose, the code is followed and the difference is noted in the docstring concerned.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

NormFactory = Callable[[int], nn.Module]
ActFactory = Callable[[], nn.Module]

PYRAMID_METHODS = ("gaussian", "tf_resize")


# --------------------------------------------------------------------------- Gaussian kernels


def gaussian_radius(sigma: float) -> int:
    """Half-width of the authors' Gaussian: ``ceil(3 sigma)`` (sigma 1 -> 7x7, 2 -> 13x13)."""
    return int(math.ceil(3 * sigma))


def gaussian_kernel1d(sigma: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Normalised 1-D Gaussian on the integers ``-r..r`` with ``r = ceil(3 sigma)``.

    The authors build the 2-D kernel ``exp(-(i^2 + j^2) / (2 sigma^2))`` and divide by its sum;
    that kernel is the outer product of this one with itself (the Gaussian is separable and the
    normaliser factorises), so blurring with two 1-D passes gives the same result.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    r = gaussian_radius(sigma)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype)


def gaussian_kernel2d(sigma: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The authors' normalised 2-D Gaussian, ``(2r+1) x (2r+1)`` with ``r = ceil(3 sigma)``."""
    g = gaussian_kernel1d(sigma, torch.float64)
    return torch.outer(g, g).to(dtype)


def _separable_depthwise(
    x: torch.Tensor, kernel: torch.Tensor, stride: int, pad_mode: str
) -> torch.Tensor:
    """Depthwise separable filtering with ``kernel`` (1-D, odd length) along H then W."""
    c = x.shape[1]
    r = kernel.numel() // 2
    k = kernel.to(device=x.device, dtype=x.dtype)
    x = F.pad(x, (r, r, r, r), mode=pad_mode)
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), stride=(stride, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), stride=(1, stride), groups=c)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur ``(N, C, H, W)`` per channel with the authors' Gaussian and reflect padding.

    Reflect padding is TensorFlow's ``REFLECT`` (edge pixel not repeated), i.e. PyTorch's
    ``"reflect"``; it needs ``H, W > ceil(3 sigma)``.
    """
    return _separable_depthwise(x, gaussian_kernel1d(sigma), stride=1, pad_mode="reflect")


def gaussian_downscale(x: torch.Tensor, sigma: float, factor: int) -> torch.Tensor:
    """``gaussian_blur(x, sigma)[..., ::factor, ::factor]`` (authors' ``downscale_gaussian``).

    Computed as a strided convolution, so only the kept pixels are filtered. The output has
    ``ceil(H / factor) x ceil(W / factor)`` pixels, sampled at indices ``0, factor, 2 factor...``.
    """
    return _separable_depthwise(x, gaussian_kernel1d(sigma), stride=factor, pad_mode="reflect")


def tf_gaussian_resize_matrix(
    in_size: int, factor: int, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """The ``(in_size // factor, in_size)`` matrix of ``tf.image.resize(method="gaussian",
    antialias=True)`` for a downscale by ``factor`` along one axis.

    TensorFlow's ``ScaleAndTranslate`` samples output pixel ``o`` at ``(o + 0.5) * factor`` (pixel
    centres at ``i + 0.5``), with its Gaussian kernel (radius 1.5, sigma 0.5 output pixels)
    stretched by ``factor``: a Gaussian of sigma ``factor / 2`` input pixels (1 for /2, 2 for /4),
    cut at ``1.5 * factor``. Taps outside the image are dropped and each row is renormalised to
    sum to 1 (no padding). ``factor`` is an integer, so the output size is ``in_size // factor``.
    """
    out_size = in_size // factor
    centre = (torch.arange(out_size, dtype=torch.float64) + 0.5) * factor
    src = torch.arange(in_size, dtype=torch.float64) + 0.5
    pos = (src[None, :] - centre[:, None]) / factor  # in output-pixel units
    w = torch.exp(-(pos**2) / (2 * 0.5**2)) * (pos.abs() < 1.5)
    return (w / w.sum(dim=1, keepdim=True)).to(dtype)


@functools.lru_cache(maxsize=32)
def _tf_resize_matrix_on(
    size: int, factor: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``tf_gaussian_resize_matrix`` on ``device``, made once per argument set: a matrix made
    on the host at every call would be a host-to-device copy per forward pass on a GPU, which
    waits for everything queued there. Made outside inference mode, so that a matrix first
    needed under ``torch.inference_mode`` still serves passes that autograd records."""
    with torch.inference_mode(False):
        return tf_gaussian_resize_matrix(size, factor).to(device=device, dtype=dtype)


def tf_gaussian_downscale(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Authors' ``downscale_tf``: ``tf.image.resize(x, n // f, "gaussian", antialias=True)``."""
    h, w = x.shape[-2:]
    mh = _tf_resize_matrix_on(h, factor, x.device, x.dtype)
    mw = mh if w == h else _tf_resize_matrix_on(w, factor, x.device, x.dtype)
    return torch.einsum("oh,nchw,pw->ncop", mh, x, mw)


class GaussianPyramid(nn.Module):
    """The TD networks' input ``[full, /2, /4]``; each coarse scale is made from the full image.

    Args:
        method: ``"gaussian"`` (default): the authors' explicit Gaussian option
            (``downscale_gaussian``): blur with sigma 1 (7x7 kernel) for /2 and sigma 2 (13x13)
            for /4, reflect padding, then keep every 2nd / 4th pixel starting at index 0.
            ``"tf_resize"``: the authors' *default* (``method='tf'``, the one their training and
            attack scripts pass): ``tf.image.resize(..., method="gaussian", antialias=True)``,
            with the same sigmas (1 and 2 input pixels) but sampled half a pixel (/2) or one and a
            half pixels (/4) further on, cut at 3 sigma and renormalised at the borders instead
            of reflect-padded. See ``tf_gaussian_resize_matrix``.
        sigmas: blur sigma of the /2 and /4 scales for ``"gaussian"`` (authors: sigma, 2 sigma
            with sigma = 1).

    No parameters and no persistent buffers: nothing of it goes into a state dict. The filters
    are made once and live on the module's device (the blur kernels as non-persistent buffers,
    the ``tf_resize`` matrices in ``tf_gaussian_downscale``'s cache): a filter made on the host
    at every call would be a host-to-device copy per forward pass on a GPU, and such a copy
    waits for everything queued on the GPU before it.
    """

    factors: tuple[int, int] = (2, 4)

    def __init__(self, method: str = "gaussian", sigmas: Sequence[float] = (1.0, 2.0)) -> None:
        super().__init__()
        if method not in PYRAMID_METHODS:
            raise ValueError(f"pyramid method must be one of {PYRAMID_METHODS}, got {method!r}")
        if len(sigmas) != 2:
            raise ValueError(f"need one sigma per coarse scale (2), got {list(sigmas)}")
        self.method = method
        self.sigmas = tuple(float(s) for s in sigmas)
        for level, sigma in enumerate(self.sigmas, start=1):
            self.register_buffer(f"kernel{level}", gaussian_kernel1d(sigma), persistent=False)

    def downscale(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """Scale ``level`` (1: /2, 2: /4) of the full-resolution image ``x``; level 0 is ``x``."""
        if level == 0:
            return x
        factor = self.factors[level - 1]
        if self.method == "tf_resize":
            return tf_gaussian_downscale(x, factor)
        # = gaussian_downscale(x, self.sigmas[level - 1], factor), with the kernel made once
        kernel = getattr(self, f"kernel{level}")
        return _separable_depthwise(x, kernel, stride=factor, pad_mode="reflect")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x, self.downscale(x, 1), self.downscale(x, 2)]

    def extra_repr(self) -> str:
        return f"method={self.method!r}, sigmas={self.sigmas}, factors={self.factors}"


# --------------------------------------------------------------------------- upsampling, merge


def upsample_nearest2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour x2 upsampling: output pixel ``i`` copies input pixel ``i // 2``.

    Same as the authors' ``tf.image.resize(..., method="nearest")`` to twice the size (half-pixel
    centres map output ``i`` to ``floor((i + 0.5) / 2) = i // 2``).
    """
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class ConvBNAct(nn.Sequential):
    """``conv (bias on, 'same' padding) -> BN -> activation``: the post-activation unit of paper B.

    The conv keeps its bias although BN follows, as in the authors' Keras models, so that
    parameter counts match paper B's Table 1.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        norm: NormFactory = nn.BatchNorm2d,
        act: ActFactory = nn.ReLU,
    ) -> None:
        if kernel_size % 2 != 1:
            raise ValueError(f"'same' padding needs an odd kernel size, got {kernel_size}")
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            norm(out_channels),
            act(),
        )


class AddConcatFuse(nn.Module):
    """Fuse an upsampled coarse map with a fine one: ``conv3x3(concat(low + high, high))``.

    Both inputs have ``channels`` channels and the same size. ``preactivation=False`` gives
    ``conv -> BN -> act`` (paper Fig. 3, plain TD nets); ``True`` gives ``BN -> act -> conv`` over
    the concatenation (the authors' TD ResNet, which is pre-activation throughout).
    """

    def __init__(
        self,
        channels: int,
        out_channels: int,
        *,
        preactivation: bool = False,
        norm: NormFactory = nn.BatchNorm2d,
        act: ActFactory = nn.ReLU,
    ) -> None:
        super().__init__()
        self.preactivation = preactivation
        conv = nn.Conv2d(2 * channels, out_channels, 3, padding=1)
        if preactivation:
            self.fuse = nn.Sequential(norm(2 * channels), act(), conv)
        else:
            self.fuse = nn.Sequential(conv, norm(out_channels), act())

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([low + high, high], dim=1))


class MergeBlock(nn.Module):
    """Paper B's resolution merge (Fig. 3), as in the authors' plain TD nets (LeNetFC, NIN).

    ``low`` (coarse, ``low_channels``) -> [1x1 conv -> BN -> act, only if ``low_channels !=
    high_channels``] -> nearest x2 -> add ``high`` -> concatenate with ``high`` -> 3x3 conv -> BN
    -> act. ``high`` is the finer scale's input after its own conv unit. The output has
    ``high_channels`` channels at ``high``'s resolution.

    The paper's text puts the 1x1 conv on every merge; the authors' code (followed here) uses it
    only when the channel counts differ, e.g. not in NIN TD where every width is 48 / 192.
    """

    def __init__(
        self,
        low_channels: int,
        high_channels: int,
        *,
        norm: NormFactory = nn.BatchNorm2d,
        act: ActFactory = nn.ReLU,
    ) -> None:
        super().__init__()
        self.project: nn.Module = (
            ConvBNAct(low_channels, high_channels, 1, norm=norm, act=act)
            if low_channels != high_channels
            else nn.Identity()
        )
        self.fuse = AddConcatFuse(high_channels, high_channels, norm=norm, act=act)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return self.fuse(upsample_nearest2x(self.project(low)), high)
