"""Datasets, the input adapter and on-device batches (robustcli.data)."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robustcli import data
from robustcli.data import (
    DeviceBatches,
    adapt_images,
    dataset_info,
    imagefolder,
    input_adapter,
    load_dataset,
    normalize,
)
from robustcli.data import idx as idx_files
from robustcli.data import torchvision as tv_files
from robustcli.errors import DataError
from robustcli.runtime import DistInfo


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTCLI_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_digits_are_real_split_and_deterministic():
    xtr, ytr = load_dataset("digits", "train")
    xte, yte = load_dataset("digits", "test")
    assert xtr.dtype == torch.uint8 and ytr.dtype == torch.int64
    assert xtr.shape == (1433, 1, 8, 8) and xte.shape == (364, 1, 8, 8)
    assert int(xtr.max()) == 255 and int(xtr.min()) == 0
    # balanced test split: 35..37 images of each digit
    counts = torch.bincount(yte, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37
    # the same images every call, and no image in both splits
    assert torch.equal(load_dataset("digits", "train")[0], xtr)
    assert len(xtr) + len(xte) == 1797  # all of scikit-learn's digits
    # zoo statistics are those of the train split
    info = dataset_info("digits")
    v = xtr.double() / 255
    assert info.mean[0] == pytest.approx(float(v.mean()), abs=1e-4)
    assert info.std[0] == pytest.approx(float(v.std()), abs=1e-4)


def test_unknown_split_and_dataset_and_missing_dir(tmp_path):
    with pytest.raises(DataError, match="split"):
        load_dataset("digits", "valid")
    with pytest.raises(DataError, match="unknown dataset 'cifar100'"):
        load_dataset("cifar100", "train")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("cifar10", "train", tmp_path / "nope")


def test_missing_cifar_says_how_to_get_it(tmp_path, monkeypatch):
    class Offline:  # torchvision's behaviour without files and without network
        def __init__(self, root, train=True, download=False):
            if download:
                raise OSError("network unreachable")
            raise RuntimeError("Dataset not found or corrupted.")

    datasets = types.ModuleType("torchvision.datasets")
    datasets.CIFAR10 = Offline
    tv = types.ModuleType("torchvision")
    tv.datasets = datasets
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", "train", tmp_path)
    msg = str(err.value)
    assert "\n" not in msg
    assert "cifar-10-python.tar.gz" in msg and "--data-dir" in msg and "digits" in msg


def _write_tree(root: Path, n_per_class: int = 6) -> dict[str, torch.Tensor]:
    """An ImageFolder tree of real digit images (PNG is lossless)."""
    from PIL import Image

    x, y = load_dataset("digits", "train")
    written = {}
    for split, offset in (("train", 0), ("test", 100)):
        imgs, labels = [], []
        for label, cls in enumerate(("one", "three", "zero")):
            digit = (1, 3, 0)[label]
            idx = torch.nonzero(y == digit).flatten()[offset : offset + n_per_class]
            folder = root / split / cls
            folder.mkdir(parents=True)
            for k, i in enumerate(idx.tolist()):
                rgb = x[i, 0].numpy()[:, :, None].repeat(3, axis=2)
                Image.fromarray(rgb).save(folder / f"{k:03d}.png")
                imgs.append(torch.from_numpy(rgb).permute(2, 0, 1))
                labels.append(label)
        written[split] = torch.stack(imgs)
        written[split + "_labels"] = torch.tensor(labels)
    return written


def test_imagefolder_decoded_once_into_cache(tmp_path, cache, monkeypatch):
    truth = _write_tree(tmp_path / "tree")
    x, y = load_dataset("imagefolder", "train", tmp_path / "tree")
    assert x.dtype == torch.uint8 and x.shape == (18, 3, 8, 8)
    assert torch.equal(x, truth["train"]) and torch.equal(y, truth["train_labels"])
    assert len(list((cache / "imagefolder").glob("*.safetensors"))) == 1

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(imagefolder, "_decode", no_decode)
    x2, y2 = load_dataset("imagefolder", "train", tmp_path / "tree")
    assert torch.equal(x2, x) and torch.equal(y2, y)

    info = dataset_info("imagefolder", tmp_path / "tree")
    assert info.classes == ("one", "three", "zero") and info.input_shape == (3, 8, 8)
    assert info.mean[0] == pytest.approx(float(x.double().mean() / 255), abs=1e-4)


def test_imagefolder_for_a_named_dataset_checks_class_count(tmp_path, cache):
    _write_tree(tmp_path / "tree")
    with pytest.raises(DataError, match="3 class folders but cifar10 has 10"):
        load_dataset("cifar10", "test", tmp_path / "tree")


def test_adapter_digits_to_resnet_input():
    x, _ = load_dataset("digits", "test")
    adapter = input_adapter((1, 8, 8), (3, 32, 32))
    assert (adapter.channels, adapter.resize) == ("replicate", "bilinear")
    assert "8x8 -> 32x32" in adapter.describe()
    out = adapt_images(x[:5], adapter)
    assert out.dtype == torch.uint8 and out.shape == (5, 3, 32, 32)
    assert torch.equal(out[:, 0], out[:, 2])
    ref = F.interpolate(x[:5].float(), size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.equal(out[:, :1], ref.round().clamp(0, 255).to(torch.uint8))
    # float inputs in [0, 1] follow the same path without rounding
    f = adapt_images(x[:5].float() / 255, adapter)
    assert f.dtype == torch.float32 and (f * 255 - out.float()).abs().max() <= 0.5 + 1e-4
    # round trip through the checkpoint's dict form
    assert data.InputAdapter.from_dict(adapter.to_dict()) == adapter
    mean, std = adapter.normalization((0.3,), (0.4,))
    assert mean == (0.3, 0.3, 0.3) and std == (0.4, 0.4, 0.4)


def test_adapter_identity_luma_and_refusal():
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    same = input_adapter((3, 32, 32), (3, 32, 32))
    assert same.identity and adapt_images(x, same) is x
    luma = input_adapter((3, 32, 32), (1, 28, 28))
    assert luma.channels == "luma" and adapt_images(x, luma).shape == (2, 1, 28, 28)
    with pytest.raises(DataError, match="cannot feed 3-channel"):
        input_adapter((3, 32, 32), (4, 32, 32))
    with pytest.raises(DataError, match="adapter expects"):
        adapt_images(torch.zeros(1, 1, 28, 28, dtype=torch.uint8), luma)


def _reference_crop_flip(images, idx, dy, dx, flip, pad):
    out = []
    padded = F.pad(images, (pad, pad, pad, pad))
    for i, a, b, f in zip(idx.tolist(), dy.tolist(), dx.tolist(), flip.tolist(), strict=True):
        crop = padded[i, :, a : a + images.shape[2], b : b + images.shape[3]]
        out.append(crop.flip(2) if f else crop)
    return torch.stack(out)


def test_device_batches_crop_flip_equals_per_image_reference():
    x, y = load_dataset("digits", "train")
    x = adapt_images(x[:64], input_adapter((1, 8, 8), (3, 32, 32)))
    mean, std = (0.3, 0.3, 0.3), (0.4, 0.4, 0.4)
    batches = DeviceBatches(
        x, y[:64], mean=mean, std=std, batch_size=16, augment="crop+flip", generator=None
    )
    assert batches.pad == 4
    g = torch.Generator().manual_seed(3)
    idx = torch.randperm(64, generator=g)[:16]
    dy, dx = torch.randint(0, 9, (16,), generator=g), torch.randint(0, 9, (16,), generator=g)
    flip = torch.randint(0, 2, (16,), generator=g).bool()
    got = batches.gather(idx, dy, dx, flip)
    ref = normalize(_reference_crop_flip(x, idx, dy, dx, flip, 4).float() / 255, mean, std)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def test_device_batches_seeded_epochs_cover_all_images():
    x, y = load_dataset("digits", "train")
    x, y = x[:100], y[:100]

    def epoch(seed):
        gen = torch.Generator().manual_seed(seed)
        b = DeviceBatches(
            x, y, mean=(0.3,), std=(0.4,), batch_size=32, augment="none", generator=gen
        )
        return list(b)

    a, b, c = epoch(0), epoch(0), epoch(1)
    assert len(a) == 4  # 32 + 32 + 32 + 4 (a short last batch of >= 2 is kept)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b, strict=True))
    assert not torch.equal(a[0][1], c[0][1])
    labels = torch.cat([batch[1] for batch in a])
    assert torch.equal(labels.sort().values, y.sort().values)


def test_device_batches_rank_shares_make_the_global_batch():
    x, y = load_dataset("digits", "train")
    x, y = x[:70], y[:70]
    kw = dict(mean=(0.3,), std=(0.4,), batch_size=33, augment="crop")

    def run(info):
        gen = torch.Generator().manual_seed(5)
        return list(DeviceBatches(x, y, generator=gen, info=info, **kw))

    single = run(DistInfo())
    r0, r1 = run(DistInfo(0, 2)), run(DistInfo(1, 2))
    assert len(single) == len(r0) == len(r1) == 3
    for s, a, b in zip(single, r0, r1, strict=True):
        assert s[2] == a[2] == b[2]  # global batch size
        assert torch.equal(torch.cat([a[0], b[0]]), s[0])
        assert torch.equal(torch.cat([a[1], b[1]]), s[1])
    assert r0[0][0].shape[0] == 17 and r1[0][0].shape[0] == 16  # uneven shares


def test_channels_last_batches_have_nhwc_strides():
    x, y = load_dataset("digits", "train")
    b = DeviceBatches(
        x[:8], y[:8], mean=(0.3,), std=(0.4,), batch_size=8, channels_last=True, generator=None
    )
    xb = next(iter(b))[0]
    assert xb.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_jpeg_cifar_mirror_loads():
    root = os.environ.get("ROBUSTCLI_CIFAR_DIR")
    if not root or not Path(root).is_dir():
        pytest.skip("set ROBUSTCLI_CIFAR_DIR to the extracted CIFAR-10 (JPEG mirror) tree")
    x, y = load_dataset("cifar10", "test", root)
    assert x.shape == (10000, 3, 32, 32) and x.dtype == torch.uint8
    assert np.array_equal(torch.bincount(y).numpy(), np.full(10, 1000))


# --------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST IDX files
# --------------------------------------------------------------------------------------------


def _idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of uint8 ``array``: magic 0x0800 + ndim, big-endian dimensions, the data."""
    header = (0x800 + array.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _write_idx(folder: Path, stem: str, array: np.ndarray, gz: bool) -> Path:
    import gzip

    folder.mkdir(parents=True, exist_ok=True)
    blob = _idx_bytes(array)
    path = folder / (f"{stem}.gz" if gz else stem)
    path.write_bytes(gzip.compress(blob) if gz else blob)
    return path


def _mnist_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 6, 5), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


