"""repro/summarize_paper_b.py: how the seeds agree, beside the t-interval."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "repro"))
from summarize_paper_b import mean_ci, seed_agreement  # noqa: E402


def test_one_outlying_seed_widens_the_t_interval_but_not_the_count():
    td = [4.3, 4.4, 4.2, 4.1, 4.6, 4.4, 4.2, 4.4]
    bu = [3.8, 3.9, 3.5, 4.4, 4.1, 3.5, 5.1, 3.6]
    ahead, n, signed, spread = seed_agreement(td, bu)
    assert (ahead, n) == (6, 8)
    d = [t - b for t, b in zip(td, bu, strict=True)]
    assert signed == pytest.approx(stats.wilcoxon(d).pvalue)
    assert spread == pytest.approx(stats.levene(td, bu, center="median").pvalue)
    _, _, lo, _ = mean_ci(d)
    assert lo < 0 < sum(d) / len(d)  # the mean is ahead, its t-interval reaches below 0


def test_every_seed_ahead_is_the_smallest_exact_signed_rank_p():
    ahead, n, signed, _ = seed_agreement([2.0, 3.0, 4.0, 5.0, 6.0], [1.0, 1.5, 2.0, 2.5, 3.1])
    assert (ahead, n) == (5, 5)
    assert signed == pytest.approx(2 / 2**5)  # two-sided, exact: all signs alike


def test_missing_medians_are_left_out_and_too_few_seeds_give_no_p():
    ahead, n, signed, spread = seed_agreement([1.0, math.nan, 3.0], [0.5, 1.0, math.inf])
    assert (ahead, n) == (1, 1)
    assert math.isnan(signed) and math.isnan(spread)
