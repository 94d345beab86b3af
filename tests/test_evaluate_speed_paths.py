"""eval-c's fast paths against the slow ones they stand for.

- Overlapped generation (``--generate``: a background thread or another worker corrupts the next
  chunk while the model runs the current one) gives the per-cell counts of the plain sequential
  loop, exactly, whatever the number of workers.
- ``bf16-checked`` (``--precision auto`` on CPUs with native bf16) predicts what fp32 predicts:
  a near tie that bf16 rounding turns around is predicted again in fp32.
- Plain ``bf16`` only moves images whose fp32 logits were a near tie; ``fp32`` is exact.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from robustcli.corruptions import generate_dataset
from robustcli.evaluate import (
    GeneratedSource,
    OfficialSource,
    eval_precision,
    evaluate_corruptions,
)
from robustcli.evaluate.loop import CHECKED, RECHECK_MARGIN, _BatchCounter, fp32_kernel_layers
from robustcli.layers import fused
from robustcli.layers.pushpull import PushPullConv2d
from robustcli.registry import create_model, get_dataset_spec
from robustcli.runtime import cpu_has_native_bf16

SPEC = get_dataset_spec("cifar10")
CORRUPTIONS = ["gaussian_noise", "defocus_blur", "fog", "contrast", "jpeg_compression"]
SEVERITIES = [1, 3, 5]


def _foolbox_cifar() -> tuple[torch.Tensor, torch.Tensor]:
    spec = importlib.util.find_spec("foolbox")
    folder = os.path.join(next(iter(spec.submodule_search_locations)), "data")  # type: ignore[union-attr]
    files = sorted(glob.glob(os.path.join(folder, "cifar10_*.png")))
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    labels = np.array([int(Path(f).stem.split("_")[-1]) for f in files])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


IMAGES, LABELS = _foolbox_cifar()  # 20 real CIFAR-10 test images, uint8 NCHW


class PixelSum(nn.Module):
    """Predicts (sum of the image's uint8 pixel values) mod 10, exactly: depends on every pixel,
    so any change to a corrupted image or its order shows in the counts."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(SPEC.mean).view(1, -1, 1, 1)
        std = torch.tensor(SPEC.std).view(1, -1, 1, 1)
        pixels = torch.round((x.double() * std + mean) * 255.0)
        return F.one_hot(pixels.sum((1, 2, 3)).long() % 10, 10).float()


def _sequential_counts(source: GeneratedSource) -> np.ndarray:
    """The slow loop: load every item in order, then predict it; counts (corruption, severity)."""
    out = np.zeros((len(CORRUPTIONS), len(SEVERITIES)), dtype=np.int64)
    for item in source.items(CORRUPTIONS, SEVERITIES, None, 1000):
        x, y, sev = item.load()
        pred = x.double().sum((1, 2, 3)).long() % 10
        np.add.at(out[item.row], sev.numpy(), (pred == y).numpy().astype(np.int64))
    return out


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_overlapped_generation_equals_sequential(workers):
    """workers=1: a background thread generates the next (corruption, severity) while the model
    runs the current one; 2-3: worker threads generate and run whole chunks concurrently."""
    source = GeneratedSource(IMAGES, LABELS, seed=11)
    expected = _sequential_counts(source)
    assert 0 < expected.sum() < expected.size * len(IMAGES)  # not all wrong, not all right
    tally = evaluate_corruptions(
        PixelSum(),
        source,
        mean=SPEC.mean,
        std=SPEC.std,
        corruptions=CORRUPTIONS,
        severities=SEVERITIES,
        batch_size=7,
        precision="fp32",
        workers=workers,
    )
    assert tally.correct.tolist() == expected.tolist()
    assert (tally.total == len(IMAGES)).all()


class TieNet(nn.Module):
    """Logits = the first two values of each image's top-left row through a linear layer (bf16
    under autocast). Row ``(1.0, 1.001)`` is class 1 in fp32 and a tie (class 0) in bf16."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x[:, 0, 0, :2])


def _counter(net: nn.Module, recheck: float | None) -> _BatchCounter:
    return _BatchCounter(
        net,
        torch.device("cpu"),
        64,
        mean=SPEC.mean,
        std=SPEC.std,
        adapter=None,
        channels_last=False,
        clean_row=0,
        recheck=recheck,
    )


@pytest.mark.parametrize("n_ties", [1, 3])
def test_checked_bf16_repredicts_near_ties_in_fp32(n_ties):
    x = torch.zeros(8, 3, 4, 4)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = 1.0, 5.0  # clear class 1
    x[:n_ties, 0, 0, 1] = 1.001  # near ties: class 1 in fp32, rounded to a tie in bf16
    x[-1, 0, 0, 0] = 9.0  # clear class 0
    fp32 = TieNet()(x).argmax(1)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = _counter(TieNet(), None)._predict(x)
        checker = _counter(TieNet(), RECHECK_MARGIN)
        checked = checker._predict(x)
    assert fp32.tolist() == [1] * 7 + [0]
    assert plain[:n_ties].tolist() == [0] * n_ties  # bf16 alone gets the ties wrong
    assert checked.tolist() == fp32.tolist()
    assert checker.rechecked == n_ties


def _small_cnn() -> nn.Module:
    """A random convolutional trunk whose last layer is fitted (least squares) to classify the
    20 clean images: corrupted ones are then partly right, partly wrong, as with a real model."""
    torch.manual_seed(3)
    trunk = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ).eval()
    mean = torch.tensor(SPEC.mean).view(1, -1, 1, 1)
    std = torch.tensor(SPEC.std).view(1, -1, 1, 1)
    with torch.no_grad():
        feats = trunk((IMAGES.float() / 255.0 - mean) / std)
        ones = torch.ones(feats.shape[0], 1)
        target = 4.0 * F.one_hot(LABELS, 10).float()
        sol = torch.linalg.lstsq(torch.cat([feats, ones], 1).double(), target.double()).solution
        head = nn.Linear(32, 10)
        head.weight.copy_(sol[:-1].T.float())
        head.bias.copy_(sol[-1].float())
    return nn.Sequential(trunk, head).eval()


@pytest.fixture(scope="module")
def c10c(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("speed-c10c") / "c"
    nhwc = IMAGES.permute(0, 2, 3, 1).numpy()
    generate_dataset(nhwc, LABELS.numpy(), root, CORRUPTIONS, seed=0, progress=False)
    return root


def _counts(model: nn.Module, root: Path, precision: str, workers: int = 2):
    return evaluate_corruptions(
        model,
        OfficialSource(root, CORRUPTIONS),
        mean=SPEC.mean,
        std=SPEC.std,
        corruptions=CORRUPTIONS,
        batch_size=16,
        precision=precision,
        workers=workers,
    )


def _reference_counts(model: nn.Module, root: Path) -> np.ndarray:
    """RobustBench's way: unfolded model, fp32, per corruption and severity."""
    mean = torch.tensor(SPEC.mean).view(1, -1, 1, 1)
    std = torch.tensor(SPEC.std).view(1, -1, 1, 1)
    labels = torch.from_numpy(np.load(root / "labels.npy")[: len(IMAGES)].astype(np.int64))
    out = np.zeros((len(CORRUPTIONS), 5), dtype=np.int64)
    for i, name in enumerate(CORRUPTIONS):
        data = np.load(root / f"{name}.npy")
        for s in range(5):
            x = torch.from_numpy(data[s * len(IMAGES) : (s + 1) * len(IMAGES)]).permute(0, 3, 1, 2)
            with torch.no_grad():
                pred = model((x.float() / 255.0 - mean) / std).argmax(1)
            out[i, s] = int((pred == labels).sum())
    return out


def test_fp32_is_exact_and_bf16_close(c10c):
    model = _small_cnn()
    reference = _reference_counts(model, c10c)
    assert 0.2 < reference.mean() / len(IMAGES) < 0.95  # the counts can tell models apart
    fp32 = _counts(model, c10c, "fp32")
    assert fp32.correct.tolist() == reference.tolist()
    assert "recheck" not in fp32.report and fp32.report["batch_size"] == 16
    assert _counts(model, c10c, "fp32", workers=1).correct.tolist() == reference.tolist()
    if not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16: bf16 autocast would be emulated and slow")
    checked = _counts(model, c10c, CHECKED)
    assert checked.correct.tolist() == reference.tolist()
    assert checked.report["recheck"]["margin"] == RECHECK_MARGIN
    plain = _counts(model, c10c, "bf16")
    # bf16 alone may turn near ties around: at most a few of the 20 images of a cell
    assert np.abs(plain.correct - reference).max() <= 0.15 * len(IMAGES)


def test_explicit_bf16_on_a_cpu_without_native_bf16_is_kept_with_a_warning(monkeypatch):
    """bf16 is emulated there (ResNet32 training ran 9-11 images/s for each of two runs on a
    2-core AVX2 EPYC, 165 in fp32 for one run on both cores): say so, but run what was asked."""
    from robustcli import runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="emulated there, many times slower than fp32"):
        assert runtime.resolve_precision("bf16", cpu) == "bf16"
    assert runtime.resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runtime.resolve_precision("bf16", cpu) == "bf16"
        assert runtime.resolve_precision("auto", cpu) == "bf16"


def test_auto_precision_on_cpu():
    """auto: bf16-checked on CPUs with native bf16, except for models whose push-pull layers
    the fused kernel computes in fp32 anyway (there bf16 saves little and the recheck costs)."""
    cpu = torch.device("cpu")
    native = cpu_has_native_bf16()
    assert eval_precision("auto", cpu) == (CHECKED if native else "fp32")
    assert eval_precision("auto", cpu, _small_cnn()) == (CHECKED if native else "fp32")
    assert eval_precision("fp32", cpu) == "fp32"
    if native:
        assert eval_precision("bf16", cpu) == "bf16"
    else:  # kept as asked, with the one-line warning that bf16 is emulated on this CPU
        with pytest.warns(RuntimeWarning, match="emulated"):
            assert eval_precision("bf16", cpu) == "bf16"
    pp = create_model("pp-resnet20")
    kernel = fused.available(torch.zeros(1))
    n_pp = sum(isinstance(m, PushPullConv2d) for m in pp.modules())
    assert n_pp > 0 and fp32_kernel_layers(pp) == (n_pp if kernel else 0)
    assert eval_precision("auto", cpu, pp) == (CHECKED if native and not kernel else "fp32")
