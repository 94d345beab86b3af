"""eval-c: metrics against hand-computed values, exact folding, result files, CLI end to end.

Data: official-layout folders the tests write (a few corruptions x 5 severities of 10-20
images): hand-made arrays where the answer must be known, ``generate_dataset`` on foolbox's 20
real CIFAR-10 test images for the end-to-end runs. The "oracle" model reads the class from the
top-left pixel, so every accuracy is known in advance.
"""

from __future__ import annotations

import glob
import importlib.util
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from robustcli.checkpoint import save_checkpoint
from robustcli.cli import app
from robustcli.corruptions import COMMON, CORRUPTIONS, generate_dataset, load_official
from robustcli.errors import CheckpointError, DataError, OutputExistsError, RobustError
from robustcli.evaluate import (
    GeneratedSource,
    OfficialSource,
    Tally,
    corruption_errors,
    eval_c_document,
    evaluate_corruptions,
    parse_severities,
    resolve_checkpoint,
    select_corruptions,
    summarize,
    unaggregated_frame,
    write_eval_c,
)
from robustcli.layers import fused
from robustcli.layers.fold import FoldedMultiScalePushPull, folded_pushpull, prepare_for_inference
from robustcli.layers.multiscale import MultiScalePushPull
from robustcli.layers.pushpull import PushPullConv2d
from robustcli.registry import create_model, get_dataset_spec, resolve_config
from robustcli.runtime import cpu_has_native_bf16

SPEC = get_dataset_spec("cifar10")
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _foolbox_cifar() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("foolbox")
    folder = os.path.join(next(iter(spec.submodule_search_locations)), "data")  # type: ignore[union-attr]
    files = sorted(glob.glob(os.path.join(folder, "cifar10_*.png")))
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    labels = np.array([int(Path(f).stem.split("_")[-1]) for f in files], dtype=np.uint8)
    return images, labels


IMAGES, LABELS = _foolbox_cifar()  # (20, 32, 32, 3) uint8, real CIFAR-10 test images


# --------------------------------------------------------------------------------------------
# A model with known predictions
# --------------------------------------------------------------------------------------------


class PixelOracle(nn.Module):
    """Predicts class round(p / 20) from the top-left red pixel value p (0..255)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = (x[:, 0, 0, 0] * SPEC.std[0] + SPEC.mean[0]) * 255.0
        cls = torch.round(p / 20.0).long().clamp(0, 9)
        return F.one_hot(cls, 10).float()


def _encode(labels: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Images whose top-left pixel says the label where ``right``, a wrong class elsewhere."""
    shown = np.where(right, labels, (labels + 1) % 10)
    x = np.full((len(labels), 32, 32, 3), 128, dtype=np.uint8)
    x[:, 0, 0, 0] = shown * 20
    return x


# correct images out of N=10 per (corruption, severity 1..5)
N = 10
KNOWN = {
    "gaussian_noise": [10, 8, 6, 4, 2],
    "shot_noise": [9, 9, 7, 5, 0],
    "impulse_noise": [10, 10, 10, 10, 10],
}


@pytest.fixture(scope="module")
def oracle_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("oracle-c10c")
    labels = np.arange(N, dtype=np.uint8) % 10
    np.save(root / "labels.npy", np.tile(labels, 5))
    for name, per_sev in KNOWN.items():
        blocks = [_encode(labels, np.arange(N) < k) for k in per_sev]
        np.save(root / f"{name}.npy", np.concatenate(blocks))
    return root


def _oracle_clean() -> tuple[torch.Tensor, torch.Tensor]:
    labels = np.arange(N, dtype=np.uint8) % 10
    x = _encode(labels, np.arange(N) != 3)  # 9 of 10 right
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels).long()


