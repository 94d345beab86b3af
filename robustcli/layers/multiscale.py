"""Multi-scale push-pull (MSPP, paper A eqs. 3-5).

One push kernel ``K``; pull kernels at S scales ``h_s`` (``-up_{h_s}(K)``). With the push
response ``U_p = X*K`` and the pull responses ``U_q^s``::

    V_s      = U_p - alpha * U_q^s                      (eq. 4, unrectified)
    U_concat = [U_p, V_1, ..., V_S]                     ((S+1)*C channels)
    U_final  = Conv1x1(attention(U_concat))             (eq. 5, back to C channels)

The paper does not give the scales. Our default is ``scales=(2, 3)`` (7x7 and 9x9 pull kernels
for a 3x3 push kernel): h=2 is the original push-pull scale and h=3 the next odd size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustcli.layers import fused
from robustcli.layers.attention import SqueezeExcitation, make_attention
from robustcli.layers.pushpull import PullResponse, use_fused

DEFAULT_SCALES: tuple[float, ...] = (2.0, 3.0)


class MultiScalePushPull(nn.Module):
    """Push response, S push-pull responses, channel attention on the concat, 1x1 fusion."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        bias: bool = False,
        scales: Sequence[float] = DEFAULT_SCALES,
        alpha: float = 1.0,
        trainable_alpha: bool = False,
        attention: str = "se",
        reduction: int = 4,
        fusion_bias: bool = False,
        pull_impl: str = "auto",
    ) -> None:
        super().__init__()
        if not scales:
            raise ValueError("MultiScalePushPull needs at least one pull scale")
        self.scales = tuple(float(s) for s in scales)
        self.kernel_size, self.pull_impl = kernel_size, pull_impl
        padding = kernel_size // 2 if padding is None else padding
        self.push = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        if trainable_alpha:
            self.alpha = nn.Parameter(torch.full((1, out_channels, 1, 1), float(alpha)))
        else:
            self.register_buffer("alpha", torch.tensor(float(alpha)), persistent=False)
        self.pulls = nn.ModuleList(
            PullResponse(in_channels, kernel_size, s, stride, padding, pull_impl)
            for s in self.scales
        )
        concat = out_channels * (len(self.scales) + 1)
        self.attention = make_attention(attention, concat, reduction)
        self.fuse = nn.Conv2d(concat, out_channels, 1, bias=fusion_bias)

    def effective_alpha(self) -> torch.Tensor:
        return self.alpha.clamp(min=0) if isinstance(self.alpha, nn.Parameter) else self.alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.effective_alpha()
        if use_fused(self.pull_impl, x):
            # push and every scale from one kernel call: [P, Q_1, ...], Q_s = X*up_s(K) = -U_q^s
            args = (
                x,
                self.push.weight,
                [pull.basis for pull in self.pulls],
                self.push.stride[0],
                self.push.padding[0],
            )
            if self.attention is None or isinstance(self.attention, SqueezeExcitation):
                return fused.like_input(self._mix(args, alpha), x)
            push, *qs = fused.pushpull_responses(*args).split(self.push.out_channels, dim=1)
            if self.push.bias is not None:
                push = push + self.push.bias.reshape(1, -1, 1, 1)
            u = fused.like_input(torch.cat([push] + [push + alpha * q for q in qs], dim=1), x)
        else:
            push = self.push(x)
            parts = [push] + [push - alpha * pull(x, self.push.weight) for pull in self.pulls]
            u = torch.cat(parts, dim=1)
        if self.attention is not None:
            u = self.attention(u)
        return self.fuse(u)

    def _mix(self, args: tuple, alpha: torch.Tensor) -> torch.Tensor:
        """SE and the 1x1 fusion of ``[U_p, V_1, ..., V_S]`` as one per-sample product on the
        kernel's responses ``r`` (``args``: the arguments of ``fused.pushpull_responses``).

        ``V_s = P + alpha*Q_s`` is linear in the responses ``r = [P, Q_1, ..., Q_S]`` and SE only
        needs channel means (linear too), so ``fuse(SE(U_concat)) = F_n r`` with
        ``E = W_fuse diag(s_n)`` split into blocks ``[E_0, E_1, ..., E_S]`` and
        ``F_n = [E_0 + sum_s E_s, E_1 diag(alpha), ..., E_S diag(alpha)]``: no concat is built.
        """
        o, s = self.push.out_channels, len(self.scales)

        def build(
            z: torch.Tensor, alpha: torch.Tensor, *_: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor | None]:
            n, a = z.shape[0], alpha.reshape(1, 1, -1)  # one alpha or one per channel of V_s
            zp, zq = z[:, :o], z[:, o:].reshape(n, s, o)
            if self.push.bias is not None:
                zp = zp + self.push.bias
            e = self.fuse.weight.reshape(1, o, (s + 1) * o).expand(n, -1, -1)
            if self.attention is not None:
                z_concat = torch.cat([zp, (zp[:, None] + a * zq).flatten(1)], dim=1)
                e = e * self.attention.excite(z_concat)[:, None, :]
            e0, es = e[..., :o], e[..., o:].reshape(n, o, s, o)
            fp = e0 + es.sum(dim=2)
            f = torch.cat([fp, (es * a.reshape(1, 1, 1, -1)).flatten(2)], dim=2)
            bias = None
            if self.push.bias is not None:  # U_p = P + b enters every block
                bias = fp @ self.push.bias
            if self.fuse.bias is not None:
                bias = self.fuse.bias.expand(n, -1) if bias is None else bias + self.fuse.bias
            return f, bias

        return fused.pushpull_mix(*args, build, alpha, *self.parameters())