@pytest.fixture
def no_download(monkeypatch):
    """Any fall-back to torchvision (which would download) fails the test loudly."""

    def download(*args, **kwargs):
        raise AssertionError("torchvision / a download was attempted although files are present")

    monkeypatch.setattr(tv_files, "load_torchvision", download)


def _mnist_tree(root: Path, gz: bool, n_train: int = 7, n_test: int = 3) -> dict[str, tuple]:
    raw = root / "MNIST" / "raw"
    out = {}
    for split, n, prefix in (("train", n_train, "train"), ("test", n_test, "t10k")):
        x, y = _mnist_split(n, seed=n)
        _write_idx(raw, f"{prefix}-images-idx3-ubyte", x, gz)
        _write_idx(raw, f"{prefix}-labels-idx1-ubyte", y, gz)
        out[split] = (x, y)
    return out


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_idx_files_load_without_download(tmp_path, monkeypatch, no_download, gz):
    monkeypatch.setattr(idx_files, "_IDX_MD5", {})  # synthetic files: no official checksums
    truth = _mnist_tree(tmp_path, gz)
    for split in ("train", "test"):
        x, y = load_dataset("mnist", split, tmp_path)
        n = len(truth[split][1])
        assert x.dtype == torch.uint8 and x.shape == (n, 1, 6, 5)
        assert torch.equal(x[:, 0], torch.from_numpy(truth[split][0]))
        assert y.dtype == torch.int64 and y.tolist() == truth[split][1].tolist()
    # the MNIST folder itself, and a folder holding the files directly, work too
    assert load_dataset("mnist", "test", tmp_path / "MNIST")[0].shape == (3, 1, 6, 5)
    assert load_dataset("mnist", "test", tmp_path / "MNIST" / "raw")[0].shape == (3, 1, 6, 5)
    # Fashion-MNIST reads the same layout under FashionMNIST/raw
    (tmp_path / "MNIST").rename(tmp_path / "FashionMNIST")
    assert load_dataset("fashion-mnist", "train", tmp_path)[1].shape == (7,)


