"""repro/summarize_paper_b.py: how the seeds agree, beside the t-interval; the joint set."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from robustcli.attacks.results import KIND, SCHEMA, SCHEMA_VERSION, outcome_record
from robustcli.attacks.runner import AttackOutcome

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "repro"))
from summarize_paper_b import (  # noqa: E402
    format_p,
    joint_correct,
    main,
    mean_ci,
    median_diff_ci,
    median_l2,
    seed_agreement,
    seed_outcomes,
    welch_ci,
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


def test_a_small_p_keeps_its_digits_instead_of_printing_zero():
    twelve_of_thirteen = [-0.1 * (k + 2) for k in range(12)] + [0.05]
    p = float(stats.wilcoxon(twelve_of_thirteen).pvalue)
    assert p == pytest.approx(4 / 2**13)  # exact: the one positive difference has rank 1
    assert format_p(p) == "4.9e-04"
    assert format_p(0.0391) == "0.039"
    assert format_p(math.nan) == "n/a"


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


def _run(tmp_path: Path, name: str, attack: str, l2: dict[int, float], indices: bool = True):
    """An attack.json of TD and BU on the test images l2's keys (TD's distances; BU's twice)."""
    idx = sorted(l2)
    outcomes = []
    for model, scale in (("td", 1.0), ("bu", 2.0)):
        d = np.array([l2[i] * scale for i in idx])
        labels = np.array(idx) % 10
        o = AttackOutcome(
            model=model, label=model, attack=attack, branch="all", topdown=model == "td",
            labels=labels, clean_pred=labels.copy(), distances=d,
            status=np.array(["adversarial"] * len(idx)), repeat_distances=d[None, :],
            best_repeat=np.zeros(len(idx), dtype=int), repeats=1, seconds=1.0,
            model_images=len(idx),
        )  # fmt: skip
        outcomes.append(outcome_record(o))
    data = {"indices": idx} if indices else {}
    doc = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "kind": KIND,
           "provenance": {"data": data}, "outcomes": outcomes}  # fmt: skip
    (tmp_path / name).mkdir()
    (tmp_path / name / "attack.json").write_text(json.dumps(doc))
    return tmp_path / name


def test_runs_with_different_n_are_joined_on_the_images_they_share(tmp_path, capsys):
    # -n 4 and -n 2 of one --seed: the 2 images are among the 4 (a seeded permutation's prefix)
    big = _run(tmp_path, "sp", "salt-pepper", {1: 5.0, 3: 1.0, 5: 7.0, 7: 2.0})
    small = _run(tmp_path, "pw", "pointwise", {3: 0.5, 7: 3.0})
    got = {(o.model, o.attack): o for o in seed_outcomes(f"{big},{small}")}
    assert got[("td", "salt-pepper")].distances.tolist() == [1.0, 2.0]  # images 3 and 7 only
    assert got[("bu", "salt-pepper")].labels.tolist() == [3, 7]
    assert got[("td", "pointwise")].distances.tolist() == [0.5, 3.0]
    # the worst case is now per image over both attacks on the same images
    assert got[("td", "worst-case")].distances.tolist() == [0.5, 2.0]
    assert got[("bu", "worst-case")].distances.tolist() == [1.0, 4.0]
    assert "restricted to the 2 images of all parts (of 4, 2)" in capsys.readouterr().err


def test_runs_with_different_n_and_no_indices_are_refused(tmp_path):
    big = _run(tmp_path, "a", "blur", {1: 5.0, 3: 1.0, 5: 7.0}, indices=False)
    small = _run(tmp_path, "b", "contrast", {3: 0.5, 7: 3.0})
    with pytest.raises(SystemExit, match=r"different numbers of images \(\[2, 3\]\)"):
        seed_outcomes(f"{big},{small}")
    other = _run(tmp_path, "c", "spatial", {2: 1.0, 4: 1.0, 6: 1.0})
    with pytest.raises(SystemExit, match="share no test image"):
        seed_outcomes(f"{big.parent / 'b'},{other}")


def test_select_keeps_every_per_sample_array_aligned():
    d = np.array([0.0, 1.0, np.inf, 2.0])
    o = AttackOutcome(
        model="m", label="m", attack="a", branch="all", topdown=False,
        labels=np.arange(4), clean_pred=np.array([9, 1, 2, 3]), distances=d,
        status=np.array(["misclassified", "adversarial", "failed", "adversarial"]),
        repeat_distances=np.stack([d, d + 1]), best_repeat=np.array([-1, 0, -1, 1]),
        repeats=2, seconds=1.0, model_images=4,
    )  # fmt: skip
    s = o.select(np.array([True, False, True, True]))
    assert s.n == 3 and s.labels.tolist() == [0, 2, 3]
    assert s.status.tolist() == ["misclassified", "failed", "adversarial"]
    assert s.repeat_distances.shape == (2, 3) and s.repeat_distances[1].tolist() == [
        1.0,
        np.inf,
        3.0,
    ]
    assert s.best_repeat.tolist() == [-1, -1, 1] and s.n_attacked == 2
    with pytest.raises(ValueError, match="mask over 4 samples"):
        o.select(np.array([True, False]))


def test_the_welch_interval_is_the_closed_form_for_unequal_variances():
    a, b = [1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0]
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 3  # (5/3) / 4, (1/3) / 3
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
    h = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    d, lo, hi, p = welch_ci(a, b)
    assert d == pytest.approx(2.5 - 1 / 3)
    assert (lo, hi) == (pytest.approx(d - h), pytest.approx(d + h))
    assert p == pytest.approx(2 * stats.t.sf(d / math.sqrt(va + vb), df))
    d, lo, hi, p = welch_ci([1.0, math.nan], [1.0, 2.0])  # one finite seed: no interval
    assert d == pytest.approx(-0.5) and math.isnan(lo) and math.isnan(hi) and math.isnan(p)


