"""Noise corruptions: gaussian, shot, impulse and speckle noise (make_cifar_c.py constants).

Each corruption is a pair: ``<name>_draw(n, h, w, c, generator, device)`` returns the random
numbers (a dict of tensors with a leading batch dimension) and ``<name>(x, c, **draws)`` maps
uint8 (N, 3, H, W) images to uint8 images. ``c`` is the severity's recipe constant.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from robustcli.corruptions import _ops

Tensor = torch.Tensor

GAUSSIAN_NOISE = (0.04, 0.06, 0.08, 0.09, 0.10)  # sigma
SHOT_NOISE = (500, 250, 100, 75, 50)  # lambda: Poisson(x * lambda) / lambda
IMPULSE_NOISE = (0.01, 0.02, 0.03, 0.05, 0.07)  # salt & pepper amount
SPECKLE_NOISE = (0.06, 0.10, 0.12, 0.16, 0.20)  # sigma of the multiplicative noise


def gaussian_noise_draw(n, h, w, c, generator, device) -> dict[str, Tensor]:  # noqa: ANN001
    return {"z": _ops.randn((n, 3, h, w), generator, device)}


def gaussian_noise(x: Tensor, c: float, z: Tensor) -> Tensor:
    """``clip(x + N(0, c)) * 255``, truncated (float64, as the recipe)."""
    return _ops.to_uint8(_ops.unit(x, torch.float64).add_(z.double().mul_(c)))


def speckle_noise_draw(n, h, w, c, generator, device) -> dict[str, Tensor]:  # noqa: ANN001
    return {"z": _ops.randn((n, 3, h, w), generator, device)}


def speckle_noise(x: Tensor, c: float, z: Tensor) -> Tensor:
    """``clip(x + x * N(0, c)) * 255``, truncated (float64, as the recipe)."""
    y = _ops.unit(x, torch.float64)
    return _ops.to_uint8(y + y * z.double().mul_(c))


def impulse_noise_draw(n, h, w, c, generator, device) -> dict[str, Tensor]:  # noqa: ANN001
    return {"u": _ops.rand((n, 3, h, w), generator, device)}


def impulse_noise(x: Tensor, c: float, u: Tensor) -> Tensor:
    """Salt and pepper per channel value, as ``skimage.util.random_noise(mode='s&p')``.

    skimage flips a value with probability ``c`` and makes a flipped value salt or pepper with
    probability 1/2 each; one uniform per value gives the same law: salt where ``u < c/2``,
    pepper where ``c/2 <= u < c``. Untouched values stay exactly as they were.
    """
    salt = u < c / 2
    pepper = (u < c) & ~salt
    out = torch.where(salt, torch.tensor(255, dtype=torch.uint8, device=x.device), x)
    return torch.where(pepper, torch.tensor(0, dtype=torch.uint8, device=x.device), out)


# ----------------------------------------------------------------------------------------------
# shot noise: exact Poisson sampling by table lookup
# ----------------------------------------------------------------------------------------------

_BUCKET_BITS = 12  # first-level table: 4096 buckets of the 24-bit uniform per grey level


@functools.cache
def _poisson_tables(lam_scale: int) -> dict[str, np.ndarray]:
    """Inverse-CDF tables of Poisson(k/255 * lam_scale) for the 256 grey levels k.

    ``out[k, m]`` is the recipe's output byte for a draw m; ``bucket[k, j]`` is the output byte
    when every uniform in [j, j+1) / 4096 gives the same byte, else -1 (then ``lo``/``hi`` bound
    the draw, refined by binary search on ``cdf``).
    """
    from scipy.special import pdtr

    lam = (np.arange(256) / 255.0) * lam_scale  # np.array(x) / 255. * c
    top = int(np.ceil(lam.max() + 12 * np.sqrt(lam.max()) + 40))
    m = np.arange(top + 1)
    cdf = pdtr(m[None, :], lam[:, None])  # P(X <= m)
    cdf[:, -1] = 1.0
    out = np.uint8(np.clip(m / lam_scale, 0, 1) * 255)  # np.uint8(np.clip(k / c, 0, 1) * 255)
    nb = 1 << _BUCKET_BITS
    edges = np.arange(nb + 1) / nb
    lo = np.stack([np.searchsorted(cdf[k], edges[:-1], side="right") for k in range(256)])
    hi = np.stack([np.searchsorted(cdf[k], edges[1:], side="left") for k in range(256)])
    lo = np.minimum(lo, top)
    hi = np.minimum(hi, top)
    bucket = np.where(out[lo] == out[hi], out[lo].astype(np.int16), np.int16(-1))
    return {
        "cdf": cdf,
        "out": np.broadcast_to(out, cdf.shape).copy(),
        "bucket": bucket.astype(np.int16),
        "lo": lo.astype(np.int64),
        "hi": hi.astype(np.int64),
    }


def shot_noise_draw(n, h, w, c, generator, device) -> dict[str, Tensor]:  # noqa: ANN001
    return {"u": _ops.rand((n, 3, h, w), generator, device)}


def shot_noise(x: Tensor, c: int, u: Tensor) -> Tensor:
    """``clip(Poisson(x * c) / c) * 255``, truncated.

    The Poisson draw is the inverse CDF of the 24-bit uniform ``u`` (exact up to that
    resolution); most values resolve with one lookup in a (level, bucket) table.
    """
    dev = x.device
    tables = {
        k: _ops.cached(("poisson", c, k), lambda k=k: _poisson_tables(c)[k], dev)
        for k in ("cdf", "out", "bucket", "lo", "hi")
    }
    nb = 1 << _BUCKET_BITS
    uf = u.reshape(-1)
    # level * 4096 + floor(u * 4096), exact in float32 (< 2**24)
    idx = torch.floor(uf * nb).clamp_(max=nb - 1).add_(x.reshape(-1).to(torch.float32), alpha=nb)
    idx = idx.long()
    res = tables["bucket"].reshape(-1)[idx]
    todo = (res < 0).nonzero().squeeze(1)
    if todo.numel():
        lvl = idx[todo] // nb
        ut = uf[todo].double()
        lo = tables["lo"].reshape(-1)[idx[todo]]
        hi = tables["hi"].reshape(-1)[idx[todo]]
        cdf = tables["cdf"]
        width = cdf.shape[1]
        flat_cdf = cdf.reshape(-1)
        while True:  # smallest m in [lo, hi] with cdf[m] > u
            active = lo < hi
            if not bool(active.any()):
                break
            mid = (lo + hi) // 2
            above = flat_cdf[lvl * width + mid] > ut
            hi = torch.where(active & above, mid, hi)
            lo = torch.where(active & ~above, mid + 1, lo)
        res[todo] = tables["out"].reshape(-1)[lvl * width + lo].to(res.dtype)
    return res.to(torch.uint8).reshape(x.shape)