def _one_line_error(call) -> str:
    with pytest.raises(DataError) as err:
        call()
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_damaged_idx_files_are_one_line_errors(tmp_path, monkeypatch, no_download, gz):
    import gzip

    monkeypatch.setattr(idx_files, "_IDX_MD5", {})
    _mnist_tree(tmp_path, gz)
    raw = tmp_path / "MNIST" / "raw"
    suffix = ".gz" if gz else ""
    images = raw / f"t10k-images-idx3-ubyte{suffix}"
    labels = raw / f"t10k-labels-idx1-ubyte{suffix}"
    blob = images.read_bytes()

    def load():
        return load_dataset("mnist", "test", tmp_path)

    # truncated: the archive (gz) or the data (raw) ends early
    images.write_bytes(blob[: len(blob) - 10])
    msg = _one_line_error(load)
    assert str(images) in msg and ("truncated" in msg or "damaged gzip" in msg)
    # a complete archive of a truncated IDX file is caught by its length
    content = _idx_bytes(_mnist_split(3, 3)[0])[:-7]
    images.write_bytes(gzip.compress(content) if gz else content)
    msg = _one_line_error(load)
    assert str(images) in msg and "truncated" in msg
    # wrong magic number: a labels file where the images should be
    y = _idx_bytes(np.zeros(3, dtype=np.uint8))
    images.write_bytes(gzip.compress(y) if gz else y)
    msg = _one_line_error(load)
    assert str(images) in msg and "magic number 0x00000801" in msg and "0x00000803" in msg
    # image and label counts differ
    _write_idx(raw, "t10k-images-idx3-ubyte", _mnist_split(4, 4)[0], gz)
    msg = _one_line_error(load)
    assert "4 images" in msg and "3 labels" in msg and str(labels) in msg
    # a label out of 0..9
    _write_idx(raw, "t10k-images-idx3-ubyte", _mnist_split(3, 3)[0], gz)
    _write_idx(raw, "t10k-labels-idx1-ubyte", np.array([1, 2, 12], dtype=np.uint8), gz)
    msg = _one_line_error(load)
    assert "label 12" in msg and str(labels) in msg