def test_selections_and_severities():
    assert select_corruptions("common") == COMMON and len(COMMON) == 15
    assert select_corruptions("all") == CORRUPTIONS and len(CORRUPTIONS) == 19
    assert select_corruptions("fog, noise") == [
        "gaussian_noise",
        "shot_noise",
        "impulse_noise",
        "fog",
    ]
    assert select_corruptions("extra") == CORRUPTIONS[15:]
    with pytest.raises(RobustError, match="did you mean gaussian_noise"):
        select_corruptions("gausian_noise")
    assert parse_severities("1-5") == [1, 2, 3, 4, 5]
    assert parse_severities("5,1-2") == [1, 2, 5]
    for bad in ("0", "6", "a", "3-1", ""):
        with pytest.raises(RobustError):
            parse_severities(bad)


@pytest.mark.parametrize("batch_size,workers", [(1000, 1), (7, 1), (7, 2)])
def test_metrics_hand_computed(oracle_dir, batch_size, workers):
    """Counts per (corruption, severity), whatever the batching (chunks spanning severities)
    and the number of CPU workers; every derived metric against hand-computed values."""
    names = list(KNOWN)
    tally = evaluate_corruptions(
        PixelOracle(),
        OfficialSource(oracle_dir, names),
        mean=SPEC.mean,
        std=SPEC.std,
        corruptions=names,
        clean=_oracle_clean(),
        batch_size=batch_size,
        workers=workers,
    )
    assert tally.correct.tolist() == [KNOWN[c] for c in names]
    assert (tally.total == N).all()
    s = summarize(tally)
    assert s["clean_acc"] == pytest.approx(90.0)
    for c in names:
        assert [s["accuracy"][c][str(k)] for k in range(1, 6)] == pytest.approx(
            [10.0 * v for v in KNOWN[c]]
        )
        assert s["per_corruption"][c] == pytest.approx(10.0 * np.mean(KNOWN[c]))
    assert s["per_severity"]["1"] == pytest.approx((100 + 90 + 100) / 3)
    assert s["per_severity"]["5"] == pytest.approx((20 + 0 + 100) / 3)
    everything = np.mean([v for c in names for v in KNOWN[c]]) * 10
    assert s["corruptions_acc"] == pytest.approx(everything)
    assert s["groups"]["noise"] == pytest.approx(everything)  # all three noise corruptions
    assert s["groups"]["blur"] is None  # not evaluated
    assert s["mean_common_15"] is None and s["mean_all_19"] is None
    assert s["counts"]["shot_noise"]["5"] == [0, 10]


def test_first_n_examples_and_severity_subset(oracle_dir):
    tally = evaluate_corruptions(
        PixelOracle(),
        OfficialSource(oracle_dir, ["gaussian_noise"]),
        mean=SPEC.mean,
        std=SPEC.std,
        corruptions=["gaussian_noise"],
        severities=[2, 4],
        n_examples=5,
    )
    # first 5 of each severity: 8 right -> 5 of 5; 4 right -> 4 of 5
    assert tally.correct.tolist() == [[5, 4]] and tally.total.tolist() == [[5, 5]]


# --------------------------------------------------------------------------------------------
# Exactly equal inference form
# --------------------------------------------------------------------------------------------


def _randomize_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


LINEAR_PP = {"layer": "pushpull", "rectify": "none", "attention": "none"}


