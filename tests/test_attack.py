"""`robust attack`: paper B's attack protocol on small models trained here on real images.

The models are trained in the test on scikit-learn's real 8x8 handwritten digits (upsampled to
16x16), never on noise. Attack step counts are cut down so the file runs in about a
minute on 2 CPU cores.
"""

from __future__ import annotations

import gzip
import json
import math
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustcli.attacks import (
    AttackMethod,
    AttackTarget,
    BranchInput,
    accuracy_at,
    accuracy_loss,
    list_attacks,
    loss_area,
    loss_steps,
    read_attack_result,
    run_attack,
    summary_frame,
    worst_case,
)
from robustcli.attacks.results import SCHEMA_VERSION, attack_document
from robustcli.data import load_dataset
from robustcli.errors import DataError, RobustError
from robustcli.io import file_sha256
from robustcli.layers.topdown import GaussianPyramid

MEAN, STD = (0.3,), (0.37,)

# Small budgets: every attack still runs its real algorithm.
FAST = {
    "gaussian": {"ratio": 1.25, "refine": 1},
    "uniform": {"ratio": 1.25, "refine": 1},
    "gaussian-fb2": {"levels": 60},
    "uniform-fb2": {"levels": 60},
    "salt-pepper": {"steps": 60},
    "pointwise": {"init_steps": 60, "l2_binary_search": False},  # the search: test below
    "blur": {"steps": 60},
    "contrast": {"binary_search_steps": 8},
    "blended": {"directions": 50, "steps": 60},
    "spatial": {"num_translations": 3, "num_rotations": 3},
    "ddn": {"steps": 20},
    "deepfool": {"steps": 10},
    "cw": {"binary_search_steps": 3, "steps": 20},
    "fmn": {"steps": 20},
    "pgd": {"steps": 8, "start": 0.25, "ratio": 2.0, "refine": 1},
}


