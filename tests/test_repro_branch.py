"""repro/summarize_paper_b_branch.py: Fig. 5 (which input of a TD net is vulnerable) over seeds."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from robustcli.attacks.results import KIND, SCHEMA, SCHEMA_VERSION
from robustcli.errors import RobustError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "repro"))
from summarize_paper_b_branch import (  # noqa: E402
    branch_figure,
    branch_seed,
    branch_table,
    vulnerable,
    vulnerable_table,
)


def _write(tmp_path: Path, name: str, transfer: dict, l2: dict) -> Path:
    rows = [{"model": "td", "attack": a, "clean": 60.0, **v} for a, v in transfer.items()]
    summary = [
        {"model": "td", "attack": a, "branch": b, "median_l2": v}
        for a, per in l2.items()
        for b, v in per.items()
    ]
    summary.append({"model": "td", "attack": "gaussian", "branch": "all", "median_l2": 0.5})
    doc = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "summary": summary,
        "branch_transfer": {"rows": rows},
        "outcomes": [],
    }
    d = tmp_path / name
    d.mkdir()
    (d / "attack.json").write_text(json.dumps(doc))
    return d


def test_one_seed_reads_transfer_and_per_input_l2_with_inf(tmp_path):
    d = _write(
        tmp_path,
        "s0",
        {"gaussian": {"all": 3.0, "high": 15.0, "mid": 59.5, "low": 60.0}},
        {"gaussian": {"high": 1.66, "mid": 11.72, "low": "inf"}},
    )
    transfer, l2 = branch_seed(d)
    assert transfer == {
        "gaussian": {"clean": 60.0, "all": 3.0, "high": 15.0, "mid": 59.5, "low": 60.0}
    }
    assert l2 == {"gaussian": {"high": 1.66, "mid": 11.72, "low": math.inf}}  # "all" left out


def test_the_table_averages_transfer_and_lists_l2_per_seed(tmp_path):
    a = {"gaussian": {"all": 2.0, "high": 10.0, "mid": 50.0, "low": 60.0}}
    b = {"gaussian": {"all": 4.0, "high": 20.0, "mid": 60.0, "low": 60.0}}
    la = {"gaussian": {"high": 1.5, "mid": 10.0, "low": "inf"}}
    lb = {"gaussian": {"high": 2.0, "mid": 12.0, "low": "inf"}}
    rows = branch_table(
        [branch_seed(_write(tmp_path, "a", a, la)), branch_seed(_write(tmp_path, "b", b, lb))]
    )
    assert rows[0].startswith("| attack | (a) all | (a) high |")
    # std (ddof 1) of (2, 4) is sqrt(2) = 1.41; of (10, 20) 7.07; of (60, 60) 0
    assert rows[2] == (
        "| gaussian | 3.0 +- 1.4 | 15.0 +- 7.1 | 55.0 +- 7.1 | 60.0 +- 0.0 "
        "| 1.50 / 2.00 | 10.00 / 12.00 | inf / inf |"
    )


def test_a_folder_without_a_branch_test_is_named(tmp_path):
    d = _write(tmp_path, "plain", {}, {})
    with pytest.raises(RobustError, match="no branch test.*--branch"):
        branch_seed(d)


def test_a_cells_vulnerable_input_needs_the_minimum_drop_and_a_unique_leader():
    row = {"clean": 60.0, "all": 2.0, "high": 52.0, "mid": 56.0, "low": 60.0}
    l2 = {"high": 1.5, "mid": 4.0, "low": math.inf}
    assert vulnerable(row, l2, 5.0) == ("high", "high")  # drop 8 >= 5
    assert vulnerable(row, l2, 10.0) == ("none", "high")  # drop 8 < 10
    tied = {**row, "mid": 52.0000006}  # float32 noise of a stored accuracy still ties
    assert vulnerable(tied, {"high": 2.0, "mid": 2.0, "low": 3.0}, 5.0) == ("tie", "tie")
    never = {"high": math.inf, "mid": math.inf, "low": math.inf}
    assert vulnerable({**row, "mid": 40.0}, never, 5.0) == ("mid", "none")


def test_the_vulnerable_table_counts_high_cells_without_the_worst_case(tmp_path):
    a = {
        "gaussian": {"all": 2.0, "high": 10.0, "mid": 50.0, "low": 60.0},
        "blur": {"all": 2.0, "high": 58.0, "mid": 59.0, "low": 60.0},
        "worst-case": {"all": 0.0, "high": 10.0, "mid": 50.0, "low": 60.0},
    }
    la = {
        "gaussian": {"high": 1.5, "mid": 10.0, "low": "inf"},
        "blur": {"high": 3.0, "mid": 2.0, "low": "inf"},
        "worst-case": {"high": 1.5, "mid": 2.0, "low": "inf"},
    }
    rows = vulnerable_table([branch_seed(_write(tmp_path, "a", a, la))], 5.0)
    assert rows[2] == "| gaussian | high / high |"
    assert rows[3] == "| blur | none / mid |"  # a 2-point drop names no input
    assert rows[4] == "| worst-case | high / high |"
    assert rows[-1] == "high input the vulnerable one: (a) 1 of 2 cells, (b) 1 of 2"


def test_an_input_not_attacked_alone_is_a_dash_and_left_out_of_b(tmp_path):
    a = {"gaussian": {"all": 2.0, "high": 10.0, "mid": 50.0, "low": 30.0}}
    la = {"gaussian": {"high": 9.0, "mid": 4.0}}  # --branch all,high,mid: no low row
    seed = branch_seed(_write(tmp_path, "a", a, la))
    assert branch_table([seed])[2].endswith("| 9.00 | 4.00 | - |")
    assert vulnerable_table([seed], 5.0)[2] == "| gaussian | high / mid |"


def test_the_figure_draws_the_mean_over_seeds_per_input(tmp_path):
    a = {"gaussian": {"all": 2.0, "high": 10.0, "mid": 50.0, "low": 60.0}}
    b = {"gaussian": {"all": 4.0, "high": 20.0, "mid": 60.0, "low": 60.0}}
    l2 = {"gaussian": {"high": 1.0}}
    fig = branch_figure([branch_seed(_write(tmp_path, n, t, l2)) for n, t in (("a", a), ("b", b))])
    (ax,) = fig.axes
    heights = [p.get_height() for p in ax.patches]
    assert heights == [60.0, 3.0, 15.0, 55.0, 60.0]  # clean, all, high, mid, low
    assert len(ax.lines) == 2  # one row of dots per seed
