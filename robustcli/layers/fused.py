"""Fused CPU kernel for the push and pull responses of one or more pull scales.

Why: in eager PyTorch the pull response is either a dense ``s x s`` convolution (5.4x the
multiply-adds of the push at k=3, h=2) or the bilinear factorisation of ``pushpull.py``, which
materialises a 9x wider tensor and runs slow grouped convolutions. Both miss the speed goal.

What: the channel mixing is done first and once, for all taps and all scales::

    M_ab = sum_c K[:, c, a, b] X_c                      one GEMM (as costly as the push conv)
    push = sum_ab shift_ab(M_ab)                        = X * K
    pull = sum_ab (A[:, a] A[:, b]^T) (*) M_ab          = X * up(K),  up(K) = A K A^T

because fixed spatial filters commute with channel mixing. The spatial filters are a cheap
separable stencil; the backward pass applies their transposes and two more GEMMs, so push and
every pull scale together cost the GEMM work of one plain convolution. Each image is processed
in cache, one row at a time, on channels_last data with the output channels in SIMD lanes
(``csrc/pushpull_cpu.cpp``, one image per task in ``at::parallel_for``); contiguous (NCHW) inputs
are converted, so channels_last networks avoid two copies per layer.

The C++ source is compiled on first use with ``torch.utils.cpp_extension`` (needs a C++ compiler
and ``ninja``; about a minute, then cached). When that is not possible, or on other devices, the
callers fall back to the dense convolution; ``kernel_status()`` says which is used and why.
Set ``ROBUSTCLI_PP_KERNEL=0`` to disable the kernel.
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

_SOURCE = Path(__file__).with_name("csrc") / "pushpull_cpu.cpp"
_state: dict[str, object] = {}


def _load() -> bool:
    if "ok" in _state:
        return bool(_state["ok"])
    ok, why = False, ""
    if os.environ.get("ROBUSTCLI_PP_KERNEL", "1") == "0":
        why = "disabled by ROBUSTCLI_PP_KERNEL=0"
    else:
        try:
            # importing cpp_extension logs a CUDA_HOME notice on CPU-only machines: not ours
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            from torch.utils.cpp_extension import load

            _ninja_on_path()
            load(
                name="robustcli_pushpull",
                sources=[str(_SOURCE)],
                extra_cflags=["-O3", "-march=native", "-fopenmp"],
                extra_ldflags=["-fopenmp"],
                is_python_module=False,
                verbose=False,
            )
            ok = hasattr(torch.ops.robustcli_pushpull, "forward")
            why = "compiled" if ok else "the compiled library registered no operator"
        except Exception as exc:  # compiler, ninja or headers missing: fall back, say why
            why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200]}"
            warnings.warn(
                f"push-pull CPU kernel unavailable ({why}); using the dense pull convolution",
                RuntimeWarning,
                stacklevel=3,
            )
    _state["ok"], _state["why"] = ok, why
    return ok


def _ninja_on_path() -> None:
    """torch runs ``ninja`` from PATH; pip's ninja (a dependency) sits beside the interpreter,
    which is not on PATH when ``.venv/bin/robust`` runs without an activated venv."""
    if shutil.which("ninja") is None:
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except (ImportError, AttributeError):
            pass


def can_build() -> bool:
    """Whether this machine has what the kernel's build needs (a C++ compiler and ninja) and the
    kernel is not disabled: where this holds, a kernel that does not build is a bug."""
    _ninja_on_path()
    return (
        os.environ.get("ROBUSTCLI_PP_KERNEL", "1") != "0"
        and shutil.which(os.environ.get("CXX", "c++")) is not None
        and shutil.which("ninja") is not None
    )


def kernel_status() -> str:
    """One line saying whether the fused CPU kernel is in use (compiling it if needed)."""
    return f"fused CPU kernel: {'yes' if _load() else 'no'} ({_state['why']})"


def available(x: torch.Tensor) -> bool:
    """Whether the fused kernel can compute push-pull responses for input ``x``."""
    return x.device.type == "cpu" and _load()


class _PushPullResponses(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, stride, padding, *bases):  # noqa: ANN001, ANN205
        ctx.save_for_backward(x, weight, *bases)
        ctx.stride, ctx.padding = stride, padding
        (packed,) = torch.ops.robustcli_pushpull.forward(
            x, weight, list(bases), stride, padding, None, False
        )
        return packed

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, weight, *bases = ctx.saved_tensors
        gx, gw = torch.ops.robustcli_pushpull.backward(
            [grad],
            x,
            weight,
            bases,
            ctx.stride,
            ctx.padding,
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            [],
            None,
            None,
            None,
        )
        gx = gx if ctx.needs_input_grad[0] else None
        gw = gw if ctx.needs_input_grad[1] else None
        return (gx, gw, None, None) + (None,) * len(bases)


class _PushPullReLU(torch.autograd.Function):
    """``relu(X*K) - alpha * relu(-X*up(K))`` in one pass (stride 1, same padding)."""

    @staticmethod
    def forward(ctx, x, weight, alpha, padding, basis):  # noqa: ANN001, ANN205
        keep_pull = bool(ctx.needs_input_grad[2])  # the alpha gradient needs relu(-Q)
        out, mask, *pull = torch.ops.robustcli_pushpull.forward(
            x, weight, [basis], 1, padding, alpha, keep_pull
        )
        ctx.mark_non_differentiable(mask)
        ctx.save_for_backward(x, weight, alpha, basis, mask, *pull)
        ctx.padding = padding
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, weight, alpha, basis, mask, *pull = ctx.saved_tensors
        gx, gw = torch.ops.robustcli_pushpull.backward(
            [grad],
            x,
            weight,
            [basis],
            1,
            ctx.padding,
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            [mask],
            alpha,
            None,
            None,
        )
        galpha = None
        if ctx.needs_input_grad[2]:
            galpha = -(torch.relu(-pull[0]) * grad).sum((0, 2, 3))
            galpha = galpha.sum() if alpha.numel() == 1 else galpha
            galpha = galpha.reshape(alpha.shape)
        return (
            gx if ctx.needs_input_grad[0] else None,
            gw if ctx.needs_input_grad[1] else None,
            galpha,
            None,
            None,
        )


def like_input(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``out`` in ``x``'s memory format (the kernel writes channels_last on its fast path)."""
    if x.is_contiguous():
        return out.contiguous()
    if x.is_contiguous(memory_format=torch.channels_last):
        return out.contiguous(memory_format=torch.channels_last)
    return out


