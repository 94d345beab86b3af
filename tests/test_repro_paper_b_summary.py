"""repro/summarize_paper_b.py: how the seeds agree, beside the t-interval; the joint set."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "repro"))
from summarize_paper_b import (  # noqa: E402
    joint_correct,
    mean_ci,
    median_diff_ci,
    median_l2,
    seed_agreement,
)


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


def test_the_joint_set_removes_a_less_accurate_models_selection():
    # Same distances on every image; TD misclassifies the 40 with the smallest L2, so its own
    # median rises although no image is more robust under TD.
    d = np.arange(1.0, 101.0)  # 1..100
    bu_ok = np.ones(100, dtype=bool)
    td_ok = d > 40
    assert median_l2(d, td_ok) - median_l2(d, bu_ok) == pytest.approx(70.5 - 50.5)
    both = joint_correct(td_ok, bu_ok)
    assert both.tolist() == td_ok.tolist()
    lo, hi = median_diff_ci(d, td_ok, d, bu_ok, n_boot=500)
    assert lo > 0  # own-set medians: TD "ahead" on every resample
    assert median_diff_ci(d, td_ok, d, bu_ok, n_boot=500, joint=True) == (0.0, 0.0)