def test_against_adds_the_difference_between_two_groups_of_seeds(tmp_path, monkeypatch):
    # BU's distances are twice TD's, so TD - BU median L2 = -(TD's median) per seed
    group = [_run(tmp_path, f"a{k}", "gaussian", {1: m - 1, 2: m, 3: m + 1}) for k, m in
             enumerate((2.0, 3.0, 4.0))]  # fmt: skip
    other = [_run(tmp_path, f"b{k}", "gaussian", {1: m - 0.5, 2: m, 3: m + 0.5}) for k, m in
             enumerate((1.0, 1.5))]  # fmt: skip
    out = tmp_path / "summary"
    argv = ["summarize_paper_b.py", *map(str, group), "--against", *map(str, other)]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(out)])
    main()
    d, lo, hi, p = welch_ci([-2.0, -3.0, -4.0], [-1.0, -1.5])
    assert d == pytest.approx(-1.75)
    lines = out.with_suffix(".md").read_text().splitlines()
    # keyed by the second column: the group rows' "median L2 of" (the main table's row: "3")
    rows = {r.split(" | ")[1]: r for r in lines if r.startswith("| gaussian | ")}
    assert rows["TD - BU"].startswith("| gaussian | TD - BU | 3 | -3.000 +- 1.000 | 2 |")
    assert f"| -1.750 [{lo:.3f}, {hi:.3f}] | {p:.3f} |" in rows["TD - BU"]
    assert "-1.250 +- 0.354" in rows["TD - BU"]
    # each model's own median: TD 3 against 1.25 (+1.75), BU twice that (+3.5)
    assert "| 3.000 +- 1.000 | 2 | 1.250 +- 0.354 | 1.750 [" in rows["TD"]
    assert "| 6.000 +- 2.000 | 2 | 2.500 +- 0.707 | 3.500 [" in rows["BU"]


def test_a_wider_level_widens_the_t_interval_by_the_quantile_ratio():
    v = [1.0, 2.0, 4.0, 7.0]
    m, s, lo, hi = mean_ci(v)
    m2, s2, lo2, hi2 = mean_ci(v, level=0.975)
    assert (m2, s2) == (m, s) == (pytest.approx(3.5), pytest.approx(math.sqrt(7)))
    ratio = stats.t.ppf(0.9875, 3) / stats.t.ppf(0.975, 3)
    assert hi2 - m == pytest.approx((hi - m) * ratio) and m - lo2 == pytest.approx((m - lo) * ratio)


def test_paired_gives_the_per_seed_difference_not_the_welch_one(tmp_path, monkeypatch):
    # the same three seeds (same images) twice; TD's median per seed 2, 3, 4 against 1.8, 3.1,
    # 3.5, so TD - BU (= -TD's median, BU being twice TD) differs by -0.2, +0.1, -0.5 per seed
    at30 = [_run(tmp_path, f"e30s{k}", "gaussian", {1: m - 1, 2: m, 3: m + 1}) for k, m in
            enumerate((2.0, 3.0, 4.0))]  # fmt: skip
    at12 = [_run(tmp_path, f"e12s{k}", "gaussian", {1: m - 1, 2: m, 3: m + 1}) for k, m in
            enumerate((1.8, 3.1, 3.5))]  # fmt: skip
    out = tmp_path / "summary"
    argv = ["summarize_paper_b.py", *map(str, at30), "--against", *map(str, at12), "--paired"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(out), "--level", "0.975"])
    main()
    lines = out.with_suffix(".md").read_text().splitlines()
    assert "TD - BU median L2 [97.5 % CI]" in lines[0]
    assert "| paired difference [97.5 % t CI] | seeds above 0 | signed-rank p |" in lines[-5]
    rows = {r.split(" | ")[1]: r for r in lines if r.startswith("| gaussian | ")}
    d = [-0.2, 0.1, -0.5]  # TD - BU at 30 minus at 12, per seed
    m, _, lo, hi = mean_ci(d, level=0.975)
    assert m == pytest.approx(-0.2)
    assert (
        f"| -0.200 [{lo:.3f}, {hi:.3f}] | 1 of 3 | {stats.wilcoxon(d).pvalue:.3f} |"
        in rows["TD - BU"]
    )
    assert rows["TD"].startswith("| gaussian | TD | 3 | 3.000 +- 1.000 | 2.800 +- 0.889 | 0.200 [")
    assert "| 2 of 3 |" in rows["TD"]  # TD's own median is higher at 30 on seeds 0 and 2


def test_paired_refuses_folders_of_different_images_or_counts(tmp_path, monkeypatch):
    a = _run(tmp_path, "a", "gaussian", {1: 1.0, 2: 2.0, 3: 3.0})
    b = _run(tmp_path, "b", "gaussian", {4: 1.0, 5: 2.0, 6: 3.0})
    monkeypatch.setattr(sys, "argv", ["s", str(a), "--against", str(b), "--paired"])
    with pytest.raises(SystemExit, match="attacked different images: pair folders of the same"):
        main()
    monkeypatch.setattr(sys, "argv", ["s", str(a), str(b), "--against", str(a), "--paired"])
    with pytest.raises(SystemExit):
        main()
