"""Attacks cut by the time budget (issue #12): never reported as 0 % accuracy.

Closed-form checks of the metrics on hand-made distance arrays, hand-made outcomes for the worst
case across models, and real runs (a linear classifier trained here in a fraction of a second on
the embedded 8x8 digits) under a *deterministic* budget: the attack clock advances by one second
per finished (batch, repeat), so ``max_seconds=1.5`` always cuts after exactly two of them.
"""

from __future__ import annotations

import math
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustcli.attacks import (
    AttackOutcome,
    AttackTarget,
    accuracy_at,
    accuracy_loss,
    branch_transfer,
    clean_accuracy,
    complete_attacks,
    loss_area,
    loss_steps,
    median_l2,
    parse_param_overrides,
    run_attack,
    summary_frame,
    worst_case,
)
from robustcli.data import load_dataset
from robustcli.errors import RobustError

MEAN, STD = (0.3,), (0.37,)
INF, NAN = math.inf, math.nan

# --------------------------------------------------------------------------- closed form

# 10 images: 2 misclassified (0), 2 cut (NaN), 6 attacked: 0.2, 0.3, 0.7, 1.5 and 2 failures
D = np.array([0.0, 0.0, 0.3, 0.7, INF, NAN, NAN, 1.5, INF, 0.2])


def test_metrics_closed_form_with_cut_misclassified_and_inf():
    # clean accuracy over all 10 images (it needs no attack): 8 correct
    assert clean_accuracy(D) == pytest.approx(80.0)
    # robust accuracy: clean x share of the 6 attacked images that withstand e
    np.testing.assert_allclose(
        accuracy_at(D, [0.0, 0.25, 0.5, 1.0, 2.0, INF]),
        [80.0, 80 * 5 / 6, 80 * 4 / 6, 80 * 3 / 6, 80 * 2 / 6, 0.0],
    )
    np.testing.assert_allclose(accuracy_loss(D, [0.25, 2.0]), [80 / 6, 80 * 4 / 6])
    # area up to 1: 80/6 * ((1-0.2) + (1-0.3) + (1-0.7))
    assert loss_area(D, 1.0) == pytest.approx(80 / 6 * 1.8)
    # median over the attacked images, failures at inf: (0.7 + 1.5) / 2
    assert median_l2(D, D != 0) == pytest.approx(1.1)
    xs, ys = loss_steps(D)
    np.testing.assert_allclose(xs, [0, 0.2, 0.3, 0.7, 1.5])
    np.testing.assert_allclose(ys, [0, 80 / 6, 160 / 6, 240 / 6, 320 / 6])
    # the old formula (misclassified kept, cut dropped) would have said 100*5/8 = 62.5 at 0.25
    assert accuracy_at(D, 0.25)[0] != pytest.approx(62.5)


def test_nothing_cut_is_the_plain_count():
    d = np.array([0.0, 0.3, INF, 1.0])
    np.testing.assert_allclose(accuracy_at(d, [0.0, 0.5, 1.0]), [75.0, 50.0, 25.0])
    assert loss_area(d, 2.0) == pytest.approx(100 / 4 * (1.7 + 1.0))


def test_fully_cut_is_missing_not_zero():
    d = np.array([0.0, NAN, NAN])
    assert clean_accuracy(d) == pytest.approx(200 / 3)
    acc = accuracy_at(d, [0.0, 0.5])
    assert acc[0] == pytest.approx(200 / 3) and math.isnan(acc[1])
    assert math.isnan(loss_area(d, 1.0)) and math.isnan(median_l2(d, d != 0))
    assert math.isnan(accuracy_loss(d, [0.5])[0])
    assert np.isnan(loss_steps(d)[1]).all()  # no curve rather than a flat 0
    # every image misclassified: 0 is known, not missing
    z = np.zeros(3)
    assert (accuracy_at(z, [0.0, 1.0]) == 0).all() and loss_area(z, 1.0) == 0


