"""repro/check_paper_b_subsets.py: a seed's whole-test-set TD - BU against its small run's
image interval (the attack documents here are hand-made fixtures, not measured results)."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from robustcli.attacks.results import KIND, SCHEMA, SCHEMA_VERSION, outcome_record
from robustcli.attacks.runner import AttackOutcome

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "repro"))
from check_paper_b_subsets import compare_seed, main, render  # noqa: E402
from summarize_paper_b import median_diff_ci  # noqa: E402


def _outcome(model: str, attack: str, d: np.ndarray, wrong: np.ndarray) -> dict:
    labels = np.zeros(len(d), dtype=int)
    pred = np.where(wrong, 1, 0)
    o = AttackOutcome(
        model=model, label=model, attack=attack, branch="all", topdown=model == "td",
        labels=labels, clean_pred=pred, distances=np.where(wrong, 0.0, d),
        status=np.where(wrong, "misclassified", "adversarial"), repeat_distances=d[None, :],
        best_repeat=np.zeros(len(d), dtype=int), repeats=1, seconds=1.0, model_images=len(d),
    )  # fmt: skip
    return outcome_record(o)


def _write(folder: Path, indices, td: dict, bu: dict, hashes=("a", "b"), gz=False) -> Path:
    """An attack folder: per attack name, TD's and BU's distances on ``indices``."""
    wrong = np.arange(len(indices)) % 50 == 7  # a few misclassified images, left out
    outs = [_outcome(m, a, np.asarray(d, float), wrong) for m, g in (("td", td), ("bu", bu))
            for a, d in g.items()]  # fmt: skip
    doc = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "kind": KIND,
           "provenance": {"data": {"indices": [int(i) for i in indices]},
                          "models": [{"sha256": h} for h in hashes]},
           "outcomes": outs}  # fmt: skip
    folder.mkdir()
    text = json.dumps(doc)
    if gz:
        (folder / "attack.json.gz").write_bytes(gzip.compress(text.encode()))
    else:
        (folder / "attack.json").write_text(text)
    return folder


def _median(d: np.ndarray) -> float:
    keep = np.arange(len(d)) % 50 != 7
    return float(np.median(d[keep]))


def test_rows_split_the_attacks_noise_from_the_draw_of_images(tmp_path):
    rng = np.random.default_rng(1)
    big_idx = rng.permutation(400)  # the whole "test set", in the seed's order
    small_idx = big_idx[:100]  # -n 100 with the same --seed: a prefix
    td_big, bu_big = rng.uniform(1, 5, 400), rng.uniform(1, 4, 400)
    # the small run saw the same images, its noise drew other distances for TD
    td_small, bu_small = td_big[:100] + rng.normal(0, 0.3, 100), bu_big[:100]
    small = _write(tmp_path / "s", small_idx, {"gaussian": td_small}, {"gaussian": bu_small})
    big = _write(tmp_path / "b", big_idx, {"gaussian": td_big}, {"gaussian": bu_big}, gz=True)
    (row,) = compare_seed(small, big, ["gaussian"])
    assert row.small == pytest.approx(_median(td_small) - _median(bu_small))
    # the big run on the small run's images: the images are the first 100 of its own order,
    # and its misclassified ones are the ones at its own positions 7, 57, ...
    keep = np.isin(big_idx, small_idx)
    ok = np.arange(400) % 50 != 7
    same = np.median(td_big[keep & ok]) - np.median(bu_big[keep & ok])
    assert row.same_images == pytest.approx(same)
    assert row.whole == pytest.approx(_median(td_big) - _median(bu_big))
    wrong = np.arange(100) % 50 == 7
    lo, hi = median_diff_ci(td_small, ~wrong, bu_small, ~wrong)
    assert (row.lo, row.hi) == (pytest.approx(lo), pytest.approx(hi))
    assert row.inside == (lo <= row.whole <= hi)
    assert (row.n_small, row.n_big) == (100, 400)
    assert row.td_clean == pytest.approx(100 * (1 - 8 / 400))


def test_a_seed_misses_when_any_attack_lies_outside(tmp_path):
    idx = np.arange(200)
    flat = np.full(200, 2.0)
    small = _write(tmp_path / "s", idx[:100], {"gaussian": flat[:100], "uniform": flat[:100]},
                   {"gaussian": flat[:100], "uniform": flat[:100]})  # fmt: skip
    # the big run: gaussian identical, uniform 1 L2 more robust under TD on every image
    big = _write(tmp_path / "b", idx, {"gaussian": flat, "uniform": flat + 1},
                 {"gaussian": flat, "uniform": flat})  # fmt: skip
    rows = compare_seed(small, big, ["gaussian", "uniform"])
    assert [(r.attack, r.inside) for r in rows] == [("gaussian", True), ("uniform", False)]
    text = render(rows)
    assert "| s | uniform | +0.00 [+0.00, +0.00] (100) | +1.00 | +1.00 (200) | NO | +1.00 |" in text
    assert "Seeds missing (a big-run value outside the small run's interval): 1 of 1: s." in text
    assert "Largest |big - small|: 1.00 L2 (all images), 1.00 L2 (the same images)." in text


def test_other_models_or_images_are_refused(tmp_path, monkeypatch):
    idx = np.arange(100)
    d = {"gaussian": np.full(100, 2.0)}
    big = _write(tmp_path / "big", idx, d, d)
    other = _write(tmp_path / "other", idx[:50], d | {"gaussian": d["gaussian"][:50]},
                   {"gaussian": d["gaussian"][:50]}, hashes=("a", "c"))  # fmt: skip
    with pytest.raises(SystemExit, match="attacked different models"):
        compare_seed(other, big, ["gaussian"])
    outside = _write(tmp_path / "outside", idx + 50, d, d)
    with pytest.raises(SystemExit, match="not all among"):
        compare_seed(outside, big, ["gaussian"])
    with pytest.raises(SystemExit, match="no TD and BU outcome of uniform"):
        compare_seed(big, big, ["uniform"])
    monkeypatch.setattr(sys, "argv", ["check", str(big), "--whole", str(big), str(big)])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2  # argparse: one --whole folder per seed