@pytest.mark.parametrize(
    "name,overrides,folded,all_bn",
    [
        ("resnet20", {"pp": {**LINEAR_PP, "placement": "block1"}}, (7, 0), True),
        (
            "resnet20",
            {
                "pp": {
                    **LINEAR_PP,
                    "placement": "all",
                    "pull_impl": "separable",
                    "trainable_alpha": True,
                    "alpha": 0.7,
                }
            },
            (19, 0),
            True,
        ),
        ("mspp-resnet20", {}, (0, 7), True),
        ("pp-resnet20", {}, (0, 0), False),  # rectified PP stays; the BatchNorms after it too
        ("densenet40", {}, (0, 0), False),  # pre-activation: BN -> ReLU -> conv stays
    ],
)
def test_folding_is_exact(name, overrides, folded, all_bn):
    torch.manual_seed(0)
    model = _randomize_bn(create_model(name, **overrides))
    if overrides.get("pp", {}).get("trainable_alpha"):
        for m in model.modules():
            if isinstance(m, PushPullConv2d):
                m.alpha.data.uniform_(-0.2, 1.5)  # negative entries are clamped to 0
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    net, report = prepare_for_inference(model, "cpu", keep_fused=False)
    with torch.inference_mode():
        out = net(x.contiguous(memory_format=torch.channels_last))
    assert (report["pushpull_folded"], report["mspp_folded"]) == folded
    assert report["batchnorm_folded"] > 0
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    assert torch.equal(out.argmax(1), ref.argmax(1))
    if sum(folded):
        assert not any(isinstance(m, PushPullConv2d | MultiScalePushPull) for m in net.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules()) != all_bn
    # the original model is untouched
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 0


