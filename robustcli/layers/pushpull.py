"""Push-pull convolution (Strisciuglio et al. 2020) and its unrectified form (paper A, eq. 1).

The pull kernel is the push kernel resized with bilinear interpolation (align_corners=True) to an
odd size ``s >= floor(k*h)`` and negated. Bilinear resizing is separable: ``up(K) = A K A^T`` with
``A`` a fixed ``s x k`` matrix. So the pull response ``X * up(K)`` equals the push weights applied
(as a 1x1 convolution over ``9*C`` channels) to ``X`` pre-filtered by the ``k*k`` fixed separable
filters ``A[:, a] A[:, b]^T``. That costs about one extra 3x3 convolution plus a cheap depthwise
pre-filter instead of a dense ``s x s`` convolution (5.4x the multiply-adds at k=3, h=2).
``pull_response_direct`` keeps the literal definition for tests and benchmarks.

On CPU the layers use the fused kernel of ``fused.py`` by default (``pull_impl="auto"``), which
computes the push and every pull scale from one channel-mixing GEMM plus fixed stencils.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from robustcli.layers import fused
from robustcli.layers.attention import SqueezeExcitation

PULL_IMPLS = ("auto", "dense", "separable", "fused")

RECTIFIERS: dict[str, Callable[[torch.Tensor], torch.Tensor] | None] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "none": None,
}


def pull_kernel_size(kernel_size: int, scale: float) -> int:
    """Size of the pull kernel: floor(k*h), plus one if even (k=3, h=2 -> 7)."""
    size = int(math.floor(kernel_size * scale))
    return size + 1 if size % 2 == 0 else size


def bilinear_matrix(src: int, dst: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The ``dst x src`` matrix of 1-D linear interpolation with align_corners=True."""
    if src == 1:
        return torch.ones(dst, 1, dtype=dtype)
    pos = torch.arange(dst, dtype=dtype) * (src - 1) / max(dst - 1, 1)
    lo = pos.floor().clamp(max=src - 2).long()
    frac = pos - lo.to(dtype)
    mat = torch.zeros(dst, src, dtype=dtype)
    rows = torch.arange(dst)
    mat[rows, lo] += 1 - frac
    mat[rows, lo + 1] += frac
    return mat


def pull_kernel(weight: torch.Tensor, scale: float) -> torch.Tensor:
    """The pull kernel by its definition: negated bilinear (align_corners=True) upsampling."""
    size = pull_kernel_size(weight.shape[-1], scale)
    return -F.interpolate(weight, size=(size, size), mode="bilinear", align_corners=True)