def _outcome(
    status: list[str],
    distances: list[float],
    *,
    model: str = "m",
    attack: str = "a",
    repeats: np.ndarray | None = None,
) -> AttackOutcome:
    n = len(status)
    labels = np.arange(n) % 10
    clean_pred = np.where(np.array(status) == "misclassified", (labels + 1) % 10, labels)
    d = np.array(distances, dtype=np.float64)
    return AttackOutcome(
        model=model,
        label=model,
        attack=attack,
        branch="all",
        topdown=False,
        labels=labels,
        clean_pred=clean_pred,
        distances=d,
        status=np.array(status),
        repeat_distances=d[None, :] if repeats is None else repeats,
        best_repeat=np.zeros(n, dtype=int),
        repeats=1 if repeats is None else len(repeats),
        seconds=1.0,
        model_images=n,
    )


def test_summary_counts_cut_and_partial_per_repeat():
    rep = np.array([[0.0, 0.5, 2.0, 0.9, NAN], [0.0, 0.4, INF, NAN, NAN]])
    o = _outcome(
        ["misclassified", "adversarial", "adversarial", "partial", "cut"],
        [0.0, 0.4, 2.0, NAN, NAN],
        repeats=rep,
    )
    row = summary_frame([o], [0.45, 1.0]).iloc[0]
    assert row["n"] == 3 and row["attacked"] == 2 and row["cut"] == 2
    assert row["cut_repeats"] == "1/2" and bool(row["partial"])
    assert row["clean_acc"] == pytest.approx(80.0)
    assert row["acc@0.45"] == pytest.approx(40.0) and row["acc@1"] == pytest.approx(40.0)
    assert row["success"] == pytest.approx(100.0) and row["median_l2"] == pytest.approx(1.2)


def test_fully_cut_summary_row_shows_missing():
    o = _outcome(["misclassified", "cut", "cut", "cut"], [0.0, NAN, NAN, NAN])
    row = summary_frame([o], [0.5]).iloc[0]
    assert row["clean_acc"] == pytest.approx(75.0)  # the real clean accuracy, not 0
    for col in ("acc@0.5", "median_l2", "auc", "success"):
        assert math.isnan(row[col]), col
    assert row["attacked"] == 0 and row["cut"] == 3


# --------------------------------------------------------------------------- worst case


def test_worst_case_over_common_complete_attacks():
    st = ["misclassified", "adversarial", "adversarial", "failed"]
    td = [
        _outcome(st, [0, 0.5, 1.0, INF], model="td", attack="x"),
        _outcome(st, [0, 0.3, 2.0, 0.8], model="td", attack="y"),
    ]
    bu = [
        _outcome(st, [0, 0.4, 0.6, INF], model="bu", attack="x"),
        _outcome(st[:3] + ["cut"], [0, 0.1, 0.2, NAN], model="bu", attack="y"),
    ]
    common = complete_attacks([td, bu])
    assert common == ["x"]
    why = {"y": "1 of 3 cut on bu"}
    wc_td = worst_case(td, include=common, reasons=why)
    wc_bu = worst_case(bu, include=common, reasons=why)
    for wc, x in ((wc_td, td[0]), (wc_bu, bu[0])):
        np.testing.assert_array_equal(wc.distances, x.distances)  # y left out on both models
        assert wc.params["of"] == ["x"] and wc.params["left_out"] == ["y"]
        assert wc.params["partial"] and any(
            "left out (cut): y (1 of 3 cut on bu)" in n for n in wc.notes
        )
    rows = summary_frame([wc_td, wc_bu], [0.5])
    assert (rows["left_out"] == "y").all() and rows["partial"].all()
    assert (rows["cut"] == 0).all()  # the worst case itself is over every image ...
    # ... of the same attack set: on td alone y would have been combined
    assert worst_case(td).params["of"] == ["x", "y"]


def test_single_model_worst_case_leaves_out_a_partly_cut_attack():
    st = ["adversarial", "adversarial", "adversarial"]
    a = _outcome(st, [0.5, 0.6, 0.7], attack="a")
    b = _outcome(["adversarial", "cut", "cut"], [0.1, NAN, NAN], attack="b")
    wc = worst_case([a, b])
    np.testing.assert_array_equal(wc.distances, a.distances)
    assert wc.params["left_out"] == ["b"]


