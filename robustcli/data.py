"""Datasets as uint8 tensors, the model-input adapter, and batches augmented on the device.

``load_dataset(name, split, data_dir)`` returns ``(images, labels)``: uint8 ``N x C x H x W`` and
int64 ``N``. Sources:

- ``digits`` (the embedded offline default): scikit-learn's 1,797 real 8x8 handwritten digits
  (UCI optdigits, 0..16 grey levels scaled to 0..255). Split: in each class, every fifth image is
  in ``test`` (364 images), the rest in ``train`` (1,433). No download, no randomness.
- ``cifar10``, ``mnist``, ``fashion-mnist``: torchvision's files (``cifar-10-batches-py``,
  ``MNIST/raw``, ``FashionMNIST/raw``) under ``data_dir`` or the cache directory, downloaded by
  torchvision when missing; or an ImageFolder tree under ``data_dir``.
- ``imagefolder``: any ImageFolder tree ``DIR/train/<class>/*`` and ``DIR/test/<class>/*``
  (``val`` is accepted for ``test``); its normalisation is computed from the training images.

ImageFolder trees are decoded once into a cached safetensors file (see ``cache_dir``), keyed by
the file list, sizes and modification times.

``InputAdapter`` maps a dataset's image shape to a model's input shape (bilinear resize, and
channel replication or luma); it is recorded in every checkpoint so evaluation and attacks
prepare inputs exactly as training did. ``DeviceBatches`` keeps the uint8 images on the device
and crops / flips / normalises whole batches there, driven by one seeded ``torch.Generator``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from robustcli.errors import DataError, RobustError
from robustcli.io import atomic_write_bytes
from robustcli.registry import get_dataset_spec
from robustcli.runtime import SINGLE, DistInfo

SPLITS = ("train", "test")
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_TORCHVISION = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py", CIFAR10_URL),
    "mnist": ("MNIST", "MNIST/raw", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
    "fashion-mnist": (
        "FashionMNIST",
        "FashionMNIST/raw",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
}
#: Default training augmentation per dataset (``DeviceBatches`` implements them).
DEFAULT_AUGMENT = {
    "cifar10": "crop+flip",  # Strisciuglio / paper A: pad-4 random crop + horizontal flip
    "imagefolder": "crop+flip",
    "digits": "crop",  # small shifts; flipping digits changes their meaning
    "mnist": "none",  # paper B trains MNIST / Fashion-MNIST without augmentation
    "fashion-mnist": "none",
}
AUGMENTS = ("crop+flip", "crop", "flip", "none")


def cache_dir() -> Path:
    """``$ROBUSTCLI_CACHE``, else ``$XDG_CACHE_HOME/robustcli``, else ``~/.cache/robustcli``."""
    if os.environ.get("ROBUSTCLI_CACHE"):
        return Path(os.environ["ROBUSTCLI_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "robustcli"


# --------------------------------------------------------------------------------------------
# Dataset descriptions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset: shape, classes and normalisation."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d


def dataset_names() -> list[str]:
    return ["cifar10", "digits", "fashion-mnist", "imagefolder", "mnist"]


def dataset_info(name: str, data_dir: str | os.PathLike[str] | None = None) -> DatasetInfo:
    """Shape, classes and normalisation of ``name`` (from model_zoo.yaml; computed from the
    training images for ``imagefolder``)."""
    if name == "imagefolder":
        if data_dir is None:
            raise DataError(
                "--dataset imagefolder needs --data-dir DIR with train/<class>/ folders"
            )
        images, _, classes = _load_imagefolder(Path(data_dir), "train", channels=None)
        x = images.double() / 255.0
        mean = tuple(round(float(v), 5) for v in x.mean(dim=(0, 2, 3)))
        std = tuple(round(float(v), 5) for v in x.std(dim=(0, 2, 3)))
        shape = tuple(int(v) for v in images.shape[1:])
        return DatasetInfo(name, shape, len(classes), mean, std, tuple(classes))  # type: ignore[arg-type]
    try:
        spec = get_dataset_spec(name)
    except RobustError:
        raise DataError(
            f"unknown dataset {name!r}: choose one of {', '.join(dataset_names())}"
        ) from None
    if name == "cifar10":
        classes: tuple[str, ...] = CIFAR10_CLASSES
    elif name == "fashion-mnist":
        classes = (
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        )
    else:
        classes = tuple(str(i) for i in range(spec.num_classes))
    return DatasetInfo(name, spec.input_shape, spec.num_classes, spec.mean, spec.std, classes)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_dataset(
    name: str, split: str = "train", data_dir: str | os.PathLike[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8, ``N x C x H x W``) and labels (int64) of one split of a dataset.

    ``data_dir`` may hold torchvision's files (e.g. ``cifar-10-batches-py``), be that folder
    itself, or be an ImageFolder tree with ``train/`` and ``test/``. Without it, torchvision
    datasets live in ``cache_dir()/<name>`` and are downloaded there when missing.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose train or test")
    root = Path(data_dir).expanduser() if data_dir is not None else None
    if root is not None and not root.exists():
        raise DataError(f"data directory {root} does not exist: check --data-dir")
    if name == "digits":
        return _load_digits(split)
    if name == "imagefolder":
        if root is None:
            raise DataError(
                "--dataset imagefolder needs --data-dir DIR with train/<class>/ folders"
            )
        images, labels, _ = _load_imagefolder(root, split, channels=None)
        return images, labels
    info = dataset_info(name)
    if root is not None and _imagefolder_root(root) is not None:
        images, labels, classes = _load_imagefolder(root, split, channels=info.input_shape[0])
        if len(classes) != info.num_classes:
            raise DataError(
                f"{root} has {len(classes)} class folders but {name} has {info.num_classes}: "
                "point --data-dir at the right tree or use --dataset imagefolder"
            )
        return images, labels
    if name in _IDX_FOLDERS:
        return _load_idx(name, split, root)
    if name in _TORCHVISION:
        return _load_torchvision(name, split, root)
    raise DataError(f"dataset {name!r} has no loader: choose one of {', '.join(dataset_names())}")


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits.csv.gz, read without importing sklearn.datasets (seconds)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError(
            "the embedded digits dataset needs scikit-learn: pip install scikit-learn"
        ) from None
    digits = load_digits()
    return digits.images, digits.target.astype(np.int64)


def _load_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    raw, target = _digits_arrays()
    images = np.rint(raw * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    # every fifth image of each class is a test image: balanced and deterministic
    rank_in_class = np.zeros(len(target), dtype=np.int64)
    for c in np.unique(target):
        where = np.flatnonzero(target == c)
        rank_in_class[where] = np.arange(len(where))
    is_test = rank_in_class % 5 == 0
    keep = is_test if split == "test" else ~is_test
    x = torch.from_numpy(images[keep]).unsqueeze(1).contiguous()
    return x, torch.from_numpy(target[keep])


def _torchvision_root(name: str, root: Path | None) -> Path:
    _, marker, _ = _TORCHVISION[name]
    if root is None:
        return cache_dir() / name
    # accept the data folder itself (".../cifar-10-batches-py" or ".../MNIST")
    first = marker.split("/")[0]
    if root.name == first:
        return root.parent
    return root


#: Folders of the IDX datasets under ``data_dir``, and the MD5 sums of MNIST's *decompressed*
#: files (LeCun et al.'s published sums). Archives re-compressed by mirrors have other archive
#: MD5s than torchvision's list, so the files are checked by their contents, not by their bytes.
_IDX_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_IDX_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    }
}


def _idx_stems(split: str) -> tuple[str, str]:
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _find_idx(raw: Path, stem: str) -> Path | None:
    for path in (raw / stem, raw / f"{stem}.gz"):
        if path.is_file():
            return path
    return None


def read_idx(path: Path, ndim: int, expected_md5: str | None = None) -> np.ndarray:
    """The uint8 array of one IDX file (``.gz`` or not), checked by its decompressed contents:
    magic number, dimensions, length and, when given, the MD5 of the decompressed bytes."""
    import gzip

    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} could not be read ({exc}): replace the file") from None
    magic = 0x800 + ndim
    if len(raw) < 4 + 4 * ndim or int.from_bytes(raw[:4], "big") != magic:
        raise DataError(
            f"{path} is not an IDX file of {ndim} dimension(s) (magic number "
            f"{int.from_bytes(raw[:4], 'big') if len(raw) >= 4 else 'missing'}, expected "
            f"{magic}): replace the file"
        )
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    header = 4 + 4 * ndim
    if len(raw) - header != int(np.prod(dims)):
        raise DataError(
            f"{path} holds {len(raw) - header} bytes of data but its header says {dims}: the file "
            "is truncated or damaged, replace it"
        )
    if expected_md5 is not None:
        got = hashlib.md5(raw).hexdigest()
        if got != expected_md5:
            raise DataError(
                f"{path} is not the official file (MD5 of its contents {got}, expected "
                f"{expected_md5}): replace it with the original"
            )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _load_idx(name: str, split: str, root: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST / Fashion-MNIST from their IDX files (torchvision's ``<Name>/raw`` layout)."""
    folder = _IDX_FOLDERS[name]
    base = _torchvision_root(name, root)
    raw = base / folder / "raw"
    stems = _idx_stems(split)
    paths = [_find_idx(raw, stem) for stem in stems]
    if any(p is None for p in paths):
        if root is not None and any(p is not None for p in paths):
            missing = [s for s, p in zip(stems, paths, strict=True) if p is None]
            raise DataError(
                f"{raw} lacks {', '.join(missing)}(.gz): add the missing file(s) of {name}"
            )
        _load_torchvision(name, split, root)  # downloads (or says how to get the files)
        paths = [_find_idx(raw, stem) for stem in stems]
        if any(p is None for p in paths):
            raise DataError(f"{name} files are not in {raw} after the download: fetch them there")
    md5s = _IDX_MD5.get(name, {})
    images = read_idx(paths[0], 3, md5s.get(stems[0]))  # type: ignore[arg-type]
    labels = read_idx(paths[1], 1, md5s.get(stems[1]))  # type: ignore[arg-type]
    if len(images) != len(labels):
        raise DataError(
            f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels: "
            "replace the mismatched file"
        )
    if labels.size and int(labels.max()) > 9:
        raise DataError(f"{paths[1]} has label {int(labels.max())}: {name} labels are 0..9")
    x = torch.from_numpy(images.copy()).unsqueeze(1).contiguous()
    return x, torch.from_numpy(labels.astype(np.int64))