def fast_geometry(kernel_size: int, stride: int, padding: int) -> bool:
    """Whether the kernel's fast path (and the fused ReLU) applies: stride 1, same padding."""
    return kernel_size % 2 == 1 and stride == 1 and padding == kernel_size // 2


def _kernel_dtype(
    x: torch.Tensor, *tensors: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``x`` as the kernel computes it (float32/float64; other dtypes, e.g. bf16 under autocast,
    in float32) and ``tensors`` (weights, alpha, bases) in that dtype."""
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    return x, [t.to(x.dtype) for t in tensors]


def pushpull_relu(
    x: torch.Tensor, weight: torch.Tensor, basis: torch.Tensor, alpha: torch.Tensor
) -> torch.Tensor:
    """``relu(X * K) - alpha * relu(X * (-up(K)))``, stride 1, same padding, no bias.

    ``alpha`` is a scalar tensor or one value per output channel (it may require grad).
    """
    x, (w, a, b) = _kernel_dtype(x, weight, alpha, basis)
    with torch.autocast("cpu", enabled=False):
        return _PushPullReLU.apply(x, w, a, weight.shape[-1] // 2, b)


def pushpull_responses(
    x: torch.Tensor,
    weight: torch.Tensor,
    bases: list[torch.Tensor],
    stride: int = 1,
    padding: int = 1,
) -> torch.Tensor:
    """``[X * K, X * up_1(K), ..., X * up_m(K)]`` along the channels, ``up_i(K) = A_i K A_i^T``.

    ``bases`` are the ``S_i x k`` bilinear matrices (``pushpull.bilinear_matrix``). The pull
    responses are un-negated. Float32 and float64; other dtypes (autocast) run in float32. The
    result (N x (1+m)O x Ho x Wo) is channels_last on the fast path (stride 1, same padding),
    contiguous otherwise: split it with ``torch.split(out, O, dim=1)``.
    """
    x, (weight, *bases) = _kernel_dtype(x, weight, *bases)
    with torch.autocast("cpu", enabled=False):
        return _PushPullResponses.apply(x, weight, stride, padding, *bases)


def _flat(t: torch.Tensor) -> torch.Tensor:
    """N x C x H x W -> N x HW x C (a view of a channels_last tensor)."""
    n, c, h, w = t.shape
    return t.permute(0, 2, 3, 1).reshape(n, h * w, c)


def _lanes_fit(t: torch.Tensor, *channels: int) -> bool:
    """Whether the kernel's per-sample products apply to ``t``: the channel counts that are
    vectorised fill 64 bytes, a whole number of the kernel's native vectors on every target
    (16, 32 or 64 bytes: SSE/NEON, AVX2, AVX-512)."""
    lanes = 64 // t.element_size()
    return _load() and all(c % lanes == 0 for c in channels)


def _mix_forward(rf: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``rf[n] @ f[n]^T`` (N x HW x O) for ``rf`` N x HW x C and ``f`` N x O x C."""
    if _lanes_fit(rf, f.shape[1]):
        return torch.ops.robustcli_pushpull.mix_forward(rf, f.contiguous())
    return torch.bmm(rf, f.transpose(1, 2))


def _mix_grad_input(g: torch.Tensor, f: torch.Tensor, gz: torch.Tensor | None) -> torch.Tensor:
    """``g f + gz / HW``: the gradient of ``_mix_forward``'s input plus the channel means'."""
    if _lanes_fit(g, f.shape[2]):
        empty = g.new_empty(0)
        return torch.ops.robustcli_pushpull.mix_grad_input(
            g, f.contiguous(), empty if gz is None else gz.contiguous()
        )
    if gz is None:
        return torch.bmm(g, f)
    return torch.baddbmm(gz[:, None, :] / g.shape[1], g, f)


def _mix_grad_weight(g: torch.Tensor, rf: torch.Tensor) -> torch.Tensor:
    """``g^T rf``: the gradient of ``_mix_forward``'s weights."""
    if _lanes_fit(rf, rf.shape[2]):
        return torch.ops.robustcli_pushpull.mix_grad_weight(g, rf)
    return torch.bmm(g.transpose(1, 2), rf)


def _mix_apply(
    rf: torch.Tensor, build: Callable, params: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, tuple]:
    """Forward of the mix on flat responses ``rf`` (N x HW x C): ``(out, graph)``, ``out``
    N x HW x O and ``graph`` what ``_mix_small_backward`` needs."""
    # non-leaf inputs (a clamped alpha) enter the small graph as fresh leaves, so that
    # autograd.grad stops there and the outer graph receives their gradients from backward
    params = tuple(
        p.detach().requires_grad_(True) if p.requires_grad and p.grad_fn is not None else p
        for p in params
    )
    with torch.enable_grad():
        z = rf.mean(dim=1).detach().requires_grad_(True)
        f, bias = build(z, *params)
    out = _mix_forward(rf, f.detach())
    if bias is not None:
        out += bias.detach()[:, None, :]
    return out, (z, f, bias, params)


def _mix_small_backward(
    graph: tuple, g: torch.Tensor, rf: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor, list[torch.Tensor | None]]:
    """From ``g = dL/dout`` (N x HW x O): ``dL/df`` (``g^T rf``) back through ``build`` to the
    means' gradient ``gz`` and the parameters'. Returns ``(gz, f, param grads)``."""
    z, f, bias, params = graph
    outputs, cotangents = [], []
    if f.requires_grad:
        outputs.append(f)
        cotangents.append(_mix_grad_weight(g, rf))
    if bias is not None and bias.requires_grad:
        outputs.append(bias)
        cotangents.append(g.sum(dim=1))
    inputs = [z] + [p for p in params if p.requires_grad]
    grads = [None] * len(inputs)
    if outputs:
        with torch.enable_grad():
            grads = torch.autograd.grad(outputs, inputs, cotangents, allow_unused=True)
    it = iter(grads[1:])
    return grads[0], f.detach(), [next(it) if p.requires_grad else None for p in params]


def _unflat(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """N x HW x C -> N x C x H x W (channels_last)."""
    return t.view(t.shape[0], h, w, -1).permute(0, 3, 1, 2)


class _MixByMeans(torch.autograd.Function):
    """``out[n] = f_n @ r[n] + bias_n`` with ``(f, bias) = build(mean_hw(r), *params)``.

    One autograd node for the whole epilogue: the backward pass folds the gradient of the channel
    means into the product for ``dL/dr`` (one pass over ``r`` instead of three) and runs the small
    ``build`` graph (SE, alpha, fusion weights) with ``torch.autograd.grad``.
    """

    @staticmethod
    def forward(ctx, r, build, *params):  # noqa: ANN001, ANN205
        rf = _flat(r.contiguous(memory_format=torch.channels_last))
        out, ctx.graph = _mix_apply(rf, build, params)
        ctx.save_for_backward(rf)
        return _unflat(out, r.shape[2], r.shape[3])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        (rf,) = ctx.saved_tensors
        g = _flat(grad.contiguous(memory_format=torch.channels_last))
        gz, f, gparams = _mix_small_backward(ctx.graph, g, rf)
        gr = _mix_grad_input(g, f, gz)
        return (_unflat(gr, grad.shape[2], grad.shape[3]), None, *gparams)


class _PushPullMix(torch.autograd.Function):
    """The kernel's responses and ``_MixByMeans`` in one node (fast path, full vectors): the
    backward pass turns ``dL/dout`` into the responses' gradients row by row inside the kernel,
    so no N x HW x (1+m)O gradient tensor is written and read back."""

    @staticmethod
    def forward(ctx, x, weight, padding, build, n_bases, *rest):  # noqa: ANN001, ANN205
        bases, params = rest[:n_bases], rest[n_bases:]
        (packed,) = torch.ops.robustcli_pushpull.forward(
            x, weight, list(bases), 1, padding, None, False
        )
        rf = _flat(packed)
        out, ctx.graph = _mix_apply(rf, build, params)
        ctx.save_for_backward(x, weight, rf, *bases)
        ctx.padding = padding
        return _unflat(out, packed.shape[2], packed.shape[3])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, weight, rf, *bases = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        gz, f, gparams = _mix_small_backward(ctx.graph, _flat(grad), rf)
        gx, gw = torch.ops.robustcli_pushpull.backward(
            [grad],
            x,
            weight,
            bases,
            1,
            ctx.padding,
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            [],
            None,
            f,
            gz,
        )
        gx = gx if ctx.needs_input_grad[0] else None
        gw = gw if ctx.needs_input_grad[1] else None
        return (gx, gw, None, None, None) + (None,) * len(bases) + tuple(gparams)


def mix_by_means(
    responses: torch.Tensor,
    build: Callable[..., tuple[torch.Tensor, torch.Tensor | None]],
    *params: torch.Tensor,
) -> torch.Tensor:
    """A per-sample 1x1 convolution whose weights depend on the channel means of its input.

    ``build(z, *params)`` gets the means ``z`` (N x C) of ``responses`` (N x C x H x W) and
    returns ``(f, bias)``: weights N x O x C and a bias N x O (or None); the result is
    ``f[n] @ responses[n] + bias[n]`` per pixel, channels_last. ``params`` are every tensor
    ``build`` uses that needs a gradient; ``build`` must use non-leaf ones (a clamped alpha)
    through its arguments, leaf parameters may be read from the module. The layers use it to
    apply squeeze-and-excitation, the pull's alpha and (MSPP) the 1x1 fusion in one product on
    the kernel's packed responses instead of splitting, scaling and concatenating full tensors.
    """
    return _MixByMeans.apply(responses, build, *params)


def pushpull_mix(
    x: torch.Tensor,
    weight: torch.Tensor,
    bases: list[torch.Tensor],
    stride: int,
    padding: int,
    build: Callable[..., tuple[torch.Tensor, torch.Tensor | None]],
    *params: torch.Tensor,
) -> torch.Tensor:
    """``mix_by_means(pushpull_responses(x, weight, bases, stride, padding), build, *params)``,
    as one autograd node where the kernel's fast path applies and the channels fill vectors."""
    x, (weight, *bases) = _kernel_dtype(x, weight, *bases)
    o, k = weight.shape[0], weight.shape[-1]
    with torch.autocast("cpu", enabled=False):
        if fast_geometry(k, stride, padding) and _lanes_fit(x, o):
            return _PushPullMix.apply(x, weight, padding, build, len(bases), *bases, *params)
        return mix_by_means(pushpull_responses(x, weight, bases, stride, padding), build, *params)