def test_idx_md5_official_or_not(tmp_path, monkeypatch, no_download):
    import hashlib

    truth = _mnist_tree(tmp_path, gz=True)
    content = {
        "t10k-images-idx3-ubyte": _idx_bytes(truth["test"][0]),
        "t10k-labels-idx1-ubyte": _idx_bytes(truth["test"][1]),
    }
    official = {k: hashlib.md5(v).hexdigest() for k, v in content.items()}
    # checked by the decompressed contents: the re-compressed archive still counts as official
    monkeypatch.setattr(idx_files, "_IDX_MD5", {"mnist": official})
    x, y = load_dataset("mnist", "test", tmp_path)
    assert y.tolist() == truth["test"][1].tolist()
    other = {**official, "t10k-labels-idx1-ubyte": "0" * 32}
    monkeypatch.setattr(idx_files, "_IDX_MD5", {"mnist": other})
    msg = _one_line_error(lambda: load_dataset("mnist", "test", tmp_path))
    assert "t10k-labels-idx1-ubyte.gz is not the official file" in msg
    assert official["t10k-labels-idx1-ubyte"] in msg


def test_unreadable_idx_files(tmp_path, monkeypatch, no_download):
    monkeypatch.setattr(idx_files, "_IDX_MD5", {})
    _mnist_tree(tmp_path, gz=True)
    raw = tmp_path / "MNIST" / "raw"
    images = raw / "t10k-images-idx3-ubyte.gz"
    real_read = Path.read_bytes

    def denied(self):
        if self == images:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    with monkeypatch.context() as m:
        m.setattr(Path, "read_bytes", denied)
        msg = _one_line_error(lambda: load_dataset("mnist", "test", tmp_path))
    assert str(images) in msg and "Permission denied" in msg
    # a folder where a file should be: an error, not a download
    images.unlink()
    images.mkdir()
    msg = _one_line_error(lambda: load_dataset("mnist", "test", tmp_path))
    assert str(images) in msg and "not a file" in msg
    # --data-dir that is a file (an archive, say)
    archive = tmp_path / "mnist.tar.gz"
    archive.write_bytes(b"x")
    msg = _one_line_error(lambda: load_dataset("mnist", "test", archive))
    assert "is a file, not a folder" in msg