@pytest.mark.skipif(not fused.available(torch.zeros(1)), reason="fused CPU kernel unavailable")
def test_layers_the_kernel_computes_stay_unfolded_on_cpu():
    """By default the linear push-pull layers the fused kernel computes are kept (faster than
    their folded 7x7/9x9 convolutions on CPU); the BatchNorm after MSPP still folds into its
    fusion conv, and the outputs are unchanged."""
    torch.manual_seed(0)
    model = _randomize_bn(create_model("mspp-resnet20"))
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    net, report = prepare_for_inference(model, "cpu")
    assert report["mspp_folded"] == 0 and report["pushpull_kept_for_kernel"] == 7
    assert sum(isinstance(m, MultiScalePushPull) for m in net.modules()) == 7
    assert report["batchnorm_folded"] > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    with torch.inference_mode():
        out = net(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_folded_layers_match_single_layers():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 15, 15)
    pp = PushPullConv2d(4, 6, 3, stride=2, rectify="none", bias=True, trainable_alpha=True)
    pp.alpha.data.uniform_(0.2, 2.0)
    conv = folded_pushpull(pp)
    assert conv.kernel_size == (7, 7)
    torch.testing.assert_close(conv(x), pp(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        folded_pushpull(PushPullConv2d(4, 6, 3, rectify="relu"))
    ms = MultiScalePushPull(4, 6, 3, stride=2, scales=(2, 3), attention="se").eval()
    torch.testing.assert_close(FoldedMultiScalePushPull(ms)(x), ms(x), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Corruption error against a baseline
# --------------------------------------------------------------------------------------------


def _doc(clean, acc):
    return {"model": {"name": "m"}, "clean_acc": clean, "accuracy": acc}


def test_corruption_error_hand_made():
    result = _doc(90.0, {"fog": {"1": 80.0, "2": 70.0}, "snow": {"1": 85.0, "2": 75.0}})
    base = _doc(95.0, {"fog": {"1": 60.0, "2": 50.0, "3": 40.0}, "snow": {"1": 75.0, "2": 75.0}})
    out = corruption_errors(result, base)
    # fog: errors 20+30 vs 40+50; relative: (20-10)+(30-10) vs (40-5)+(50-5)
    assert out["ce"]["fog"] == pytest.approx(100 * 50 / 90)
    assert out["relative_ce"]["fog"] == pytest.approx(100 * 30 / 80)
    # snow: errors 15+25 vs 25+25; relative: 5+15 vs 20+20
    assert out["ce"]["snow"] == pytest.approx(100 * 40 / 50)
    assert out["relative_ce"]["snow"] == pytest.approx(100 * 20 / 40)
    assert out["mce"] == pytest.approx((100 * 50 / 90 + 80) / 2)
    assert out["relative_mce"] == pytest.approx((100 * 30 / 80 + 50) / 2)
    with pytest.raises(RobustError, match="no fog severity 2"):
        corruption_errors(result, _doc(95.0, {"fog": {"1": 60.0}, "snow": {"1": 1, "2": 1}}))
    with pytest.raises(RobustError, match="no snow results"):
        corruption_errors(result, _doc(95.0, {"fog": {"1": 60.0, "2": 50.0}}))
    perfect = corruption_errors(
        result, _doc(None, {"fog": {"1": 100.0, "2": 100.0}, "snow": {"1": 100.0, "2": 100.0}})
    )
    assert perfect["ce"]["fog"] is None and perfect["mce"] is None
    assert perfect["relative_ce"]["fog"] is None  # no clean accuracy in the baseline


# --------------------------------------------------------------------------------------------
# Result files
# --------------------------------------------------------------------------------------------


def _tally() -> Tally:
    return Tally(
        corruptions=("gaussian_noise", "fog"),
        severities=(1, 2),
        correct=np.array([[9, 5], [8, 8]]),
        total=np.full((2, 2), 10),
        clean_correct=10,
        clean_total=10,
    )


def test_a_gzipped_baseline_reads_like_the_plain_file(tmp_path):
    import gzip

    from robustcli.evaluate import read_result

    doc = eval_c_document(_tally(), model={"name": "m1"}, provenance={"device": "cpu"})
    paths = write_eval_c(doc, tmp_path / "r.json")
    gz = tmp_path / "r.json.gz"
    gz.write_bytes(gzip.compress(paths["json"].read_bytes()))
    assert read_result(gz) == read_result(paths["json"])
    gz.write_bytes(gzip.compress(paths["json"].read_bytes())[:-30])
    with pytest.raises(DataError, match="r.json.gz is not readable JSON"):
        read_result(gz)


def test_a_baseline_with_a_bad_version_or_kind_is_one_line(tmp_path):
    from robustcli.evaluate import read_result

    doc = eval_c_document(_tally(), model={"name": "m1"}, provenance={"device": "cpu"})
    path = tmp_path / "b.json"
    for bad, expected in [
        ({**doc, "schema_version": "one"}, "not an integer"),  # was a ValueError from int()
        ({**doc, "schema_version": None}, "not an integer"),  # was a TypeError
        ({**doc, "kind": "attack"}, "is a 'attack' result, not 'eval-c'"),
        ({"clean_acc": 0.9, "corruptions_acc": 0.8}, "not a robustcli result"),
    ]:
        path.write_text(json.dumps(bad))
        with pytest.raises(DataError, match=expected) as info:
            read_result(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_result_json_and_robustbench_csv(tmp_path):
    doc = eval_c_document(_tally(), model={"name": "m1"}, provenance={"device": "cpu"})
    assert (doc["schema"], doc["schema_version"], doc["kind"]) == ("robustcli-result", 1, "eval-c")
    assert doc["clean_acc"] == 100.0 and doc["corruptions_acc"] == pytest.approx(75.0)
    paths = write_eval_c(doc, tmp_path / "r.json")
    lines = paths["csv"].read_text().splitlines()
    assert lines[0] == ",gaussian_noise,gaussian_noise,fog,fog"
    assert lines[1] == ",1,2,1,2"
    assert lines[2] == "m1,0.9,0.5,0.8,0.8"
    back = pd.read_csv(paths["csv"], header=[0, 1], index_col=0)
    assert back.loc["m1", ("gaussian_noise", "2")] == pytest.approx(0.5)
    assert json.loads(paths["json"].read_text())["per_corruption"]["fog"] == 80.0
    with pytest.raises(OutputExistsError):
        write_eval_c(doc, tmp_path / "r.json")
    write_eval_c(doc, tmp_path / "r.json", force=True)
    assert list(unaggregated_frame(doc).columns[:2]) == [
        ("gaussian_noise", 1),
        ("gaussian_noise", 2),
    ]


# --------------------------------------------------------------------------------------------
# Data sources
# --------------------------------------------------------------------------------------------


def test_generated_source_equals_generate_dataset(tmp_path):
    """--generate evaluates exactly the images generate_dataset writes with the same seed."""
    names = ["gaussian_noise", "contrast"]
    generate_dataset(IMAGES, LABELS, tmp_path / "c", names, seed=3, progress=False)
    files = load_official(tmp_path / "c", names)
    clean = torch.from_numpy(IMAGES).permute(0, 3, 1, 2).contiguous()
    items = GeneratedSource(clean, torch.from_numpy(LABELS), seed=3).items(names, [1, 4], None, 7)
    assert len(items) == 4
    for item, (name, s) in zip(items, [(c, s) for c in names for s in (1, 4)], strict=True):
        x, y, sev = item.load()
        assert np.array_equal(x.permute(0, 2, 3, 1).numpy(), files.images(name, s))
        assert y.tolist() == LABELS.tolist() and set(sev.tolist()) == {[1, 4].index(s)}


def test_official_source_errors(tmp_path, oracle_dir):
    bad = tmp_path / "bad"
    bad.mkdir()
    np.save(bad / "labels.npy", np.zeros(10, dtype=np.uint8))
    np.save(bad / "fog.npy", np.zeros((10, 32, 32), dtype=np.uint8))
    with pytest.raises(DataError, match="shape"):
        OfficialSource(bad, ["fog"])
    with pytest.raises(DataError, match="missing"):
        OfficialSource(bad, ["snow"])
    src = OfficialSource(oracle_dir, ["gaussian_noise"])
    with pytest.raises(DataError, match="--n-examples 11 exceeds"):
        src.items(["gaussian_noise"], [1], 11, 100)


def test_checkpoint_by_registered_name(tmp_path, monkeypatch):
    monkeypatch.delenv("ROBUSTCLI_CHECKPOINTS", raising=False)
    with pytest.raises(CheckpointError, match="no stored checkpoint for 'resnet20'.*robust train"):
        resolve_checkpoint("resnet20", tmp_path)
    stored = tmp_path / "resnet20" / "model.safetensors"
    stored.parent.mkdir()
    stored.write_bytes(b"x")
    assert resolve_checkpoint("resnet20", tmp_path) == stored
    monkeypatch.setenv("ROBUSTCLI_CHECKPOINTS", str(tmp_path))
    assert resolve_checkpoint("resnet20") == stored
    with pytest.raises(CheckpointError, match="did you mean"):
        resolve_checkpoint("resnet2O")


# --------------------------------------------------------------------------------------------
# CLI end to end
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Clean ImageFolder tree and CIFAR-10-C files from the 20 real images, a checkpoint."""
    root = tmp_path_factory.mktemp("evalc")
    for split in ("train", "test"):
        for c in CLASSES:
            (root / "clean" / split / c).mkdir(parents=True)
    for i, (img, y) in enumerate(zip(IMAGES, LABELS, strict=True)):
        for split in ("train", "test"):
            Image.fromarray(img).save(root / "clean" / split / CLASSES[y] / f"{i:04d}.png")
    generate_dataset(
        IMAGES, LABELS, root / "c10c", ["gaussian_noise", "contrast"], seed=0, progress=False
    )
    torch.manual_seed(0)
    model = _randomize_bn(create_model("resnet20"))
    save_checkpoint(
        root / "ckpts" / "resnet20" / "model.safetensors",
        model,
        model_name="resnet20",
        config=resolve_config("resnet20"),
        dataset="cifar10",
        normalization={"mean": list(SPEC.mean), "std": list(SPEC.std)},
    )
    return root


def _run(args, env=None):
    """eval-c's exit code and, on success, its stdout (the result; progress lines go to
    stderr), else everything it printed (the error)."""
    result = CliRunner().invoke(app, ["eval-c", *args], env=env)
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


def test_cli_eval_c_end_to_end(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTCLI_CACHE", str(tmp_path / "cache"))
    ws = workspace
    out = tmp_path / "res" / "r20.json"
    base = [
        str(ws / "ckpts" / "resnet20"),
        "--cifar-c-dir",
        str(ws / "c10c"),
        "-c",
        "gaussian_noise,contrast",
        "--data-dir",
        str(ws / "clean"),
        "--device",
        "cpu",
    ]
    code, text = _run([*base, "--data-label", "foolbox samples", "--out", str(out)])
    assert code == 0, text
    assert "gaussian_noise" in text and "clean accuracy" in text
    doc = json.loads(out.read_text())
    assert doc["kind"] == "eval-c" and doc["n_examples"] == 20
    assert doc["model"]["name"] == "resnet20" and len(doc["model"]["sha256"]) == 64
    prov = doc["provenance"]
    assert prov["corrupted_data"]["source"] == "generated-files"
    assert prov["corrupted_data"]["generation"]["seed"] == 0
    assert prov["clean_data"]["label"] == "foolbox samples"
    # --precision auto: fp32 on CPUs without native bf16, bf16 + fp32 recheck with it
    auto = "bf16-checked" if cpu_has_native_bf16() else "fp32"
    assert prov["device"] == "cpu" and prov["precision"] == auto
    assert doc["counts"]["clean"][1] == 20
    csv = out.with_suffix(".csv").read_text().splitlines()
    assert csv[0].startswith(",gaussian_noise,") and csv[1] == ",1,2,3,4,5,1,2,3,4,5"

    # the registered name finds the stored checkpoint; the same model as its own baseline
    again = tmp_path / "again.json"
    code, text = _run(
        ["resnet20", *base[1:], "--baseline", str(out), "--out", str(again)],
        env={"ROBUSTCLI_CHECKPOINTS": str(ws / "ckpts")},
    )
    assert code == 0, text
    doc2 = json.loads(again.read_text())
    assert doc2["accuracy"] == doc["accuracy"]
    assert doc2["baseline"]["mce"] == pytest.approx(100.0)

    # existing --out is refused before any work, in one line without a traceback
    code, text = _run([*base, "--out", str(out)])
    assert code == 2 and "already exists" in text and "Traceback" not in text

    code, text = _run([*base, "--no-clean", "--generate", "-n", "10", "--json"])
    assert code == 2 and "--cifar-c-dir DIR" in text  # both sources given


def test_cli_eval_c_generate(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTCLI_CACHE", str(tmp_path / "cache"))
    code, text = _run(
        [
            str(workspace / "ckpts" / "resnet20"),
            "--generate",
            "--seed",
            "5",
            "-c",
            "brightness",
            "-s",
            "2-3",
            "-n",
            "10",
            "--data-dir",
            str(workspace / "clean"),
            "--json",
        ]
    )
    assert code == 0, text
    doc = json.loads(text)
    assert doc["provenance"]["corrupted_data"]["source"] == "generated"
    assert doc["provenance"]["corrupted_data"]["seed"] == 5
    # the clean ImageFolder is sorted by class: 10 evenly spaced images, not the first class
    assert "evenly spaced" in doc["provenance"]["clean_data"]["subset"]
    assert doc["severities"] == [2, 3] and doc["counts"]["brightness"]["2"][1] == 10


def test_cli_per_image_then_paired_compare(workspace, tmp_path, monkeypatch):
    """eval-c --per-image records a bit per image and cell; compare --paired turns two such
    results into deltas with bootstrap intervals over the images."""
    monkeypatch.setenv("ROBUSTCLI_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(1)
    other = _randomize_bn(create_model("resnet20"))
    save_checkpoint(
        tmp_path / "other" / "model.safetensors",
        other,
        model_name="resnet20",
        config=resolve_config("resnet20"),
        dataset="cifar10",
        normalization={"mean": list(SPEC.mean), "std": list(SPEC.std)},
    )
    sel = ["--generate", "-c", "gaussian_noise,fog", "-s", "1,5", "--data-dir"]
    sel += [str(workspace / "clean"), "--per-image", "--no-progress"]
    docs = {}
    for name, ck in (("a", workspace / "ckpts" / "resnet20"), ("b", tmp_path / "other")):
        out = tmp_path / f"{name}.json"
        code, text = _run([str(ck), *sel, "--out", str(out)])
        assert code == 0, text
        docs[name] = json.loads(out.read_text())
    bits = docs["a"]["per_image"]
    assert bits["n"] == 20 and set(bits["accuracy"]) == {"gaussian_noise", "fog"}
    from robustcli.evaluate.paired import per_image_metrics

    frame = per_image_metrics(docs["a"])
    assert frame["clean_acc"].mean() == pytest.approx(docs["a"]["clean_acc"])
    assert frame["corruption:fog"].mean() == pytest.approx(docs["a"]["per_corruption"]["fog"])

    args = ["compare", str(tmp_path / "a.json"), "--baseline", str(tmp_path / "b.json")]
    result = CliRunner().invoke(app, [*args, "--paired", "--format", "csv"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.output)).set_index("metric")
    delta = docs["a"]["clean_acc"] - docs["b"]["clean_acc"]
    row = table.loc["clean_acc"]
    assert row["delta resnet20"] == pytest.approx(delta)
    assert row["ci_low resnet20"] <= delta <= row["ci_high resnet20"]
    assert row["ci_low resnet20"] < row["ci_high resnet20"]  # 20 images: a wide interval
    md = CliRunner().invoke(app, [*args, "--paired", "--format", "markdown"])
    assert md.exit_code == 0 and f"{delta:+.2f} [" in md.output

    # --paired needs a baseline, and per-image results on both sides
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "a.json"), "--paired"])
    assert result.exit_code == 2 and "pass --baseline" in result.output
    plain = tmp_path / "plain.json"
    code, text = _run([str(tmp_path / "other"), *sel[:-2], "--out", str(plain)])
    assert code == 0, text
    result = CliRunner().invoke(app, [*args[:2], "--baseline", str(plain), "--paired"])
    assert result.exit_code == 2, result.output
    assert "no per-image results: evaluate with `robust eval-c --per-image`" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args,message",
    [
        (["--cifar-c-dir", "{tmp}/nope"], "not found"),
        (["--cifar-c-dir", "{bad}"], "expected (rows, H, W, 3)"),
        ([], "choose the corrupted data"),
        (["--cifar-c-dir", "{c10c}", "-c", "fgo"], "did you mean fog"),
        (["--cifar-c-dir", "{c10c}", "-c", "fog", "--no-clean"], "fog.npy is missing"),
    ],
)
def test_cli_eval_c_errors(workspace, tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("ROBUSTCLI_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad"
    bad.mkdir()
    np.save(bad / "labels.npy", np.zeros(10, dtype=np.uint8))
    np.save(bad / "gaussian_noise.npy", np.zeros((10, 32, 32, 1), dtype=np.uint8))
    subs = {"tmp": str(tmp_path), "bad": str(bad), "c10c": str(workspace / "c10c")}
    args = [a.format(**subs) for a in args]
    selection = [] if "-c" in args else ["-c", "gaussian_noise"]
    code, text = _run([str(workspace / "ckpts" / "resnet20"), *selection, *args])
    assert code == 2, text
    assert message in text and "Traceback" not in text
    assert len(text.strip().splitlines()) == 1


def test_a_model_of_another_dataset_is_named_before_its_clean_set_is_looked_for(
    workspace, tmp_path, monkeypatch
):
    """An MNIST model on CIFAR-10-C: the mismatch is the error, not a failed MNIST download."""
    monkeypatch.setenv("ROBUSTCLI_CACHE", str(tmp_path / "cache"))
    save_checkpoint(
        tmp_path / "lenet" / "model.safetensors",
        create_model("bu-lenetfc"),
        model_name="bu-lenetfc",
        config=resolve_config("bu-lenetfc"),
        dataset="mnist",
        normalization={"mean": [0.5], "std": [0.5]},
    )
    (tmp_path / "empty").mkdir()  # no MNIST here, and the clean set is not needed to tell
    code, text = _run(
        [str(tmp_path / "lenet"), "--cifar-c-dir", str(workspace / "c10c"), "-c", "contrast"]
        + ["--data-dir", str(tmp_path / "empty")]
    )
    assert code == 2 and "Traceback" not in text
    assert "bu-lenetfc takes 1x28x28 dataset images (mnist)" in text
    assert "corrupted images are 3x32x32" in text and len(text.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------
# Sharded over two processes
# --------------------------------------------------------------------------------------------

DDP_SCRIPT = """
import json, os, sys, torch
from robustcli.evaluate import run_eval_c
torch.set_num_threads(1)
root, out = sys.argv[1], sys.argv[2]
doc = run_eval_c(os.path.join(root, "ckpts", "resnet20"), cifar_c_dir=os.path.join(root, "c10c"),
                 corruptions="gaussian_noise,contrast", data_dir=os.path.join(root, "clean"),
                 device="cpu", batch_size=7, per_image=True)
with open(os.path.join(out, "rank%s.json" % os.environ["RANK"]), "w") as fh:
    json.dump({"counts": doc["counts"], "world": doc["provenance"]["inference"]["world_size"],
               "per_image": doc["per_image"]}, fh)
"""


@pytest.mark.ddp
def test_two_gloo_ranks_match_one_process(workspace, tmp_path, monkeypatch, torchrun):
    from robustcli.evaluate import run_eval_c

    monkeypatch.setenv("ROBUSTCLI_CACHE", str(tmp_path / "cache"))
    proc = torchrun(DDP_SCRIPT, workspace, tmp_path, name="ddp_eval.py", timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single = run_eval_c(
        workspace / "ckpts" / "resnet20",
        cifar_c_dir=workspace / "c10c",
        corruptions="gaussian_noise,contrast",
        data_dir=workspace / "clean",
        device="cpu",
        batch_size=7,
        per_image=True,
    )
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["world"] == 2
        assert got["counts"] == single["counts"]
        assert got["per_image"] == single["per_image"]  # each rank's images, summed


def test_cli_corrupt_then_eval_equals_generate(workspace, tmp_path, monkeypatch):
    """`robust corrupt` writes the images that `eval-c --generate` evaluates (same seed)."""
    monkeypatch.setenv("ROBUSTCLI_CACHE", str(tmp_path / "cache"))
    clean = ["--data-dir", str(workspace / "clean")]
    result = CliRunner().invoke(
        app,
        [
            "corrupt",
            str(tmp_path / "c"),
            "-c",
            "gaussian_noise,snow",
            "-s",
            "4",
            "-n",
            "10",
            "--seed",
            "5",
            *clean,
        ],
    )
    assert result.exit_code == 0, result.output
    ck = str(workspace / "ckpts" / "resnet20")
    sel = ["-c", "gaussian_noise,snow", "-s", "4", "--json"]
    code, files = _run([ck, "--cifar-c-dir", str(tmp_path / "c"), "-n", "10", *sel, *clean])
    assert code == 0, files
    code, generated = _run([ck, "--generate", "--seed", "5", "-n", "10", *sel, *clean])
    assert code == 0, generated
    a, b = json.loads(files), json.loads(generated)
    assert a["counts"] == b["counts"] and a["n_examples"] == 10


def test_package_keeps_the_old_import_paths():
    """evaluate.py became a package and the folding moved to layers/fold.py: every public name
    is still importable from robustcli.evaluate, and the folding is the same object there."""
    import robustcli.evaluate as ev
    import robustcli.layers as layers
    from robustcli.layers import fold

    for name in ev.__all__:
        assert getattr(ev, name) is not None, name
    assert ev.prepare_for_inference is fold.prepare_for_inference is layers.prepare_for_inference
    assert ev.FoldedMultiScalePushPull is fold.FoldedMultiScalePushPull
    assert {"run_eval_c", "write_eval_c", "select_corruptions", "load_clean"} <= set(ev.__all__)
