"""repro/sweep_paper_b_contrast.py: accuracy under a fixed blend towards a grey level."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
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


def test_towards_black_fades_white_below_the_threshold_at_the_closed_form_eps():
    # towards 0: white blends to 1 - eps, below 0.7 once eps > 0.3 (mid-grey took eps > 0.6)
    assert contrast_accuracy(_lm(0.7), X, Y, [0.29, 0.31], towards=0.0) == [100.0, 50.0]


def test_towards_white_lifts_black_above_the_threshold_at_the_closed_form_eps():
    # towards 1: black blends to eps, above 0.7 once eps > 0.7; white stays 1
    assert contrast_accuracy(_lm(0.7), X, Y, [0.69, 0.71], towards=1.0) == [100.0, 50.0]


def test_paired_table_averages_eps_above_zero_and_pairs_seeds():
    from sweep_paper_b_contrast import paired_table

    eps = [0.0, 0.1, 0.2]
    acc = {  # the eps-0 column is left out of the mean: 99 never counts
        "bu": [[99.0, 50.0, 30.0], [99.0, 60.0, 40.0], [99.0, 70.0, 50.0]],
        "td": [[99.0, 60.0, 40.0], [99.0, 62.0, 42.0], [99.0, 80.0, 60.0]],
    }
    rows = paired_table(acc, eps, "bu")
    assert rows[2] == "| bu | 50.0 +- 10.0 | 40.0 / 50.0 / 60.0 |  |  |  |"
    # td - bu per seed: +10, +2, +10 -> mean 7.33, std 4.62, t(2) 4.303 * 4.62 / sqrt(3) = 11.47
    assert rows[3].startswith("| td | 57.3 +- 11.0 | 50.0 / 52.0 / 70.0 | +7.3 [-4.1, +18.8] |")
    assert "| 3 of 3 |" in rows[3]


def test_paired_table_needs_an_eps_above_zero():
    from sweep_paper_b_contrast import paired_table

    with pytest.raises(ValueError, match="eps > 0"):
        paired_table({"bu": [[99.0]]}, [0.0], "bu")