def _digits(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    out = []
    for split in ("train", "test"):
        x, y = load_dataset("digits", split)
        x = F.interpolate(x.float() / 255, size=(size, size), mode="bilinear", align_corners=False)
        out += [x.clamp(0, 1), y]
    return out[0], out[1], out[2], out[3]


def _train(
    make: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor, steps: int
) -> nn.Module:
    torch.manual_seed(0)
    model = make()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        loss = F.cross_entropy(model((x[idx] - MEAN[0]) / STD[0]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _unit(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


class TinyCNN(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(
            _unit(1, 16),
            nn.MaxPool2d(2),
            _unit(16, 32),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, 10),
        )


class TinyTD(nn.Module):
    """A 3-scale top-down net with the TD contract (``pyramid``, ``forward_scales``)."""

    def __init__(self) -> None:
        super().__init__()
        self.input_pyramid = GaussianPyramid()
        self.low = _unit(1, 16)
        self.mid = nn.Conv2d(1, 16, 3, padding=1)
        self.high = nn.Conv2d(1, 16, 3, padding=1)
        self.fuse_mid = _unit(16, 16)
        self.fuse_high = _unit(16, 32)
        self.head = nn.Linear(32, 10)

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.input_pyramid(x)

    def forward_scales(self, scales: list[torch.Tensor]) -> torch.Tensor:
        high, mid, low = scales
        z = self.low(low)
        z = self.fuse_mid(F.interpolate(z, scale_factor=2.0) + self.mid(mid))
        z = self.fuse_high(F.interpolate(z, scale_factor=2.0) + self.high(high))
        return self.head(z.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_scales(self.pyramid(x))


@pytest.fixture(scope="module")
def digits16():
    return _digits(16)


@pytest.fixture(scope="module")
def bu(digits16):
    xtr, ytr, _, _ = digits16
    return _train(TinyCNN, xtr, ytr, 100)


@pytest.fixture(scope="module")
def td(digits16):
    xtr, ytr, _, _ = digits16
    return _train(TinyTD, xtr, ytr, 100)


@pytest.fixture(scope="module")
def sample(digits16):
    """24 test digits, some of each class."""
    _, _, xte, yte = digits16
    idx = torch.arange(0, 360, 15)
    return xte[idx], yte[idx]


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model((x - MEAN[0]) / STD[0]).argmax(1)


def test_models_learned_something(bu, td, digits16):
    _, _, xte, yte = digits16
    # well above chance (10 %); 100 Adam steps land at 0.77-0.88 (BU) on an Intel Xeon and at
    # 0.65 on an AMD EPYC (float summation order differs with the CPU and thread count), so the
    # bar is five times chance, not the edge of that range
    assert (_predict(bu, xte) == yte).float().mean() > 0.5
    assert (_predict(td, xte) == yte).float().mean() > 0.5


# ------------------------------------------------------------------ verified, measured distances


@pytest.mark.parametrize("attack", list_attacks())
def test_reported_distance_is_measured_and_adversarial_is_misclassified(bu, sample, attack):
    x, y = sample
    target = AttackTarget(bu, MEAN, STD, name="tiny-cnn")
    out = run_attack(target, attack, x, y, params=FAST[attack], repeats=2, batch_size=16)
    adv = out.adversarials
    assert adv is not None and adv.shape == x.shape
    assert adv.min() >= 0 and adv.max() <= 1
    measured = (adv.double() - x.double()).flatten(1).norm(dim=1).numpy()
    pred = _predict(bu, adv).numpy()
    y_np = y.numpy()

    fooled = out.status == "adversarial"
    assert fooled.any(), f"{attack} fooled nothing"
    np.testing.assert_allclose(out.distances[fooled], measured[fooled], rtol=1e-6, atol=1e-7)
    assert (pred[fooled] != y_np[fooled]).all()
    assert (out.distances[fooled] > 0).all()

    failed = out.status == "failed"
    assert np.isinf(out.distances[failed]).all()
    assert torch.equal(adv[torch.from_numpy(failed)], x[torch.from_numpy(failed)])

    wrong = out.status == "misclassified"
    assert (out.distances[wrong] == 0).all() and (out.clean_pred[wrong] != y_np[wrong]).all()
    assert set(out.status) <= {"adversarial", "failed", "misclassified"}


def test_blur_search_equals_foolbox_blur_with_fewer_model_calls(bu, sample):
    import foolbox as fb

    from robustcli.attacks.target import Budget

    x, y = sample
    target = AttackTarget(bu, MEAN, STD)
    ok = _predict(bu, x) == y
    xc, yc = x[ok], y[ok]
    budget = Budget()
    theirs = fb.attacks.GaussianBlurAttack(distance=fb.distances.l2, steps=60).run(
        target.fmodel(budget=budget), xc, fb.criteria.Misclassification(yc)
    )
    ours = run_attack(target, "blur", x, y, params={"steps": 60}, batch_size=64)
    torch.testing.assert_close(ours.adversarials[ok], theirs.clamp(0, 1), rtol=0, atol=1e-6)
    assert ours.model_images < budget.images


@pytest.mark.parametrize("search", [False, True])
def test_pointwise_search_equals_foolbox_pointwise(bu, sample, search, monkeypatch):
    """Same start and same pixel order (identity instead of random): PointwiseSearch returns
    exactly Foolbox's PointwiseAttack result, with fewer images through the model."""
    import foolbox as fb

    from robustcli.attacks.methods import PointwiseSearch
    from robustcli.attacks.target import BatchContext, Budget

    monkeypatch.setattr(np.random, "permutation", lambda a: np.asarray(a))
    x, y = sample
    target = AttackTarget(bu, MEAN, STD)
    ok = _predict(bu, x) == y
    x, y = x[ok], y[ok]
    torch.manual_seed(0)
    init = fb.attacks.SaltAndPepperNoiseAttack(steps=100)
    start = init.run(target.fmodel(), x, fb.criteria.Misclassification(y))
    good = _predict(bu, start) != y
    x, y, start = x[good], y[good], start[good]
    theirs_budget, ours_budget = Budget(), Budget()
    theirs = fb.attacks.PointwiseAttack(l2_binary_search=search).run(
        target.fmodel(budget=theirs_budget),
        x,
        fb.criteria.Misclassification(y),
        starting_points=start,
    )
    method = PointwiseSearch(init_steps=1, l2_binary_search=search)
    monkeypatch.setattr(method.init, "run", lambda *args, **kwargs: start)
    ours = method.run(BatchContext(target, x, ours_budget), x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert ours_budget.images < theirs_budget.images


@pytest.mark.parametrize("search", [False, True])
def test_pointwise_result_is_pointwise_minimal(bu, sample, search):
    """After the reset passes (and the binary-search passes), putting any single perturbed value
    back to the clean one makes the image correctly classified again (the defining property of
    the Pointwise attack), and every reported adversarial is verified and measured."""
    x, y = sample
    x, y = (x, y) if not search else (x[:6], y[:6])
    out = run_attack(
        AttackTarget(bu, MEAN, STD),
        "pointwise",
        x,
        y,
        params={"init_steps": 200, "l2_binary_search": search},
        repeats=1,
    )
    fooled = np.flatnonzero(out.status == "adversarial")
    assert len(fooled)
    measured = (out.adversarials.double() - x.double()).flatten(1).norm(dim=1).numpy()
    np.testing.assert_allclose(out.distances[fooled], measured[fooled], rtol=1e-6)
    assert (_predict(bu, out.adversarials[fooled]) != y[fooled]).all()
    for i in fooled:
        adv, clean = out.adversarials[i].flatten(), x[i].flatten()
        where = torch.nonzero((adv - clean).abs() > 1e-8).flatten()
        trials = adv.repeat(len(where), 1)
        trials[torch.arange(len(where)), where] = clean[where]
        pred = _predict(bu, trials.view(-1, *x.shape[1:]))
        assert (pred == y[i]).all()


class RowwiseContext:
    """A fake model deciding each image on its own (so no float result depends on the batch it
    is classified in): adversarial once ``sum(w * |x_adv - x|) >= thr``, in float64."""

    def __init__(self, x: torch.Tensor, w: torch.Tensor, thr: float) -> None:
        self.x, self.w, self.thr, self.calls, self.images = x.double(), w.double(), thr, 0, 0

    def fmodel(self, rows=None):  # pragma: no cover - PointwiseSearch does not use it
        raise AssertionError

    def is_adversarial(self, x_adv, y, rows=None):
        rows = torch.arange(len(self.x)) if rows is None else rows
        self.calls += 1
        self.images += len(x_adv)
        scores = [
            float((self.w * (a.double() - self.x[r]).abs()).sum())
            for a, r in zip(x_adv, rows.tolist(), strict=True)
        ]
        return torch.tensor(scores, dtype=torch.float64) >= self.thr


def test_pointwise_bisection_trees_equal_the_step_by_step_search(sample):
    """Bisection steps evaluated ahead as trees (several per model call) end where the
    step-by-step search ends, bit for bit, in fewer model calls (same seeds, same pixel order)."""
    from robustcli.attacks.methods import PointwiseSearch

    x, _ = sample
    y = torch.zeros(len(x), dtype=torch.long)
    w = 0.5 + torch.rand(x.shape[1:], generator=torch.Generator().manual_seed(0))
    outs, ctxs = [], []
    for depth in (0, PointwiseSearch.max_tree_depth):
        method = PointwiseSearch(init_steps=60, l2_binary_search=True)
        method.max_tree_depth = depth
        ctx = RowwiseContext(x, w, thr=4.0)
        torch.manual_seed(2)
        np.random.seed(2)
        outs.append(method.run(ctx, x, y))
        ctxs.append(ctx)
    step, trees = outs
    changed = (step != x).flatten(1).any(dim=1)
    assert changed.sum() >= len(x) // 2  # the start fooled these; the search then ran on them
    assert torch.equal(trees, step)
    assert ctxs[1].calls < ctxs[0].calls


def test_out_of_bounds_inputs_are_a_clear_error(bu, sample):
    x, y = sample
    target = AttackTarget(bu, MEAN, STD)
    with pytest.raises(RobustError, match=r"\[0, 1\]"):
        run_attack(target, "ddn", (x - MEAN[0]) / STD[0], y)


# ------------------------------------------------------------------ curves


def test_curves_are_monotone_and_consistent(bu, sample):
    x, y = sample
    target = AttackTarget(bu, MEAN, STD)
    outs = [
        run_attack(target, a, x, y, params=FAST[a], repeats=1) for a in ("ddn", "gaussian", "blur")
    ]
    outs.append(worst_case(outs))
    grid = np.linspace(0, 20, 401)
    clean = 100 * (outs[0].clean_pred == y.numpy()).mean()
    for o in outs:
        loss = accuracy_loss(o.distances, grid)
        acc = accuracy_at(o.distances, grid)
        assert loss[0] == 0 and acc[0] == pytest.approx(clean)
        assert (np.diff(loss) >= 0).all() and (np.diff(acc) <= 0).all()
        np.testing.assert_allclose(acc + loss, clean)
        xs, ys = loss_steps(o.distances)
        assert (np.diff(xs) > 0).all() and (np.diff(ys) >= 0).all()
        # the step curve and the grid evaluation agree
        np.testing.assert_allclose(accuracy_loss(o.distances, xs), ys)
        # closed-form area == numerical integral of the step function
        fine = np.linspace(0, 2.0, 200001)
        numeric = np.trapezoid(accuracy_loss(o.distances, fine), fine)
        assert loss_area(o.distances, 2.0) == pytest.approx(numeric, rel=1e-3, abs=1e-3)
    # the worst case is the per-sample minimum, so its curve lies on or above every attack's
    wc = outs[-1]
    np.testing.assert_array_equal(wc.distances, np.min([o.distances for o in outs[:-1]], axis=0))
    for o in outs[:-1]:
        assert (accuracy_loss(wc.distances, grid) >= accuracy_loss(o.distances, grid)).all()
    df = summary_frame(outs, [0.5, 1.0, 2.0])
    assert (df["acc@0.5"] >= df["acc@1"]).all() and (df["acc@1"] >= df["acc@2"]).all()
    np.testing.assert_allclose(df["clean_acc"], clean)


# ------------------------------------------------------------------ repeats


class NearestOtherImage(AttackMethod):
    """Returns, per repeat, a real image of another class: repeat 0 the farthest one, repeat 1
    the nearest, repeat 2 one in between. The nearest must be kept."""

    stochastic = True

    def __init__(self, pool_x: torch.Tensor, pool_y: torch.Tensor) -> None:
        self.pool_x, self.pool_y, self.calls = pool_x, pool_y, 0

    def run(self, ctx, x, y):
        d = torch.cdist(x.flatten(1).double(), self.pool_x.flatten(1).double())
        d[y[:, None] == self.pool_y[None, :]] = math.nan
        order = torch.argsort(torch.nan_to_num(d, nan=math.inf), dim=1)
        n_valid = (~torch.isnan(d)).sum(1)
        pick = [order[i, [n_valid[i] - 1, 0, n_valid[i] // 2][self.calls]] for i in range(len(x))]
        self.calls += 1
        return self.pool_x[torch.stack(pick)]


def test_minimum_over_repeats_is_kept(bu, sample, digits16):
    x, y = sample
    _, _, xte, yte = digits16
    correct = _predict(bu, xte) == yte  # pool: correctly classified, so surely misclassified
    method = NearestOtherImage(xte[correct], yte[correct])
    target = AttackTarget(bu, MEAN, STD)
    out = run_attack(target, method, x, y, repeats=3, batch_size=64)
    ok = out.clean_correct
    assert method.calls == 3 and out.repeat_distances.shape == (3, len(y))
    assert (out.status[ok] == "adversarial").all()
    r = out.repeat_distances[:, ok]
    assert (r[1] < r[2]).all() and (r[2] <= r[0]).all()  # the setup is not vacuous
    np.testing.assert_array_equal(out.distances[ok], r.min(axis=0))
    assert (out.best_repeat[ok] == 1).all()


def test_random_attack_keeps_its_best_repeat(bu, sample):
    x, y = sample
    out = run_attack(
        AttackTarget(bu, MEAN, STD), "gaussian", x, y, params=FAST["gaussian"], repeats=3
    )
    r = out.repeat_distances
    np.testing.assert_array_equal(out.distances, r.min(axis=0))
    fooled = out.status == "adversarial"
    assert (r[out.best_repeat[fooled], np.flatnonzero(fooled)] == out.distances[fooled]).all()
    assert (r[:, fooled].max(axis=0) > out.distances[fooled]).any()  # repeats did differ


def test_deterministic_attacks_run_once(bu, sample):
    x, y = sample
    out = run_attack(AttackTarget(bu, MEAN, STD), "ddn", x, y, params=FAST["ddn"], repeats=3)
    assert out.repeats == 1 and out.repeat_distances.shape[0] == 1


# ------------------------------------------------------------------ branch attacks


@pytest.mark.parametrize("branch", ["high", "mid", "low"])
def test_branch_attack_changes_only_its_input(td, sample, branch, monkeypatch):
    x, y = sample
    level = {"high": 0, "mid": 1, "low": 2}[branch]
    target = AttackTarget(td, MEAN, STD, name="tiny-td", branch=branch)
    keep = _predict(td, x) == y
    clean_all = [s.detach() for s in td.pyramid(target.normalize(x))]
    clean_kept = [s[keep] for s in clean_all]  # the rows attacked (one batch)

    calls: list[list[torch.Tensor]] = []
    original = td.forward_scales

    def record(scales):
        calls.append([s.detach().clone() for s in scales])
        return original(scales)

    monkeypatch.setattr(td, "forward_scales", record)
    # 50 steps: with 15, the high input alone fooled none of the digits on an AMD EPYC with one
    # thread (the tiny model trains to other weights there), so the last assert depended on the CPU
    out = run_attack(target, "ddn", x, y, params={"steps": 50}, batch_size=64)
    monkeypatch.setattr(td, "forward_scales", original)

    assert len(calls) > 1
    changed = False
    for scales in calls:
        clean = clean_all if len(scales[0]) == len(x) else clean_kept
        for lv in range(3):
            if lv != level:  # the other inputs always get exactly the clean image
                assert torch.equal(scales[lv], clean[lv])
        changed |= not torch.equal(scales[level], clean[level])
    assert changed

    fooled = torch.from_numpy(out.status == "adversarial")
    assert fooled.any()
    adv, xc = out.adversarials[fooled], x[fooled]
    # verified through that branch only: the branch model misclassifies it ...
    branch_pred = BranchInput(td, branch, target.normalize(xc))(target.normalize(adv)).argmax(1)
    assert (branch_pred != y[fooled]).all()
    # ... and it is exactly the TD model fed [adv, clean, clean] (or its permutation)
    mixed = [td.pyramid(target.normalize(xc))[i] for i in range(3)]
    mixed[level] = td.pyramid(target.normalize(adv))[level]
    torch.testing.assert_close(
        td.forward_scales(mixed),
        BranchInput(td, branch, target.normalize(xc))(target.normalize(adv)),
    )


def test_branch_input_matches_the_authors_multi_model():
    """On paper B's TD LeNetFC: BranchInput == forward_multi with the clean image elsewhere."""
    from robustcli.registry import create_model

    model = create_model("td-lenetfc").eval()
    if not hasattr(model, "forward_multi"):
        pytest.skip("topdown_nets has no forward_multi")
    _, _, xte, _ = _digits(28)
    x = (xte[:6] - MEAN[0]) / STD[0]
    x_adv = (xte[6:12] - MEAN[0]) / STD[0]  # other real digits as "perturbed" inputs
    with torch.no_grad():
        for i, branch in enumerate(("high", "mid", "low")):
            inputs = [x, x, x]
            inputs[i] = x_adv
            torch.testing.assert_close(
                BranchInput(model, branch, x)(x_adv), model.forward_multi(inputs)
            )


def test_branch_needs_a_topdown_model(bu):
    with pytest.raises(RobustError, match="top-down"):
        AttackTarget(bu, MEAN, STD, branch="high")


# ------------------------------------------------------------------ time budget


class SlowAttack(AttackMethod):
    def run(self, ctx, x, y):
        ctx.is_adversarial(x, y)
        time.sleep(0.15)
        return x.flip(-1)


def test_time_budget_cuts_and_says_what(bu, sample):
    x, y = sample
    out = run_attack(AttackTarget(bu, MEAN, STD), SlowAttack(), x, y, batch_size=4, max_seconds=0.4)
    cut = out.status == "cut"
    assert cut.any() and (out.status != "cut").any()
    assert np.isnan(out.distances[cut]).all()
    assert any("time budget" in n and f"{cut.sum()} of" in n for n in out.notes)
    df = summary_frame([out], [1.0])
    assert df.loc[0, "n"] == len(y) - cut.sum() and df.loc[0, "cut"] == cut.sum()


# ------------------------------------------------------------------ results


def test_json_roundtrip_keeps_inf_and_cut(bu, sample, tmp_path):
    x, y = sample
    outs = [
        run_attack(AttackTarget(bu, MEAN, STD), "contrast", x, y, params=FAST["contrast"]),
        run_attack(AttackTarget(bu, MEAN, STD), SlowAttack(), x, y, batch_size=4, max_seconds=0.2),
    ]
    doc = attack_document(
        outs,
        epsilons=[0.5, 1.0],
        models=[{"name": "tiny", "sha256": "untrained"}],
        data={"source": "digits"},
        config={},
        seed=0,
        device="cpu",
    )
    path = tmp_path / "attack.json"
    path.write_text(json.dumps(doc, allow_nan=False))
    gz_folder = tmp_path / "kept"  # large results are kept gzipped: read the same
    gz_folder.mkdir()
    (gz_folder / "attack.json.gz").write_bytes(gzip.compress(path.read_bytes()))
    for source in (path, gz_folder, gz_folder / "attack.json.gz"):
        back_doc, back = read_attack_result(source)
        assert back_doc["schema"] == "robustcli-result" and back_doc["kind"] == "attack"
        assert back_doc["schema_version"] == 1
        for a, b in zip(outs, back, strict=True):
            np.testing.assert_array_equal(a.distances, b.distances)
            np.testing.assert_array_equal(a.repeat_distances, b.repeat_distances)
            assert list(a.status) == list(b.status)
    (gz_folder / "attack.json.gz").write_bytes(gzip.compress(path.read_bytes())[:-40])
    with pytest.raises(RobustError, match="attack.json.gz is not readable JSON.*re-run"):
        read_attack_result(gz_folder)


def test_read_attack_result_refuses_what_is_not_an_attack_result_in_one_line(tmp_path):
    good = attack_document([], epsilons=[1.0], models=[], data={}, config={}, seed=0, device="cpu")
    path = tmp_path / "attack.json"
    assert read_attack_result(_write_json(path, good)) == (good, [])
    cases = [
        ([good], "is not a JSON object"),  # was an AttributeError
        ({k: v for k, v in good.items() if k != "outcomes"}, "malformed outcomes"),  # KeyError
        ({**good, "outcomes": [{"status": [1]}]}, "malformed outcomes"),
        ({**good, "outcomes": 3}, "malformed outcomes"),
        ({**good, "kind": "eval-c"}, "is a 'eval-c' result, not 'attack'"),
        ({**good, "schema_version": SCHEMA_VERSION + 1}, "newer than this robustcli"),
    ]
    for doc, expected in cases:
        with pytest.raises(DataError, match=expected) as info:
            read_attack_result(_write_json(path, doc))
        assert "\n" not in str(info.value) and str(path) in str(info.value)


def _write_json(path, doc):
    path.write_text(json.dumps(doc))
    return path


# ------------------------------------------------------------------ the CLI


@pytest.fixture
def checkpoints(bu, td, tmp_path, monkeypatch):
    """The two tiny models above as robustcli checkpoints (their builders registered for the
    test), fed the 8x8 digits upsampled to 16x16 as in training."""
    from robustcli.checkpoint import save_checkpoint
    from robustcli.data import input_adapter
    from robustcli.registry import BACKBONES

    paths = {}
    for name, model, cls in (("tiny-td", td, TinyTD), ("tiny-cnn", bu, TinyCNN)):
        monkeypatch.setitem(BACKBONES, f"test-{name}", lambda cls=cls: cls())
        paths[name] = save_checkpoint(
            tmp_path / f"{name}.safetensors",
            model,
            model_name=name,
            backbone=f"test-{name}",
            config={},
            dataset="digits",
            normalization={"mean": MEAN, "std": STD},
            input=input_adapter((1, 8, 8), (1, 16, 16)),
        )
    return paths


def test_cli_runs_end_to_end_and_writes_the_figure(checkpoints, tmp_path):
    from typer.testing import CliRunner

    from robustcli.cli import app

    out = tmp_path / "run"
    args = [
        "attack",
        "--checkpoint",
        str(checkpoints["tiny-td"]),
        "--vs",
        str(checkpoints["tiny-cnn"]),
        "--dataset",
        "digits",
        "-n",
        "12",
        "--attacks",
        "contrast,ddn",
        "-p",
        "ddn.steps=10",
        "-p",
        "contrast.binary_search_steps=6",
        "--epsilons",
        "0.5,1,2",
        "--out",
        str(out),
        "--no-progress",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "worst-case" in result.output and "tiny-td" in result.output
    assert "not trained for" not in result.output  # digits models on digits images

    png, svg = out / "attack_curves.png", out / "attack_curves.svg"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "<svg" in svg.read_text()[:500]

    doc, outcomes = read_attack_result(out)
    prov = doc["provenance"]
    assert prov["n_examples"] == 12 and prov["foolbox"] and prov["device"] == "cpu"
    assert prov["models"][0]["sha256"] == file_sha256(checkpoints["tiny-td"])
    assert len(prov["data"]["indices"]) == 12
    assert {(o.model, o.attack) for o in outcomes} == {
        (m, a) for m in ("tiny-td", "tiny-cnn") for a in ("contrast", "ddn", "worst-case")
    }
    assert {r["model"] for r in doc["branch_transfer"]["rows"]} == {"tiny-td"}
    samples = (out / "attack_samples.csv").read_text().splitlines()
    assert len(samples) == 1 + 6 * 12

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "already exists" in again.output


def test_cli_refuses_an_untrained_model_unless_asked(tmp_path):
    from typer.testing import CliRunner

    from robustcli.cli import app

    result = CliRunner().invoke(app, ["attack", "-m", "bu-lenetfc", "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "untrained" in result.output
    assert not (tmp_path / "x").exists()


def test_cli_warns_when_the_images_are_not_the_models_dataset(tmp_path):
    from typer.testing import CliRunner

    from robustcli.cli import app

    out = tmp_path / "x"
    args = ["attack", "-m", "bu-lenetfc", "--untrained", "-d", "digits", "-n", "3"]
    args += ["-a", "contrast", "-p", "contrast.binary_search_steps=2", "--repeats", "1"]
    result = CliRunner().invoke(app, [*args, "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    expected = (
        "bu-lenetfc (untrained) is a mnist model but these are digits images, fed as bilinear "
        "resize 8x8 -> 28x28: its accuracy and distances are on data it was not trained for; "
        "-d mnist attacks it on its own"
    )
    assert expected in " ".join(result.stderr.split())
