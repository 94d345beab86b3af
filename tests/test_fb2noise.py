"""Foolbox 2's additive-noise search (paper B's attacks): levels, eps**2 scaling, clipping."""

from __future__ import annotations

import math

import pytest
import torch

from robustcli.attacks.fb2noise import Foolbox2AdditiveNoise


class FoolAtCall:
    """A fake attack context whose model is fooled from its ``k``-th call on (per row)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.calls = 0
        self.rows_seen: list[int] = []

    def fmodel(self, rows=None):  # pragma: no cover - not used by this attack
        raise AssertionError

    def is_adversarial(self, x_adv, y, rows=None):
        self.calls += 1
        self.rows_seen.append(len(x_adv))
        return torch.full((len(x_adv),), self.calls >= self.k, dtype=torch.bool)


@pytest.mark.parametrize("noise", ["gaussian", "uniform"])
def test_first_fooling_level_with_eps_squared_scale(noise):
    torch.manual_seed(0)
    levels, k = 100, 40
    x = torch.full((3, 1, 64, 64), 0.5)  # mid-grey: no clipping at these scales
    ctx = FoolAtCall(k)
    adv = Foolbox2AdditiveNoise(noise, levels=levels).run(ctx, x, torch.zeros(3, dtype=torch.long))
    assert ctx.calls == k  # a linear search that stops at the first fooling level
    scale = (k / levels) ** 2  # Foolbox 2 multiplies the level's noise by the level again
    delta = adv - x
    if noise == "uniform":
        assert delta.abs().max() <= scale + 1e-6
        assert delta.abs().max() > 0.99 * scale
    # Gaussian: std eps/sqrt(3) times eps; uniform on [-s, s]: std s/sqrt(3), the same
    assert delta.std().item() == pytest.approx(scale / math.sqrt(3.0), rel=0.03)


def test_never_fooled_rows_stay_clean_and_fooled_rows_leave_the_search():
    class FoolFirstRow(FoolAtCall):
        def is_adversarial(self, x_adv, y, rows=None):
            self.calls += 1
            self.rows_seen.append(len(x_adv))
            return rows == 0

    x = torch.rand(4, 1, 8, 8)
    ctx = FoolFirstRow(0)
    adv = Foolbox2AdditiveNoise("uniform", levels=10).run(ctx, x, torch.zeros(4, dtype=torch.long))
    assert ctx.rows_seen == [4] + [3] * 9  # row 0 done after the first level
    assert torch.equal(adv[1:], x[1:])
    assert not torch.equal(adv[0], x[0])
    assert adv.min() >= 0 and adv.max() <= 1  # clipped to the bounds


def test_saturated_pixels_clip_about_half_the_noise():
    torch.manual_seed(1)
    x = torch.zeros(2, 1, 64, 64)  # MNIST-like black background
    ctx = FoolAtCall(50)
    adv = Foolbox2AdditiveNoise("gaussian", levels=100).run(
        ctx, x, torch.zeros(2, dtype=torch.long)
    )
    positive = (adv > 0).float().mean().item()
    assert 0.45 < positive < 0.55


def test_bad_arguments():
    with pytest.raises(ValueError, match="noise"):
        Foolbox2AdditiveNoise("laplace")
    with pytest.raises(ValueError, match="levels"):
        Foolbox2AdditiveNoise("gaussian", levels=0)
