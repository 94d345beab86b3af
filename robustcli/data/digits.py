"""``digits``, the embedded offline default: scikit-learn's 1,797 real 8x8 handwritten digits
(UCI optdigits, 0..16 grey levels scaled to 0..255). Split: in each class, every fifth image is
in ``test`` (364 images), the rest in ``train`` (1,433). No download, no randomness."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch

from robustcli.errors import DataError


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits.csv.gz, read without importing sklearn.datasets (seconds)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError(
            "the embedded digits dataset needs scikit-learn: pip install scikit-learn"
        ) from None
    digits = load_digits()
    return digits.images, digits.target.astype(np.int64)


def load_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8, ``N x 1 x 8 x 8``) and labels of one split of the embedded digits."""
    raw, target = _digits_arrays()
    images = np.rint(raw * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    # every fifth image of each class is a test image: balanced and deterministic
    rank_in_class = np.zeros(len(target), dtype=np.int64)
    for c in np.unique(target):
        where = np.flatnonzero(target == c)
        rank_in_class[where] = np.arange(len(where))
    is_test = rank_in_class % 5 == 0
    keep = is_test if split == "test" else ~is_test
    x = torch.from_numpy(images[keep]).unsqueeze(1).contiguous()
    return x, torch.from_numpy(target[keep])
