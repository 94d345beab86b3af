"""Channel attention applied to a push response (paper A, eq. 2; Table 3)."""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): ``x * sigmoid(W2 relu(W1 avgpool(x)))``.

    With ``reduction=4`` and biases, one SE on 16 channels has 16*4+4 + 4*16+16 = 148
    parameters, which reproduces paper A's Table 3 counts.
    """

    def __init__(self, channels: int, reduction: int = 4, bias: bool = True) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, channels, bias=bias)

    def excite(self, z: torch.Tensor) -> torch.Tensor:
        """The channel weights ``sigmoid(W2 relu(W1 z))`` (N, C) from channel means ``z`` (N, C)."""
        return torch.sigmoid(self.fc2(torch.relu(self.fc1(z))))

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The per-sample channel weights ``w`` of shape (N, C, 1, 1)."""
        return self.excite(x.mean(dim=(2, 3)))[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)


class SimAM(nn.Module):
    """SimAM (Yang et al. 2021): parameter-free attention from an energy function.

    ``x * sigmoid(E_inv)`` with ``E_inv = (x - mu)^2 / (4 (var + lambda)) + 0.5``, where ``mu``
    and ``var`` are each channel's spatial mean and variance (``var`` divides by ``n = HW - 1``).
    """

    def __init__(self, channels: int | None = None, e_lambda: float = 1e-4) -> None:
        super().__init__()
        self.e_lambda = e_lambda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[2] * x.shape[3] - 1
        d = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
        var = d.sum(dim=(2, 3), keepdim=True) / max(n, 1)
        e_inv = d / (4 * (var + self.e_lambda)) + 0.5
        return x * torch.sigmoid(e_inv)


ATTENTIONS = {"se": SqueezeExcitation, "simam": SimAM}


def make_attention(kind: str | None, channels: int, reduction: int = 4) -> nn.Module | None:
    """Build attention by name: ``None``/"none", "se" or "simam"."""
    if kind in (None, "none"):
        return None
    if kind == "se":
        return SqueezeExcitation(channels, reduction=reduction)
    if kind == "simam":
        return SimAM(channels)
    raise ValueError(f"unknown attention {kind!r}; choose none, se or simam")