def _load_torchvision(
    name: str, split: str, root: Path | None
) -> tuple[torch.Tensor, torch.Tensor]:
    cls_name, marker, url = _TORCHVISION[name]
    base = _torchvision_root(name, root)
    try:
        import torchvision.datasets as tvd
    except Exception as exc:  # torchvision builds that do not match torch fail at import
        raise DataError(
            f"torchvision could not be imported ({exc}): install a torchvision that matches "
            "torch, or pass --data-dir with an ImageFolder tree"
        ) from None
    cls = getattr(tvd, cls_name)
    train = split == "train"
    try:
        ds = cls(str(base), train=train, download=False)
    except RuntimeError:
        try:
            base.mkdir(parents=True, exist_ok=True)
            ds = cls(str(base), train=train, download=True)
        except Exception as exc:  # network errors come in many types
            reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise DataError(
                f"{name} is not in {base} and could not be downloaded ({reason}): fetch "
                f"{url} into {base / marker}, or pass --data-dir DIR holding "
                f"{marker.split('/')[0]} "
                "or an ImageFolder tree (train/<class>/, test/<class>/); "
                "`--dataset digits` is the embedded offline default"
            ) from None
    data = ds.data
    if isinstance(data, np.ndarray):  # CIFAR: N x H x W x C
        images = torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2).contiguous()
    else:  # MNIST-like: N x H x W uint8 tensor
        images = data.unsqueeze(1).contiguous()
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return images.to(torch.uint8), labels


