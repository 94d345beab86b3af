"""Multiply-add (MAC) counts of push-pull layers: the FLOP floor their speed is judged against.

Counts are per output pixel (one spatial position of one image), forward + backward, from the
layers' own definitions (channels, kernel size, the bilinear pull bases):

- ``conv``: a plain ``k x k`` convolution with the layer's channels (the benchmarks' reference):
  forward ``G = k*k*C*O``; backward two more products of the same size (input and weight
  gradients), so ``3G``.
- ``definition``: the layer as written in the papers: the push convolution and one dense
  ``s_i x s_i`` convolution per pull scale (``3 * (k*k + sum s_i*s_i) * C * O``). An unrectified
  push-pull without attention is one folded ``s x s`` convolution (``3 * s*s * C * O``).
- ``fused``: the algorithm of ``fused.py`` with every product at its minimal size: one channel
  GEMM shared by the push and every pull scale (``3G``: the pull kernel is derived from the push
  kernel, so the pulls need no GEMM of their own; ``3G*s*s`` at stride ``s``, since the pulls
  read the channel-mixed maps at every input pixel), the fixed stencils that turn it into the push
  (``k*(k+1)`` taps forward, ``k*k`` backward per output value) and each pull (``(k+1)*nnz(A_i)``
  taps forward and backward; ``A_i`` is the ``s_i x k`` bilinear matrix, whose zeros the kernel
  skips), and the epilogue: SE needs the channel means and a per-sample diagonal product
  (forward, input and weight gradients), MSPP a per-sample dense ``(1+S)O x O`` product (its
  1x1 fusion with SE and alpha folded in). Elementwise non-linearities (ReLU, GELU, sigmoid) and
  the tiny per-image SE MLP are not counted.

Why the pull scales of MSPP are not merged into one convolution of the largest kernel: each
scale's response gets its own per-sample weights after SE (``F_n = W diag(s_n)`` in blocks), so
``sum_s F_s Q_s`` is a different ``9 x 9`` kernel per image (``81 C O`` MACs, more than the
shared GEMM plus stencils). Without attention the fused weights are static and the layer folds
into one ``9 x 9`` convolution (``fold.py``), which is again costlier than the shared GEMM.

So ``fused / conv`` is the floor of the layer's cost ratio to a plain convolution with this
algorithm: measured ratio / floor says how far an implementation is from its arithmetic limit
(at 16 channels these layers also move more memory than a convolution, which the count ignores).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robustcli.layers.attention import SqueezeExcitation
from robustcli.layers.multiscale import MultiScalePushPull
from robustcli.layers.pushpull import PushPullConv2d


@dataclass(frozen=True)
class LayerCost:
    """Forward + backward multiply-adds per output pixel (see the module docstring)."""

    conv: int
    definition: int
    fused: int

    @property
    def floor_ratio(self) -> float:
        """The fused algorithm's MACs over the plain convolution's."""
        return self.fused / self.conv

    @property
    def definition_ratio(self) -> float:
        """The literal definition's MACs over the plain convolution's."""
        return self.definition / self.conv


def pull_taps(basis: torch.Tensor) -> int:
    """Non-zero entries of a bilinear pull matrix (the stencil taps the kernel applies)."""
    return int(torch.count_nonzero(basis))


def _pushpull_parts(
    c: int, o: int, k: int, stride: int, bases: list[torch.Tensor]
) -> tuple[int, int, int, list[int]]:
    """``(G, shared GEMM, stencil MACs fwd+bwd, pull sizes)`` per output pixel of push + pulls.

    With stride ``s`` the pulls read the channel-mixed maps at every input pixel (their
    stencils are wider than the stride), so the shared GEMM costs ``s*s`` output pixels' worth.
    """
    gemm = k * k * c * o
    stencils = k * (k + 1) + k * k  # push: forward, backward
    for basis in bases:
        stencils += 2 * (k + 1) * pull_taps(basis)  # each pull: forward, backward
    return gemm, gemm * stride * stride, o * stencils, [basis.shape[0] for basis in bases]


def layer_cost(layer: nn.Module) -> LayerCost:
    """MACs per output pixel, forward + backward, of a plain convolution, a ``PushPullConv2d``
    or a ``MultiScalePushPull`` (see the module docstring for what is counted)."""
    if isinstance(layer, nn.Conv2d):
        c, o = layer.in_channels // layer.groups, layer.out_channels
        macs = 3 * layer.kernel_size[0] * layer.kernel_size[1] * c * o
        return LayerCost(macs, macs, macs)
    if isinstance(layer, PushPullConv2d):
        c, o, k = layer.in_channels, layer.out_channels, layer.kernel_size
        gemm, shared, stencils, (s,) = _pushpull_parts(c, o, k, layer.stride, [layer.pull.basis])
        folded = layer.rectify == "none" and layer.attention is None
        epilogue = 0
        if layer.rectify == "none":  # s_n * P + alpha * Q: forward, both gradients
            epilogue = 3 * 2 * o
        if isinstance(layer.attention, SqueezeExcitation):
            epilogue += o  # the channel means
            if layer.rectify != "none":  # SE on the rectified push: x * w, both gradients
                epilogue += 3 * o
        # folded: one s x s convolution with the kernel pad(K) + alpha*up(K)
        taps = s * s if folded else k * k + s * s
        definition = 3 * taps * c * o + (0 if folded else epilogue)
        return LayerCost(3 * gemm, definition, 3 * shared + stencils + epilogue)
    if isinstance(layer, MultiScalePushPull):
        push = layer.push
        c, o, k = push.in_channels, push.out_channels, push.kernel_size[0]
        gemm, shared, stencils, sizes = _pushpull_parts(
            c, o, k, push.stride[0], [p.basis for p in layer.pulls]
        )
        width = (1 + len(sizes)) * o
        epilogue = 3 * width * o  # the 1x1 fusion (SE and alpha folded in), both gradients
        if layer.attention is not None:
            epilogue += width  # the channel means
        definition = 3 * (k * k + sum(s * s for s in sizes)) * c * o + epilogue
        return LayerCost(3 * gemm, definition, 3 * shared + stencils + epilogue)
    raise TypeError(f"no cost model for {type(layer).__name__}")


def model_cost(model: nn.Module, input_shape: tuple[int, ...]) -> LayerCost:
    """Forward + backward MACs of a whole model for one input of ``input_shape`` (C, H, W):
    every convolution, push-pull layer and linear layer, with push-pull layers counted as
    ``layer_cost`` gives (``conv``: every push-pull layer replaced by a plain convolution)."""
    counted = (nn.Conv2d, PushPullConv2d, MultiScalePushPull, nn.Linear)
    totals = [0, 0, 0]
    hooks = []

    def hook(module: nn.Module, _: tuple, out: torch.Tensor) -> None:
        if isinstance(module, nn.Linear):
            macs = 3 * module.in_features * module.out_features
            cost = LayerCost(macs, macs, macs)
            pixels = out.numel() // module.out_features
        else:
            cost, pixels = layer_cost(module), out.shape[-1] * out.shape[-2]
        for i, v in enumerate((cost.conv, cost.definition, cost.fused)):
            totals[i] += v * pixels

    inside: set[int] = set()
    for module in model.modules():
        if isinstance(module, (PushPullConv2d, MultiScalePushPull)):
            inside.update(id(m) for m in module.modules() if m is not module)
    for module in model.modules():
        if isinstance(module, counted) and id(module) not in inside:
            hooks.append(module.register_forward_hook(hook))
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            param = next(model.parameters())
            model(torch.zeros(1, *input_shape, dtype=param.dtype, device=param.device))
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return LayerCost(*totals)
