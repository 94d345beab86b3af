"""Mini-batches held on the device and augmented there.

``DeviceBatches`` keeps the uint8 images on the device and crops / flips / normalises whole
batches there, driven by one seeded ``torch.Generator`` (the same stream on every rank gives the
same global batches); ``eval_batches`` gives normalised, unaugmented batches of a rank's shard.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from robustcli.data.registry import AUGMENTS
from robustcli.errors import DataError, RobustError
from robustcli.runtime import SINGLE, DistInfo


def crop_padding(height: int) -> int:
    """Random-crop padding: 4 pixels at 32x32 (the CIFAR standard), height/8 in general."""
    return max(1, round(height / 8))


class DeviceBatches:
    """Mini-batches from uint8 images held on the device, augmented there in batch.

    Each epoch draws, from ``generator``, one permutation and per-image crop offsets and flip
    bits; a batch is then one gather from the zero-padded NHWC uint8 tensor (crop and flip
    together) followed by ``x * (1 / (255 std)) - mean / std``. The same stream on every rank
    gives the same global batches; rank ``r`` keeps its contiguous share of each. A short last
    batch is kept unless it has fewer than two images per rank (BatchNorm needs two).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int,
        augment: str = "none",
        padding: int | None = None,
        generator: torch.Generator | None = None,
        shuffle: bool = True,
        channels_last: bool = False,
        drop_last: bool = False,
        info: DistInfo = SINGLE,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError("DeviceBatches expects uint8 images of shape N x C x H x W")
        if augment not in AUGMENTS:
            raise RobustError(f"unknown augmentation {augment!r}: choose one of {AUGMENTS}")
        if batch_size < 1:
            raise RobustError("--batch-size must be positive")
        self.n, c, self.h, self.w = images.shape
        self.device = images.device
        self.labels = labels.to(self.device)
        self.batch_size = int(batch_size)
        self.crop = "crop" in augment
        self.flip = "flip" in augment
        self.pad = (crop_padding(self.h) if padding is None else int(padding)) if self.crop else 0
        self.generator = generator
        self.shuffle = shuffle
        self.channels_last = channels_last
        self.info = info
        # NHWC so that one gather gives a channels-last batch for free
        nhwc = images.permute(0, 2, 3, 1)
        if self.pad:
            nhwc = F.pad(nhwc, (0, 0, self.pad, self.pad, self.pad, self.pad))
        self.nhwc = nhwc.contiguous()
        self.scale = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))).to(self.device)
        self.shift = (-torch.tensor(mean, dtype=torch.float32) / torch.tensor(std)).to(self.device)
        if self.scale.numel() != c:
            raise DataError(f"normalisation has {self.scale.numel()} channels, images have {c}")
        full, rest = divmod(self.n, self.batch_size)
        self.steps = full + (1 if rest >= 2 * info.world_size and not drop_last else 0)
        if self.steps == 0:
            raise DataError(f"{self.n} images are fewer than one batch of {self.batch_size}")
        self._ar_h = torch.arange(self.h, device=self.device)
        self._ar_w = torch.arange(self.w, device=self.device)

    def __len__(self) -> int:
        return self.steps

    def global_batch_size(self, step: int) -> int:
        return min(self.batch_size, self.n - step * self.batch_size)

    def _local(self, n: int) -> slice:
        """This rank's contiguous share of a global batch of ``n`` (sizes differ by <= 1)."""
        per, extra = divmod(n, self.info.world_size)
        r = self.info.rank
        start = r * per + min(r, extra)
        return slice(start, start + per + (1 if r < extra else 0))

    def _draw(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        g, dev, n = self.generator, self.device, self.n
        if self.shuffle:
            perm = torch.randperm(n, generator=g, device=dev)
        else:
            perm = torch.arange(n, device=dev)
        if self.crop:
            dy = torch.randint(0, 2 * self.pad + 1, (n,), generator=g, device=dev)
            dx = torch.randint(0, 2 * self.pad + 1, (n,), generator=g, device=dev)
        else:
            dy = dx = torch.zeros(n, dtype=torch.long, device=dev)
        if self.flip:
            flip = torch.randint(0, 2, (n,), generator=g, device=dev, dtype=torch.bool)
        else:
            flip = torch.zeros(n, dtype=torch.bool, device=dev)
        return perm, dy, dx, flip

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """Yields ``(x, y, global_batch_size)`` with ``x`` normalised float32."""
        perm, dy, dx, flip = self._draw()
        for step in range(self.steps):
            sl = slice(step * self.batch_size, step * self.batch_size + self.batch_size)
            n_global = int(perm[sl].numel())
            local = self._local(n_global)
            idx = perm[sl][local]
            pos = torch.arange(sl.start, sl.start + n_global, device=self.device)[local]
            x = self.gather(idx, dy[pos], dx[pos], flip[pos])
            yield x, self.labels[idx], n_global

    def gather(
        self, idx: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor
    ) -> torch.Tensor:
        """Crop at ``(dy, dx)`` in the padded images, flip where ``flip``, normalise."""
        rows = dy[:, None] + self._ar_h[None, :]
        cols_base = torch.where(
            flip[:, None], self.w - 1 - self._ar_w[None, :], self._ar_w[None, :]
        )
        cols = dx[:, None] + cols_base
        u8 = self.nhwc[idx[:, None, None], rows[:, :, None], cols[:, None, :]]  # B x H x W x C
        x = u8.float().mul_(self.scale).add_(self.shift)
        x = x.permute(0, 3, 1, 2)  # NCHW view with channels-last strides
        return x if self.channels_last else x.contiguous()


def eval_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
    channels_last: bool = False,
    info: DistInfo = SINGLE,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised, unaugmented batches of this rank's shard (images ``r::world``)."""
    dev = images.device
    scale = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))).view(1, -1, 1, 1).to(dev)
    shift = (-torch.tensor(mean, dtype=torch.float32) / torch.tensor(std)).view(1, -1, 1, 1).to(dev)
    if info.distributed:
        images, labels = images[info.rank :: info.world_size], labels[info.rank :: info.world_size]
    for s in range(0, images.shape[0], batch_size):
        x = images[s : s + batch_size].float().mul_(scale).add_(shift)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, labels[s : s + batch_size].to(dev)


def steps_per_epoch(n: int, batch_size: int, world_size: int = 1) -> int:
    """Number of optimiser steps ``DeviceBatches`` makes per epoch."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= 2 * world_size else 0)