def test_worst_case_with_every_attack_cut_is_missing():
    a = _outcome(["misclassified", "cut", "adversarial"], [0, NAN, 0.5], attack="a")
    b = _outcome(["misclassified", "cut", "cut"], [0, NAN, NAN], attack="b")
    wc = worst_case([a, b])
    assert list(wc.status) == ["misclassified", "cut", "cut"] and wc.fully_cut
    row = summary_frame([wc], [0.5]).iloc[0]
    assert math.isnan(row["acc@0.5"]) and row["clean_acc"] == pytest.approx(200 / 3)
    assert any("not computed" in n for n in wc.notes)


# --------------------------------------------------------------------------- real runs


class Linear(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Flatten(), nn.Linear(64, 10))


class TinyTD(nn.Module):
    """The TD contract (pyramid, forward_scales) on 8x8 images, for the branch transfer."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(64, 10) for _ in range(3))

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x, 0.5 * x, 0.25 * x]

    def forward_scales(self, scales: list[torch.Tensor]) -> torch.Tensor:
        return sum(h(s.flatten(1)) for h, s in zip(self.heads, scales, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_scales(self.pyramid(x))


def _train(model: nn.Module, steps: int = 40) -> nn.Module:
    x, y = load_dataset("digits", "train")
    x = (x[:600].float() / 255 - MEAN[0]) / STD[0]
    y = y[:600]
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def linear():
    return _train(Linear())


@pytest.fixture(scope="module")
def sample():
    x, y = load_dataset("digits", "test")
    return x[:40].float() / 255, y[:40]


@pytest.fixture
def clock(monkeypatch):
    """Attack time advances 1 s per finished (batch, repeat) and never otherwise."""
    import robustcli.attacks.runner as runner
    import robustcli.attacks.target as target

    state = {"t": 0.0}
    fake = types.SimpleNamespace(
        monotonic=lambda: state["t"], perf_counter=lambda: state["t"], sleep=lambda s: None
    )
    monkeypatch.setattr(runner, "time", fake)
    monkeypatch.setattr(target, "time", fake)
    real = runner.l2_norms

    def l2_and_tick(x: torch.Tensor) -> torch.Tensor:
        state["t"] += 1.0
        return real(x)

    monkeypatch.setattr(runner, "l2_norms", l2_and_tick)
    return state


def test_budget_cut_after_two_batches_is_left_out_not_counted(linear, sample, clock):
    x, y = sample
    target = AttackTarget(linear, MEAN, STD, name="lin")
    full = run_attack(target, "ddn", x, y, params={"steps": 5}, batch_size=8)
    cut = run_attack(target, "ddn", x, y, params={"steps": 5}, batch_size=8, max_seconds=1.5)
    correct = cut.clean_correct
    assert correct.sum() > 16  # the setup is not vacuous: more than two batches to attack
    attacked = cut.attacked
    assert attacked.sum() == 16 and cut.n_cut == correct.sum() - 16 and cut.n_partial == 0
    # exactly the first two batches of the correctly classified images were attacked, with the
    # same results as in the run without a budget
    first16 = np.flatnonzero(correct)[:16]
    np.testing.assert_array_equal(np.flatnonzero(attacked), first16)
    np.testing.assert_array_equal(cut.distances[first16], full.distances[first16])
    assert (cut.status[~correct] == "misclassified").all()
    assert any(f"{cut.n_cut} of {correct.sum()} samples not attacked" in n for n in cut.notes)
    row = summary_frame([cut], [0.5, 1.0]).iloc[0]
    clean = 100 * correct.mean()
    assert row["clean_acc"] == pytest.approx(clean)  # not lowered by the cut
    d = cut.distances[first16]
    assert row["acc@1"] == pytest.approx(clean * (d > 1.0).mean())
    assert row["cut"] == cut.n_cut and row["cut_repeats"] == str(cut.n_cut)


def test_repeats_short_of_the_budget_are_partial_and_fully_cut_is_missing(linear, sample, clock):
    x, y = sample
    out = run_attack(
        AttackTarget(linear, MEAN, STD),
        "gaussian",
        x,
        y,
        params={"ratio": 1.5, "refine": 0},
        repeats=3,
        batch_size=8,
        max_seconds=1.5,
    )
    # batch 1 got repeats 1 and 2, then the budget ran out: 8 partial, the rest cut
    assert out.n_partial == 8 and out.n_attacked == 0 and out.fully_cut
    assert out.cut_by_repeat == [out.n_cut - 8, out.n_cut - 8, out.n_cut]
    assert np.isfinite(out.repeat_distances[:2, out.status == "partial"]).any()  # kept there
    row = summary_frame([out], [1.0]).iloc[0]
    assert math.isnan(row["acc@1"]) and row["clean_acc"] > 50
    assert any("8 attacked in fewer than 3 repeats" in n for n in out.notes)


def test_branch_transfer_of_a_cut_attack_is_missing(sample, clock):
    x, y = sample
    td = _train(TinyTD(), steps=10)
    target = AttackTarget(td, MEAN, STD, name="td")
    out = run_attack(
        target,
        "gaussian",
        x,
        y,
        params={"ratio": 1.5, "refine": 0},
        batch_size=8,
        max_seconds=1.5,
    )
    assert out.fully_cut
    row = branch_transfer(target, out, x)
    assert row["clean"] == pytest.approx(100 * out.clean_correct.mean())
    assert all(row[b] is None for b in ("all", "high", "mid", "low"))
    assert row["attacked"] == 0 and row["cut"] == out.n_cut


def test_branch_transfer_accuracies_are_exact_fractions(sample):
    # accuracy = clean x (kept / attacked): counted in integers, not a float32 mean
    # (6 of 10 as a float32 mean stored 60.0000006 %)
    x, y = sample
    td = _train(TinyTD(), steps=10)
    target = AttackTarget(td, MEAN, STD, name="td")
    out = run_attack(
        target, "gaussian", x, y, params={"ratio": 1.5, "refine": 0}, batch_size=8, seed=0
    )
    row = branch_transfer(target, out, x)
    n = row["attacked"]
    assert n > 0
    kept = {b: round(row[b] / row["clean"] * n) for b in ("all", "high", "mid", "low")}
    assert any(0 < k < n for k in kept.values())  # a fraction, not only 0 or all
    for b, k in kept.items():
        assert row[b] == row["clean"] * k / n


@pytest.fixture
def checkpoint(linear, tmp_path, monkeypatch):
    from robustcli.checkpoint import save_checkpoint
    from robustcli.data import input_adapter
    from robustcli.registry import BACKBONES

    monkeypatch.setitem(BACKBONES, "test-linear", Linear)
    return save_checkpoint(
        tmp_path / "lin.safetensors",
        linear,
        model_name="lin",
        backbone="test-linear",
        config={},
        dataset="digits",
        normalization={"mean": MEAN, "std": STD},
        input=input_adapter((1, 8, 8), (1, 8, 8)),
    )


def test_cli_budget_run_reports_cuts_not_zero(checkpoint, tmp_path, clock, monkeypatch):
    from typer.testing import CliRunner

    from robustcli.attacks import read_attack_result
    from robustcli.cli import app
    from robustcli.cli._common import console, err_console

    for c in (console, err_console):  # room for the whole table and each line
        monkeypatch.setattr(c, "width", 250)

    out = tmp_path / "run"
    args = [
        "attack", "-c", str(checkpoint), "-d", "digits", "-n", "500", "-b", "400",
        "-a", "ddn,gaussian", "-p", "ddn.steps=5", "-p", "gaussian.ratio=1.5",
        "-p", "gaussian.refine=0", "--repeats", "3", "--max-seconds", "1.5",
        "--epsilons", "0.5,1", "-o", str(out), "--no-progress",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc, outcomes = read_attack_result(out)
    # -n clamped to the test split's size, said and recorded
    n_test = len(load_dataset("digits", "test")[1])
    assert n_test < 500 and doc["provenance"]["n_examples"] == n_test
    assert doc["provenance"]["data"]["clamped"] and doc["provenance"]["data"]["n_requested"] == 500
    assert "clamped" in result.output
    ddn, gauss, wc = outcomes
    assert ddn.n_cut == 0  # one batch: finished within the budget
    assert gauss.fully_cut and gauss.n_partial == gauss.clean_correct.sum()
    rec = next(o for o in doc["outcomes"] if o["attack"] == "gaussian")
    assert rec["cut"]["partial"] == gauss.n_cut and rec["cut"]["by_repeat"][2] == gauss.n_cut
    rows = {r["attack"]: r for r in doc["summary"]}
    assert rows["gaussian"]["acc@0.5"] is None and rows["gaussian"]["clean_acc"] > 50
    assert rows["gaussian"]["cut"] == gauss.n_cut
    # the worst case is over ddn only, and says so
    assert wc.params["of"] == ["ddn"] and wc.params["left_out"] == ["gaussian"]
    assert rows["worst-case"]["partial"] and rows["worst-case"]["left_out"] == "gaussian"
    assert doc["config"]["worst_case"]["left_out"] == ["gaussian"]
    # the table: cut cells and the partial worst case, one line per finished attack
    assert "worst-case (partial)" in result.output
    line = next(li for li in result.output.splitlines() if "│ gaussian " in li)
    cells = [c.strip() for c in line.split("│")[1:-1]]
    # model, attack, clean%, med L2, @0.5, @1, AUC%, img/s, attacked, cut, cut by repeat
    assert cells[2] == f"{rows['gaussian']['clean_acc']:.3g}"
    assert cells[3:7] == ["cut"] * 4 and cells[8] == "0" and cells[9] == str(gauss.n_cut)
    assert cells[10] == f"0/0/{gauss.n_cut}"
    done = [li for li in result.output.splitlines() if li.startswith("done ")]
    assert len(done) == 2 and "lin / gaussian: 0 images attacked" in done[1]
    assert f"{gauss.n_cut} cut" in done[1] and "median L2 cut" in done[1]


# --------------------------------------------------------------------------- bad input


def test_bad_param_value_is_one_line_via_subprocess(tmp_path):
    robust = Path(sys.executable).with_name("robust")
    proc = subprocess.run(
        [str(robust), "attack", "-m", "bu-lenetfc", "--untrained", "-a", "ddn",
         "-p", "ddn.steps=abc", "-o", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "ddn.steps" in lines[0] and "integer" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ("ddn.steps=abc", r"ddn\.steps.*an integer >= 1"),
        ("ddn.steps=-3", r"ddn\.steps.*an integer >= 1"),
        ("ddn.steps=2.5", r"ddn\.steps.*an integer"),
        ("ddn.gamma=.nan", r"ddn\.gamma.*a number > 0 and <= 1"),
        ("pgd.ratio=1", r"pgd\.ratio.*a number > 1"),
        ("pointwise.l2_binary_search=3", r"true or false"),
        ("ddn.stepz=3", r"has no parameter stepz: it takes"),
        ("dnn.steps=3", r"unknown attack 'dnn': did you mean ddn"),
        ("ddn.steps", r"write ATTACK\.KEY=VALUE"),
    ],
)
def test_bad_param_overrides(item, match):
    with pytest.raises(RobustError, match=match):
        parse_param_overrides([item])


def test_param_values_are_coerced_to_the_default_type():
    assert parse_param_overrides(["ddn.steps=1e3", "cw.stepsize=1", "pgd.refine=0"]) == {
        "ddn": {"steps": 1000},
        "cw": {"stepsize": 1.0},
        "pgd": {"refine": 0},
    }
    with pytest.raises(RobustError, match="ddn.steps"):  # the library path checks too
        run_attack(AttackTarget(Linear(), MEAN, STD), "ddn", torch.zeros(1, 1, 8, 8),
                   torch.zeros(1, dtype=torch.long), params={"steps": "abc"})  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        ["-n", "0"],
        ["-b", "0"],
        ["--max-seconds", "nan"],
        ["--max-seconds", "0"],
        ["--repeats", "0"],
        ["--seed", "-1"],
        ["--epsilons", "nan"],
        ["--epsilons", "0,1"],
        ["-a", "ddn", "-p", "cw.steps=10"],
    ],
)
def test_bad_numeric_options_exit_2_before_any_work(args, tmp_path):
    from typer.testing import CliRunner

    from robustcli.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["attack", "-m", "bu-lenetfc", "--untrained", "-o", str(out), *args]
    )
    assert result.exit_code == 2, result.output
    assert not out.exists()


def test_old_attack_group_name_is_an_alias():
    from robustcli.attacks.registry import list_attacks, resolve_attacks

    assert resolve_attacks("paper-b") == resolve_attacks("lelekas2020") == list_attacks("paper-b")
    assert "pointwise" in resolve_attacks("lelekas2020")
