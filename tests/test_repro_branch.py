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
from summarize_paper_b_branch import branch_seed, branch_table  # noqa: E402


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
    assert transfer == {"gaussian": {"all": 3.0, "high": 15.0, "mid": 59.5, "low": 60.0}}
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