def _imagefolder_root(root: Path) -> Path | None:
    if (root / "train").is_dir() and ((root / "test").is_dir() or (root / "val").is_dir()):
        return root
    return None


def _split_dir(root: Path, split: str) -> Path:
    if split == "test" and not (root / "test").is_dir() and (root / "val").is_dir():
        return root / "val"
    return root / split


def _list_images(split_dir: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{split_dir} has no class folders: expected {split_dir}/<class>/<image>")
    files: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        for path in sorted((split_dir / cls).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                files.append((path, label))
    if not files:
        raise DataError(f"{split_dir} has no images (png/jpg/...) in its class folders")
    return classes, files


def _decode(path: Path, mode: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert(mode))


def _load_imagefolder(
    root: Path, split: str, channels: int | None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode an ImageFolder split once; later calls read the cached tensor file."""
    if _imagefolder_root(root) is None:
        raise DataError(
            f"{root} is not an ImageFolder tree: expected {root}/train/<class>/ and "
            f"{root}/test/<class>/"
        )
    split_dir = _split_dir(root, split)
    classes, files = _list_images(split_dir)
    if channels is None:  # generic tree: grey if the first image is grey
        from PIL import Image

        with Image.open(files[0][0]) as img:
            channels = 1 if img.mode in ("L", "1", "I;16", "I") else 3
    mode = "L" if channels == 1 else "RGB"
    key = hashlib.sha256()
    key.update(f"{root.resolve()}|{split}|{mode}|{json.dumps(classes)}".encode())
    for path, label in files:
        st = path.stat()
        key.update(
            f"{path.relative_to(split_dir)}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode()
        )
    digest = key.hexdigest()[:20]
    slug = "".join(c if c.isalnum() else "-" for c in root.resolve().name)[:40] or "data"
    cached = cache_dir() / "imagefolder" / f"{slug}-{split}-{mode}-{digest}.safetensors"
    if cached.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            t = load_file(str(cached))
            return t["images"], t["labels"], classes
        except (SafetensorError, OSError, KeyError):
            pass  # a damaged cache is rebuilt below
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        arrays = list(pool.map(lambda f: _decode(f[0], mode), files, chunksize=256))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise DataError(
            f"images in {split_dir} differ in size ({', '.join(map(str, sorted(shapes)[:3]))}): "
            "resize them to one size first"
        )
    stack = np.stack(arrays)
    images = torch.from_numpy(stack[:, None] if stack.ndim == 3 else stack.transpose(0, 3, 1, 2))
    images = images.contiguous()
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    from safetensors.torch import save

    blob = save({"images": images, "labels": labels}, metadata={"classes": json.dumps(classes)})
    with contextlib.suppress(OSError):  # a read-only cache only costs the decode next time
        atomic_write_bytes(cached, blob)
    return images, labels, classes


# --------------------------------------------------------------------------------------------
# Dataset -> model input adaptation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputAdapter:
    """How dataset images of ``source_shape`` become model inputs of ``target_shape``.

    ``channels``: ``keep``, ``replicate`` (1 -> C grey copies) or ``luma`` (RGB -> grey with ITU-R
    BT.601 weights). ``resize``: ``none`` or ``bilinear`` (align_corners=False; antialiased when
    shrinking). uint8 inputs are rounded back to uint8 after resizing (training stores them so);
    float inputs in [0, 1] are resized without rounding.
    """

    source_shape: tuple[int, int, int]
    target_shape: tuple[int, int, int]
    channels: str = "keep"
    resize: str = "none"

    @property
    def identity(self) -> bool:
        return self.channels == "keep" and self.resize == "none"

    def describe(self) -> str:
        if self.identity:
            return "none"
        parts = []
        if self.resize != "none":
            s, t = self.source_shape, self.target_shape
            parts.append(f"{self.resize} resize {s[1]}x{s[2]} -> {t[1]}x{t[2]}")
        if self.channels == "replicate":
            parts.append(f"grey replicated to {self.target_shape[0]} channels")
        elif self.channels == "luma":
            parts.append("RGB -> grey (BT.601 luma)")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source_shape": list(self.source_shape),
            "target_shape": list(self.target_shape),
            "channels": self.channels,
            "resize": self.resize,
            "description": self.describe(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputAdapter:
        return cls(
            tuple(d["source_shape"]),  # type: ignore[arg-type]
            tuple(d["target_shape"]),  # type: ignore[arg-type]
            d.get("channels", "keep"),
            d.get("resize", "none"),
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return adapt_images(x, self)

    def normalization(
        self, mean: Sequence[float], std: Sequence[float]
    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The dataset's mean / std carried over to the adapted channels."""
        if self.channels == "replicate":
            c = self.target_shape[0]
            return (float(mean[0]),) * c, (float(std[0]),) * c
        if self.channels == "luma":
            w = _LUMA
            return (
                (round(sum(a * b for a, b in zip(w, mean, strict=True)), 5),),
                (round(sum(a * b for a, b in zip(w, std, strict=True)), 5),),
            )
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)


_LUMA = (0.299, 0.587, 0.114)


def input_adapter(source_shape: Sequence[int], target_shape: Sequence[int]) -> InputAdapter:
    """The adapter from dataset images of ``source_shape`` to a model's ``target_shape``."""
    src = tuple(int(v) for v in source_shape)
    dst = tuple(int(v) for v in target_shape)
    if len(src) != 3 or len(dst) != 3:
        raise DataError(f"shapes must be C x H x W, got {src} and {dst}")
    if src[0] == dst[0]:
        channels = "keep"
    elif src[0] == 1:
        channels = "replicate"
    elif src[0] == 3 and dst[0] == 1:
        channels = "luma"
    else:
        raise DataError(
            f"cannot feed {src[0]}-channel images to a {dst[0]}-channel model: pick a matching "
            "dataset or override the model's in_channels"
        )
    resize = "none" if src[1:] == dst[1:] else "bilinear"
    return InputAdapter(src, dst, channels, resize)  # type: ignore[arg-type]


def adapt_images(x: torch.Tensor, adapter: InputAdapter, chunk: int = 4096) -> torch.Tensor:
    """Apply ``adapter`` to a batch (uint8 0..255 or float 0..1, ``N x C x H x W``)."""
    if adapter.identity:
        return x
    if tuple(x.shape[1:]) != adapter.source_shape:
        raise DataError(
            f"inputs have shape {tuple(x.shape[1:])}, the adapter expects {adapter.source_shape}"
        )
    if x.shape[0] > chunk:  # bounded memory for whole datasets
        return torch.cat([adapt_images(p, adapter, chunk) for p in x.split(chunk)])
    is_uint8 = x.dtype == torch.uint8
    y = x.float() if is_uint8 else x
    if adapter.channels == "luma":
        w = torch.tensor(_LUMA, dtype=y.dtype, device=y.device).view(1, 3, 1, 1)
        y = (y * w).sum(1, keepdim=True)
    if adapter.resize == "bilinear":
        size = adapter.target_shape[1:]
        shrink = size[0] < y.shape[2] or size[1] < y.shape[3]
        y = F.interpolate(y, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    if adapter.channels == "replicate":
        y = y.expand(-1, adapter.target_shape[0], -1, -1)
    if is_uint8:
        return y.round().clamp_(0, 255).to(torch.uint8).contiguous()
    return y.contiguous()


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel for ``x`` in [0, 1] (the models' input contract)."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def crop_padding(height: int) -> int:
    """Random-crop padding: 4 pixels at 32x32 (the CIFAR standard), height/8 in general."""
    return max(1, round(height / 8))


# --------------------------------------------------------------------------------------------
# Batches on the device
# --------------------------------------------------------------------------------------------


class DeviceBatches:
    """Mini-batches from uint8 images held on the device, augmented there in batch.

    Each epoch draws, from ``generator``, one permutation and per-image crop offsets and flip
    bits; a batch is then one gather from the zero-padded NHWC uint8 tensor (crop and flip
    together) followed by ``x * (1 / (255 std)) - mean / std``. The same stream on every rank
    gives the same global batches; rank ``r`` keeps its contiguous share of each. A short last
    batch is kept unless it has fewer than two images per rank (BatchNorm needs two).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int,
        augment: str = "none",
        padding: int | None = None,
        generator: torch.Generator | None = None,
        shuffle: bool = True,
        channels_last: bool = False,
        drop_last: bool = False,
        info: DistInfo = SINGLE,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError("DeviceBatches expects uint8 images of shape N x C x H x W")
        if augment not in AUGMENTS:
            raise RobustError(f"unknown augmentation {augment!r}: choose one of {AUGMENTS}")
        if batch_size < 1:
            raise RobustError("--batch-size must be positive")
        self.n, c, self.h, self.w = images.shape
        self.device = images.device
        self.labels = labels.to(self.device)
        self.batch_size = int(batch_size)
        self.crop = "crop" in augment
        self.flip = "flip" in augment
        self.pad = (crop_padding(self.h) if padding is None else int(padding)) if self.crop else 0
        self.generator = generator
        self.shuffle = shuffle
        self.channels_last = channels_last
        self.info = info
        # NHWC so that one gather gives a channels-last batch for free
        nhwc = images.permute(0, 2, 3, 1)
        if self.pad:
            nhwc = F.pad(nhwc, (0, 0, self.pad, self.pad, self.pad, self.pad))
        self.nhwc = nhwc.contiguous()
        self.scale = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))).to(self.device)
        self.shift = (-torch.tensor(mean, dtype=torch.float32) / torch.tensor(std)).to(self.device)
        if self.scale.numel() != c:
            raise DataError(f"normalisation has {self.scale.numel()} channels, images have {c}")
        full, rest = divmod(self.n, self.batch_size)
        self.steps = full + (1 if rest >= 2 * info.world_size and not drop_last else 0)
        if self.steps == 0:
            raise DataError(f"{self.n} images are fewer than one batch of {self.batch_size}")
        self._ar_h = torch.arange(self.h, device=self.device)
        self._ar_w = torch.arange(self.w, device=self.device)

    def __len__(self) -> int:
        return self.steps

    def global_batch_size(self, step: int) -> int:
        return min(self.batch_size, self.n - step * self.batch_size)

    def _local(self, n: int) -> slice:
        """This rank's contiguous share of a global batch of ``n`` (sizes differ by <= 1)."""
        per, extra = divmod(n, self.info.world_size)
        r = self.info.rank
        start = r * per + min(r, extra)
        return slice(start, start + per + (1 if r < extra else 0))

    def _draw(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        g, dev, n = self.generator, self.device, self.n
        if self.shuffle:
            perm = torch.randperm(n, generator=g, device=dev)
        else:
            perm = torch.arange(n, device=dev)
        if self.crop:
            dy = torch.randint(0, 2 * self.pad + 1, (n,), generator=g, device=dev)
            dx = torch.randint(0, 2 * self.pad + 1, (n,), generator=g, device=dev)
        else:
            dy = dx = torch.zeros(n, dtype=torch.long, device=dev)
        if self.flip:
            flip = torch.randint(0, 2, (n,), generator=g, device=dev, dtype=torch.bool)
        else:
            flip = torch.zeros(n, dtype=torch.bool, device=dev)
        return perm, dy, dx, flip

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """Yields ``(x, y, global_batch_size)`` with ``x`` normalised float32."""
        perm, dy, dx, flip = self._draw()
        for step in range(self.steps):
            sl = slice(step * self.batch_size, step * self.batch_size + self.batch_size)
            n_global = int(perm[sl].numel())
            local = self._local(n_global)
            idx = perm[sl][local]
            pos = torch.arange(sl.start, sl.start + n_global, device=self.device)[local]
            x = self.gather(idx, dy[pos], dx[pos], flip[pos])
            yield x, self.labels[idx], n_global

    def gather(
        self, idx: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor
    ) -> torch.Tensor:
        """Crop at ``(dy, dx)`` in the padded images, flip where ``flip``, normalise."""
        rows = dy[:, None] + self._ar_h[None, :]
        cols_base = torch.where(
            flip[:, None], self.w - 1 - self._ar_w[None, :], self._ar_w[None, :]
        )
        cols = dx[:, None] + cols_base
        u8 = self.nhwc[idx[:, None, None], rows[:, :, None], cols[:, None, :]]  # B x H x W x C
        x = u8.float().mul_(self.scale).add_(self.shift)
        x = x.permute(0, 3, 1, 2)  # NCHW view with channels-last strides
        return x if self.channels_last else x.contiguous()


def eval_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
    channels_last: bool = False,
    info: DistInfo = SINGLE,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised, unaugmented batches of this rank's shard (images ``r::world``)."""
    dev = images.device
    scale = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))).view(1, -1, 1, 1).to(dev)
    shift = (-torch.tensor(mean, dtype=torch.float32) / torch.tensor(std)).view(1, -1, 1, 1).to(dev)
    if info.distributed:
        images, labels = images[info.rank :: info.world_size], labels[info.rank :: info.world_size]
    for s in range(0, images.shape[0], batch_size):
        x = images[s : s + batch_size].float().mul_(scale).add_(shift)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, labels[s : s + batch_size].to(dev)


def steps_per_epoch(n: int, batch_size: int, world_size: int = 1) -> int:
    """Number of optimiser steps ``DeviceBatches`` makes per epoch."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= 2 * world_size else 0)


__all__ = [
    "DatasetInfo",
    "DeviceBatches",
    "InputAdapter",
    "adapt_images",
    "cache_dir",
    "crop_padding",
    "dataset_info",
    "eval_batches",
    "input_adapter",
    "load_dataset",
    "normalize",
    "steps_per_epoch",
]
