"""Dataset images -> model inputs.

``InputAdapter`` maps a dataset's image shape to a model's input shape (bilinear resize, and
channel replication or luma); it is recorded in every checkpoint so evaluation and attacks
prepare inputs exactly as training did. ``normalize`` is the models' input contract:
``(x - mean) / std`` per channel for ``x`` in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from robustcli.errors import DataError


@dataclass(frozen=True)
class InputAdapter:
    """How dataset images of ``source_shape`` become model inputs of ``target_shape``.

    ``channels``: ``keep``, ``replicate`` (1 -> C grey copies) or ``luma`` (RGB -> grey with ITU-R
    BT.601 weights). ``resize``: ``none`` or ``bilinear`` (align_corners=False; antialiased when
    shrinking). uint8 inputs are rounded back to uint8 after resizing (training stores them so);
    float inputs in [0, 1] are resized without rounding.
    """

    source_shape: tuple[int, int, int]
    target_shape: tuple[int, int, int]
    channels: str = "keep"
    resize: str = "none"

    @property
    def identity(self) -> bool:
        return self.channels == "keep" and self.resize == "none"

    def describe(self) -> str:
        if self.identity:
            return "none"
        parts = []
        if self.resize != "none":
            s, t = self.source_shape, self.target_shape
            parts.append(f"{self.resize} resize {s[1]}x{s[2]} -> {t[1]}x{t[2]}")
        if self.channels == "replicate":
            parts.append(f"grey replicated to {self.target_shape[0]} channels")
        elif self.channels == "luma":
            parts.append("RGB -> grey (BT.601 luma)")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source_shape": list(self.source_shape),
            "target_shape": list(self.target_shape),
            "channels": self.channels,
            "resize": self.resize,
            "description": self.describe(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputAdapter:
        return cls(
            tuple(d["source_shape"]),  # type: ignore[arg-type]
            tuple(d["target_shape"]),  # type: ignore[arg-type]
            d.get("channels", "keep"),
            d.get("resize", "none"),
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return adapt_images(x, self)

    def normalization(
        self, mean: Sequence[float], std: Sequence[float]
    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The dataset's mean / std carried over to the adapted channels."""
        if self.channels == "replicate":
            c = self.target_shape[0]
            return (float(mean[0]),) * c, (float(std[0]),) * c
        if self.channels == "luma":
            w = _LUMA
            return (
                (round(sum(a * b for a, b in zip(w, mean, strict=True)), 5),),
                (round(sum(a * b for a, b in zip(w, std, strict=True)), 5),),
            )
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)


_LUMA = (0.299, 0.587, 0.114)


def input_adapter(source_shape: Sequence[int], target_shape: Sequence[int]) -> InputAdapter:
    """The adapter from dataset images of ``source_shape`` to a model's ``target_shape``."""
    src = tuple(int(v) for v in source_shape)
    dst = tuple(int(v) for v in target_shape)
    if len(src) != 3 or len(dst) != 3:
        raise DataError(f"shapes must be C x H x W, got {src} and {dst}")
    if src[0] == dst[0]:
        channels = "keep"
    elif src[0] == 1:
        channels = "replicate"
    elif src[0] == 3 and dst[0] == 1:
        channels = "luma"
    else:
        raise DataError(
            f"cannot feed {src[0]}-channel images to a {dst[0]}-channel model: pick a matching "
            "dataset or override the model's in_channels"
        )
    resize = "none" if src[1:] == dst[1:] else "bilinear"
    return InputAdapter(src, dst, channels, resize)  # type: ignore[arg-type]


def adapt_images(x: torch.Tensor, adapter: InputAdapter, chunk: int = 4096) -> torch.Tensor:
    """Apply ``adapter`` to a batch (uint8 0..255 or float 0..1, ``N x C x H x W``)."""
    if adapter.identity:
        return x
    if tuple(x.shape[1:]) != adapter.source_shape:
        raise DataError(
            f"inputs have shape {tuple(x.shape[1:])}, the adapter expects {adapter.source_shape}"
        )
    if x.shape[0] > chunk:  # bounded memory for whole datasets
        return torch.cat([adapt_images(p, adapter, chunk) for p in x.split(chunk)])
    is_uint8 = x.dtype == torch.uint8
    y = x.float() if is_uint8 else x
    if adapter.channels == "luma":
        w = torch.tensor(_LUMA, dtype=y.dtype, device=y.device).view(1, 3, 1, 1)
        y = (y * w).sum(1, keepdim=True)
    if adapter.resize == "bilinear":
        size = adapter.target_shape[1:]
        shrink = size[0] < y.shape[2] or size[1] < y.shape[3]
        y = F.interpolate(y, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    if adapter.channels == "replicate":
        y = y.expand(-1, adapter.target_shape[0], -1, -1)
    if is_uint8:
        return y.round().clamp_(0, 255).to(torch.uint8).contiguous()
    return y.contiguous()


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel for ``x`` in [0, 1] (the models' input contract)."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s