class PullPrefilter(nn.Module):
    """Depthwise separable pre-filter: maps C channels to C*k*k channels, one per (c, a, b).

    Output channel ``c*k*k + a*k + b`` is ``X_c`` filtered by ``A[:, a] A[:, b]^T`` (the bilinear
    basis of the pull kernel), so ``conv1x1(prefilter(X), K.view(O, C*k*k))`` equals
    ``X * up(K)``.
    """

    def __init__(
        self, channels: int, kernel_size: int, scale: float, stride: int, padding: int
    ) -> None:
        super().__init__()
        self.channels, self.k = channels, kernel_size
        self.size = pull_kernel_size(kernel_size, scale)
        self.stride = stride
        self.padding = self.size // 2 - kernel_size // 2 + padding
        vert, horiz = self._filters(torch.float32)
        self.register_buffer("vert", vert, persistent=False)
        self.register_buffer("horiz", horiz, persistent=False)

    def _filters(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The vertical (C -> C*k) and horizontal (C*k -> C*k*k) depthwise filters in ``dtype``."""
        c, k, s = self.channels, self.k, self.size
        basis = bilinear_matrix(k, s).to(dtype)  # (s, k)
        vert = basis.t().reshape(k, 1, s, 1).repeat(c, 1, 1, 1)  # filter A[:, a] as a column
        horiz = basis.t().reshape(k, 1, 1, s).repeat(c * k, 1, 1, 1)  # filter A[:, b] as a row
        return vert, horiz

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, k, p, s = self.channels, self.k, self.padding, self.stride
        if x.dtype == torch.float64:  # the float32 buffers round coefficients such as 1/3
            vert, horiz = (f.to(x.device) for f in self._filters(torch.float64))
        else:
            vert, horiz = self.vert.to(x.dtype), self.horiz.to(x.dtype)
        y = F.conv2d(x, vert, stride=(s, 1), padding=(p, 0), groups=c)
        return F.conv2d(y, horiz, stride=(1, s), padding=(0, p), groups=c * k)


def pull_response_direct(
    x: torch.Tensor, weight: torch.Tensor, scale: float, stride: int, padding: int
) -> torch.Tensor:
    """``X * (-up(K))`` by the literal definition (a dense s x s convolution)."""
    kernel = pull_kernel(weight, scale)
    pad = kernel.shape[-1] // 2 - weight.shape[-1] // 2 + padding
    return F.conv2d(x, kernel, stride=stride, padding=pad)


def use_fused(impl: str, x: torch.Tensor) -> bool:
    """Whether a push-pull layer with ``pull_impl=impl`` computes ``x`` with the fused kernel.

    ``"auto"`` and ``"fused"`` pick it on CPU for float32/float64 inputs, and for bfloat16 inputs
    under autocast (the kernel then computes in float32: faster than oneDNN's bf16 dense pull,
    see docs/results.md), outside ``torch.compile``. Everything else uses the dense pull.
    """
    if impl not in ("auto", "fused") or torch.compiler.is_compiling():
        return False
    autocast_bf16 = x.dtype == torch.bfloat16 and torch.is_autocast_enabled(x.device.type)
    if x.dtype not in (torch.float32, torch.float64) and not autocast_bf16:
        return False
    return fused.available(x)


class PullResponse(nn.Module):
    """Computes ``U_q = X * (-up_h(K))`` for push weights ``K`` given at call time.

    ``impl="dense"`` convolves with the resized kernel (the definition); ``impl="separable"``
    uses the bilinear factorisation (``PullPrefilter`` then a 1x1 convolution with ``K``).
    ``"auto"`` and ``"fused"`` compute a lone pull densely: the fused kernel is used by the
    layers, which compute push and pull together (``basis`` is the bilinear matrix it needs).
    """

    def __init__(
        self,
        in_channels: int,
        kernel_size: int,
        scale: float,
        stride: int,
        padding: int,
        impl: str = "dense",
    ) -> None:
        super().__init__()
        if impl not in PULL_IMPLS:
            raise ValueError(f"pull_impl must be one of {', '.join(PULL_IMPLS)}, got {impl!r}")
        self.scale, self.stride, self.padding, self.impl = scale, stride, padding, impl
        self.size = pull_kernel_size(kernel_size, scale)
        # float64 and not a buffer: module dtype casts must not round 1/3 to float32
        self.basis = bilinear_matrix(kernel_size, self.size)
        self.prefilter = (
            PullPrefilter(in_channels, kernel_size, scale, stride, padding)
            if impl == "separable"
            else None
        )

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.prefilter is None:
            return pull_response_direct(x, weight, self.scale, self.stride, self.padding)
        z = self.prefilter(x)
        return -F.conv2d(z, weight.reshape(weight.shape[0], -1, 1, 1))


class PushPullConv2d(nn.Module):
    """Push-pull convolution: ``rect(X*K) - alpha * rect(X*(-up_h(K)))``.

    Args:
        rectify: "relu" (Strisciuglio 2020), "gelu", or "none" (paper A's unrectified push-pull,
            which is linear: ``X*K + alpha*X*up(K)``).
        alpha: inhibition strength; ``trainable_alpha`` makes it a per-channel parameter that is
            clamped at 0 in the forward pass.
        scale: pull kernel scale ``h`` (2 gives a 7x7 pull kernel for a 3x3 push kernel).
        attention: an optional module applied to the push response before subtracting the pull
            (paper A, eq. 2: ``U = attn(U_p) - alpha*U_q``).
        pull_impl: "auto" (default) uses the fused CPU kernel (``fused.py``: push and pull from
            one GEMM plus fixed stencils) where ``use_fused`` allows it (CPU, also under bf16
            autocast) and the dense pull elsewhere (GPU, torch.compile); "dense" computes the
            pull with one s x s convolution of the resized kernel (the definition); "separable"
            uses the bilinear factorisation (a fixed depthwise pre-filter and a 1x1 convolution
            with the push weights); "fused" is the same as "auto". All are tested equal to the
            definition (see benchmarks/bench_pushpull.py for their cost).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        bias: bool = False,
        rectify: str = "relu",
        alpha: float = 1.0,
        trainable_alpha: bool = False,
        scale: float = 2.0,
        attention: nn.Module | None = None,
        pull_impl: str = "auto",
    ) -> None:
        super().__init__()
        if rectify not in RECTIFIERS:
            raise ValueError(f"rectify must be one of {sorted(RECTIFIERS)}, got {rectify!r}")
        if kernel_size < 2:
            raise ValueError("push-pull needs a spatial kernel (kernel_size >= 2)")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.rectify, self.scale, self.pull_impl = rectify, scale, pull_impl
        self.push = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, self.padding, bias=bias
        )
        if trainable_alpha:
            self.alpha = nn.Parameter(torch.full((1, out_channels, 1, 1), float(alpha)))
        else:
            self.register_buffer("alpha", torch.tensor(float(alpha)), persistent=False)
        self.attention = attention
        self.pull = PullResponse(in_channels, kernel_size, scale, stride, self.padding, pull_impl)
        self.pull_size = self.pull.size

    @property
    def weight(self) -> torch.Tensor:
        return self.push.weight

    def effective_alpha(self) -> torch.Tensor:
        return self.alpha.clamp(min=0) if isinstance(self.alpha, nn.Parameter) else self.alpha

    def pull_response(self, x: torch.Tensor) -> torch.Tensor:
        """``U_q = X * (-up(K))`` (no bias, no rectification)."""
        return self.pull(x, self.push.weight)

    def folded_kernel(self) -> torch.Tensor:
        """The single kernel ``pad(K) + alpha*up(K)`` that equals the unrectified layer."""
        w = self.push.weight
        pad = (self.pull_size - self.kernel_size) // 2
        return F.pad(w, (pad,) * 4) - self.effective_alpha().reshape(-1, 1, 1, 1) * pull_kernel(
            w, self.scale
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if use_fused(self.pull_impl, x):
            return fused.like_input(self._forward_fused(x), x)
        if self.rectify == "none" and self.attention is None and self.pull_impl != "separable":
            # Linear push-pull is one convolution with a tied kernel: compute it as such.
            pad = self.pull_size // 2 - self.kernel_size // 2 + self.padding
            return F.conv2d(x, self.folded_kernel(), self.push.bias, self.stride, pad)
        return self._combine(self.push(x), self.pull_response(x))

    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        w, bias = self.push.weight, self.push.bias
        if (
            self.rectify == "relu"
            and self.attention is None
            and bias is None
            and fused.fast_geometry(self.kernel_size, self.stride, self.padding)
        ):
            return fused.pushpull_relu(x, w, self.pull.basis, self.effective_alpha())
        if self.rectify == "none" and (
            self.attention is None or isinstance(self.attention, SqueezeExcitation)
        ):
            return self._mix(x)
        r = fused.pushpull_responses(x, w, [self.pull.basis], self.stride, self.padding)
        push, q = r.split(self.out_channels, dim=1)
        if bias is not None:
            push = push + bias.reshape(1, -1, 1, 1)
        return self._combine(push, -q)

    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        """Unrectified push-pull ``s_n * (P + b) + alpha * Q`` (``s_n``: SE weights of the push,
        or 1) as one per-sample product ``[diag(s_n), diag(alpha)]`` on the kernel's ``[P, Q]``."""
        o, bias = self.out_channels, self.push.bias

        def build(
            z: torch.Tensor, alpha: torch.Tensor, *_: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor | None]:
            s = z.new_ones(z.shape[0], o)
            if self.attention is not None:
                zp = z[:, :o] if bias is None else z[:, :o] + bias
                s = self.attention.excite(zp)
            a = alpha.reshape(1, -1).expand_as(s)  # one alpha or one per channel
            f = torch.cat([torch.diag_embed(s), torch.diag_embed(a)], dim=2)
            return f, None if bias is None else s * bias

        return fused.pushpull_mix(
            x,
            self.push.weight,
            [self.pull.basis],
            self.stride,
            self.padding,
            build,
            self.effective_alpha(),
            *self.parameters(),
        )

    def _combine(self, push: torch.Tensor, pull: torch.Tensor) -> torch.Tensor:
        """``rect(push)`` (through the attention) minus ``alpha * rect(pull)``."""
        rect = RECTIFIERS[self.rectify]
        if rect is not None:
            push, pull = rect(push), rect(pull)
        if self.attention is not None:
            push = self.attention(push)
        return push - self.effective_alpha() * pull

    def extra_repr(self) -> str:
        return (
            f"rectify={self.rectify}, scale={self.scale}, "
            f"pull={self.pull_size}x{self.pull_size} ({self.pull_impl}), "
            f"alpha={'trainable' if isinstance(self.alpha, nn.Parameter) else float(self.alpha)}"
        )
