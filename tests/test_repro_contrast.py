"""repro/sweep_paper_b_contrast.py: accuracy under a fixed blend towards mid-grey."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from robustcli.models.loaded import LoadedModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "repro"))
from sweep_paper_b_contrast import contrast_accuracy  # noqa: E402


class Threshold(nn.Module):
    """Class 1 when the mean pixel exceeds ``t``, else class 0."""

    def __init__(self, t: float) -> None:
        super().__init__()
        self.t = t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([self.t - m, m - self.t], dim=1)


def _lm(t: float, mean: float = 0.0, std: float = 1.0) -> LoadedModel:
    return LoadedModel(Threshold(t), "threshold", "test", (mean,), (std,), (1, 2, 2))


X = torch.stack([torch.ones(1, 2, 2), torch.zeros(1, 2, 2)])  # white (class 1), black (class 0)
Y = torch.tensor([1, 0])


def test_a_mid_grey_threshold_is_contrast_invariant():
    # (1 - eps) x + eps / 2 - 1/2 = (1 - eps) (x - 1/2): the sign survives every eps < 1
    assert contrast_accuracy(_lm(0.5), X, Y, [0.0, 0.5, 0.9, 0.99]) == [100.0] * 4


def test_a_threshold_above_grey_loses_white_at_the_closed_form_eps():
    # white blends to 1 - eps/2, which falls below 0.7 once eps > 0.6; black stays below
    assert contrast_accuracy(_lm(0.7), X, Y, [0.0, 0.5, 0.59, 0.61, 0.9]) == [
        100.0,
        100.0,
        100.0,
        50.0,
        50.0,
    ]


def test_the_model_sees_its_normalised_input():
    # mean 0.5, std 0.5 maps [0, 1] to [-1, 1]: threshold 0.4 there is 0.7 in [0, 1]
    assert contrast_accuracy(_lm(0.4, 0.5, 0.5), X, Y, [0.59, 0.61]) == [100.0, 50.0]


def test_batches_do_not_change_the_count():
    x, y = X.repeat(3, 1, 1, 1), Y.repeat(3)
    assert contrast_accuracy(_lm(0.7), x, y, [0.61], batch=4) == [50.0]