@pytest.mark.slow
def test_real_mnist_loads():
    root = os.environ.get("ROBUSTCLI_MNIST_DIR")
    if not root or not Path(root).is_dir():
        pytest.skip("set ROBUSTCLI_MNIST_DIR to the folder holding MNIST/raw/")
    for split, n in (("train", 60000), ("test", 10000)):
        x, y = load_dataset("mnist", split, root)  # MD5 of the decompressed files checked
        assert x.shape == (n, 1, 28, 28) and x.dtype == torch.uint8
        assert sorted(torch.unique(y).tolist()) == list(range(10))


def test_one_dataset_registry_feeds_every_reader():
    """Names, shapes, normalisation, classes, default augmentation and download folders all
    come from model_zoo.yaml's datasets (plus the built-in imagefolder), and agree with the
    model registry's reading of the same section."""
    from robustcli.data import DEFAULT_AUGMENT, dataset_entry, dataset_names
    from robustcli.registry import get_dataset_spec

    assert dataset_names() == ["cifar10", "digits", "fashion-mnist", "imagefolder", "mnist"]
    for name in dataset_names():
        entry = dataset_entry(name)
        if name == "imagefolder":
            assert entry.loader == "imagefolder" and entry.input_shape is None
            continue
        spec, info = get_dataset_spec(name), dataset_info(name)
        assert (info.input_shape, info.num_classes, info.mean, info.std) == (
            spec.input_shape,
            spec.num_classes,
            spec.mean,
            spec.std,
        )
        assert len(info.classes) == info.num_classes
    assert dict(DEFAULT_AUGMENT) == {
        "cifar10": "crop+flip",
        "digits": "crop",
        "fashion-mnist": "none",
        "imagefolder": "crop+flip",
        "mnist": "none",
    }
    assert dataset_info("cifar10").classes[:2] == ("airplane", "automobile")
    assert dataset_info("fashion-mnist").classes[-1] == "Ankle boot"
    assert dataset_info("mnist").classes == tuple(str(i) for i in range(10))
    assert dataset_entry("cifar10").download.folder == "cifar-10-batches-py"
    assert dataset_entry("mnist").download.md5["t10k-labels-idx1-ubyte"].startswith("27ae3e4e")
    assert dataset_entry("digits").download is None
    with pytest.raises(DataError, match="unknown dataset 'svhn': choose one of cifar10, digits"):
        dataset_entry("svhn")


def test_a_malformed_registry_entry_is_named():
    from robustcli.data.registry import _entry
    from robustcli.errors import RobustError

    good = {
        "input_shape": [1, 8, 8],
        "num_classes": 2,
        "mean": [0.5],
        "std": [0.25],
        "augment": "crop",
        "loader": "embedded",
    }
    assert _entry("ok", good).classes == ("0", "1")
    with pytest.raises(RobustError, match="'bad': augment 'zoom' is not one of"):
        _entry("bad", {**good, "augment": "zoom"})
    with pytest.raises(RobustError, match="idx/torchvision needs a download entry"):
        _entry("bad", {**good, "loader": "idx"})
    with pytest.raises(RobustError, match="3 classes for num_classes 2"):
        _entry("bad", {**good, "classes": ["a", "b", "c"]})
    with pytest.raises(RobustError, match="'bad' is malformed"):
        _entry("bad", {k: v for k, v in good.items() if k != "mean"})
