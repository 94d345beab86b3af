"""Datasets as uint8 tensors, the model-input adapter, and batches augmented on the device.

``load_dataset(name, split, data_dir)`` returns ``(images, labels)``: uint8 ``N x C x H x W`` and
int64 ``N``. Sources:

- ``digits`` (the embedded offline default): scikit-learn's 1,797 real 8x8 handwritten digits
  (UCI optdigits, 0..16 grey levels scaled to 0..255). Split: in each class, every fifth image is
  in ``test`` (364 images), the rest in ``train`` (1,433). No download, no randomness.
- ``cifar10``, ``mnist``, ``fashion-mnist``: torchvision's files (``cifar-10-batches-py``,
  ``MNIST/raw``, ``FashionMNIST/raw``) under ``data_dir`` or the cache directory, downloaded by
  torchvision when missing (MNIST / Fashion-MNIST IDX files that are present are read by
  ``read_idx``, checked by their decompressed contents, never downloaded again); or an
  ImageFolder tree under ``data_dir``.
- ``imagefolder``: any ImageFolder tree ``DIR/train/<class>/*`` and ``DIR/test/<class>/*``
  (``val`` is accepted for ``test``); its normalisation is computed from the training images.

ImageFolder trees take their classes (the folders of ``train/``) and channel count (1 only when
every training image is grey) from the training split, for every split: a test split may lack
classes, a class training did not have is an error. Hidden files (macOS ``._x.jpg``) are
ignored; unreadable image files are skipped with a ``warning:`` line on stderr that counts and
names them. Each split is decoded once into a cached safetensors file (see ``cache_dir``), keyed
by the file list, sizes and modification times.

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
import stat
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from robustcli.errors import DataError, RobustError
from robustcli.io import atomic_write_bytes, atomic_write_json
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

    @property
    def channels(self) -> int:
        """Channels of the dataset's images (an ImageFolder tree's: those of its training split)."""
        return int(self.input_shape[0])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d


def dataset_names() -> list[str]:
    return ["cifar10", "digits", "fashion-mnist", "imagefolder", "mnist"]


def dataset_info(name: str, data_dir: str | os.PathLike[str] | None = None) -> DatasetInfo:
    """Shape, classes and normalisation of ``name`` (from model_zoo.yaml; computed from the
    training images for ``imagefolder``: its classes are the folders of ``train/``, its channels
    those of the training images; ``robust train`` records both in the checkpoint)."""
    if name == "imagefolder":
        if data_dir is None:
            raise DataError(
                "--dataset imagefolder needs --data-dir DIR with train/<class>/ folders"
            )
        root = _data_root(data_dir)
        images, _, classes = _load_imagefolder(root, "train", channels=None)
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


def _data_root(data_dir: str | os.PathLike[str]) -> Path:
    """``--data-dir`` as a path that exists and is a folder (an archive is the usual mistake)."""
    root = Path(data_dir).expanduser()
    try:
        is_dir = root.is_dir()
        exists = is_dir or root.exists()
    except OSError as exc:
        raise DataError(
            f"data directory {root} cannot be reached ({exc.strerror or exc}): check --data-dir"
        ) from None
    if not exists:
        raise DataError(f"data directory {root} does not exist: check --data-dir")
    if not is_dir:
        raise DataError(
            f"data directory {root} is a file, not a folder: extract it if it is an archive and "
            "pass the folder as --data-dir"
        )
    return root


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    classes: Sequence[str] | None = None,
    channels: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8, ``N x C x H x W``) and labels (int64) of one split of a dataset.

    ``data_dir`` may hold torchvision's files (e.g. ``cifar-10-batches-py``), be that folder
    itself, or be an ImageFolder tree with ``train/`` and ``test/``. Without it, torchvision
    datasets live in ``cache_dir()/<name>`` and are downloaded there when missing.

    For ``imagefolder``, labels index the training classes: ``classes`` (e.g. the ones a
    checkpoint recorded) or else the tree's ``train/`` folders, and images are decoded with
    ``channels`` (1 or 3) or else the training split's. A test split may lack classes; a class
    that training did not have is refused. Unreadable image files are skipped with a warning.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose train or test")
    root = _data_root(data_dir) if data_dir is not None else None
    if channels is not None and channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    if name == "digits":
        return _load_digits(split)
    if name == "imagefolder":
        if root is None:
            raise DataError(
                "--dataset imagefolder needs --data-dir DIR with train/<class>/ folders"
            )
        images, labels, _ = _load_imagefolder(root, split, channels, classes)
        return images, labels
    info = dataset_info(name)
    if root is not None and _imagefolder_root(root) is not None:
        tree_classes, _ = _tree_info(root, info.channels)  # before decoding anything
        if len(tree_classes) != info.num_classes:
            raise DataError(
                f"{root} has {len(tree_classes)} class folders but {name} has "
                f"{info.num_classes}: point --data-dir at the right tree or use --dataset "
                "imagefolder"
            )
        images, labels, _ = _load_imagefolder(root, split, channels=info.channels)
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
    """``stem`` or ``stem.gz`` in ``raw``; a folder where the file should be is an error (it
    would otherwise look missing and start a download)."""
    for path in (raw / stem, raw / f"{stem}.gz"):
        try:
            if path.is_file():
                return path
            if path.exists():
                raise DataError(f"{path} is not a file: replace it with the IDX file of {stem}")
        except OSError as exc:
            raise DataError(
                f"{path} cannot be reached ({exc.strerror or exc}): check the folder's permissions"
            ) from None
    return None


def read_idx(path: Path, ndim: int, expected_md5: str | None = None) -> np.ndarray:
    """The uint8 array of one IDX file (gzip-compressed or not: told by its first bytes, not
    its name), checked by its decompressed contents: magic number, dimensions, length and,
    when given, the MD5 of the decompressed bytes. Every failure is a one-line DataError."""
    import gzip
    import math
    import zlib

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(
            f"{path} cannot be read ({exc.strerror or type(exc).__name__}): check its "
            "permissions, or replace the file"
        ) from None
    if raw[:2] == b"\x1f\x8b":  # gzip's magic number
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(
                f"{path} is a damaged gzip file ({str(exc).strip() or type(exc).__name__}): "
                "replace the file"
            ) from None
    magic = 0x800 + ndim  # 0x08: unsigned bytes, then the number of dimensions
    if len(raw) < 4 + 4 * ndim or int.from_bytes(raw[:4], "big") != magic:
        found = f"0x{int.from_bytes(raw[:4], 'big'):08x}" if len(raw) >= 4 else "missing"
        raise DataError(
            f"{path} is not an IDX file of {ndim} dimension(s) (magic number {found}, expected "
            f"0x{magic:08x}): replace the file"
        )
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    header = 4 + 4 * ndim
    if len(raw) - header != math.prod(dims):  # Python ints: no overflow on a damaged header
        raise DataError(
            f"{path} holds {len(raw) - header} bytes of data but its header says "
            f"{'x'.join(map(str, dims))} = {math.prod(dims)}: the file is truncated or damaged, "
            "replace it"
        )
    if expected_md5 is not None:
        got = hashlib.md5(raw).hexdigest()
        if got != expected_md5:
            raise DataError(
                f"{path} is not the official file (MD5 of its contents {got}, expected "
                f"{expected_md5}): replace it with the original"
            )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _idx_dir(name: str, root: Path | None) -> Path:
    """Where the IDX files of ``name`` are: ``<root>/<Name>/raw`` (torchvision's layout, also
    for ``root`` = ``.../<Name>``), or ``root`` itself when it holds them directly."""
    folder = _IDX_FOLDERS[name]
    default = _torchvision_root(name, root) / folder / "raw"
    if root is None:
        return default
    stems = [s for split in SPLITS for s in _idx_stems(split)]
    for candidate in (default, root):
        if any(_exists(candidate / s) or _exists(candidate / f"{s}.gz") for s in stems):
            return candidate
    return default


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # no search permission: _find_idx says so when it is the chosen folder
        return False


def _load_idx(name: str, split: str, root: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST / Fashion-MNIST from their IDX files (torchvision's ``<Name>/raw`` layout); files
    that are present are read, never downloaded again."""
    raw = _idx_dir(name, root)
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
    image_path, label_path = paths[0], paths[1]
    assert image_path is not None and label_path is not None
    md5s = _IDX_MD5.get(name, {})
    images = read_idx(image_path, 3, md5s.get(stems[0]))
    labels = read_idx(label_path, 1, md5s.get(stems[1]))
    if len(images) != len(labels):
        raise DataError(
            f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels: "
            "replace the mismatched file"
        )
    if not len(labels):
        raise DataError(f"{image_path} holds no images: replace it with the {name} file")
    if int(labels.max()) > 9:
        raise DataError(f"{label_path} has label {int(labels.max())}: {name} labels are 0..9")
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
    except (OSError, EOFError, ValueError) as exc:  # unreadable or damaged files, no download
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DataError(
            f"{name} files in {base / marker} cannot be read ({reason or type(exc).__name__}): "
            "check their permissions, or replace them"
        ) from None
    data = ds.data
    if isinstance(data, np.ndarray):  # CIFAR: N x H x W x C
        images = torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2).contiguous()
    else:  # MNIST-like: N x H x W uint8 tensor
        images = data.unsqueeze(1).contiguous()
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return images.to(torch.uint8), labels


#: Image modes with one grey channel; every other mode (RGB, RGBA, P, CMYK, ...) is colour.
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
#: Folders that are never classes (macOS zip archives add them next to the real folders).
_NOT_CLASSES = frozenset({"__MACOSX"})
_NAMED = 3  # how many file names a message lists before "and N more"


def _warn(message: str) -> None:
    """One ``warning:`` line on stderr, on rank 0 of a ``torchrun`` job only: a data problem that
    was worked around (the CLI's errors go to stderr too, so both read the same)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"warning: {message}", file=sys.stderr, flush=True)


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # no search permission on the parent: not a usable folder either
        return False


def _imagefolder_root(root: Path) -> Path | None:
    if _is_dir(root / "train") and (_is_dir(root / "test") or _is_dir(root / "val")):
        return root
    return None


def _split_dir(root: Path, split: str) -> Path:
    if split == "test" and not _is_dir(root / "test") and _is_dir(root / "val"):
        return root / "val"
    return root / split


def _entries(folder: Path) -> list[Path]:
    """The visible entries of ``folder``, sorted. Hidden files (``.DS_Store``, the macOS
    ``._x.jpg`` resource forks, editor swap files) are never images of the dataset."""
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise DataError(
            f"{folder} cannot be listed ({why}): check that it is a readable folder"
        ) from None
    return sorted(p for p in entries if not p.name.startswith("."))


def _class_names(split_dir: Path) -> list[str]:
    return [p.name for p in _entries(split_dir) if p.name not in _NOT_CLASSES and _is_dir(p)]


def _short(names: Sequence[str]) -> str:
    """The first few names, comma-separated; a name with a line break or other control
    character is quoted so that the message stays one line."""
    more = f" and {len(names) - _NAMED} more" if len(names) > _NAMED else ""
    shown = [n if n.isprintable() else repr(n) for n in names[:_NAMED]]
    return ", ".join(shown) + more


def _reason(exc: BaseException) -> str:
    """Why a file could not be read, in a few words (PIL's messages repeat the whole path)."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()[0][:60] if str(exc).strip() else ""
    return text or type(exc).__name__


@dataclass
class _Listing:
    """The image files of one split: ``files`` with their labels, ``keys`` (one line per file:
    name, label, size, mtime; the cache key) and ``skipped`` ((name, reason) of files that could
    not even be looked at)."""

    files: list[tuple[Path, int]]
    keys: list[str]
    skipped: list[tuple[str, str]]


def _list_images(split_dir: Path, classes: Sequence[str], origin: str) -> _Listing:
    """The image files of ``split_dir`` labelled by their class's index in ``classes`` (the
    training classes, from ``origin``): a test split that lacks a class keeps the others'
    labels, a test split with a class the model never saw is refused."""
    index = {c: i for i, c in enumerate(classes)}
    present = _class_names(split_dir)
    if not present:
        raise DataError(f"{split_dir} has no class folders: expected {split_dir}/<class>/<image>")
    unknown = [c for c in present if c not in index]
    if unknown:
        raise DataError(
            f"{split_dir} has class folder(s) {_short(unknown)} that the {len(classes)} training "
            f"classes of {origin} ({_short(list(classes))}) lack: remove or rename them (a test "
            "split's classes must be a subset of the training classes)"
        )
    listing = _Listing([], [], [])
    for cls in present:
        label = index[cls]
        for path in _entries(split_dir / cls):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            rel = f"{cls}/{path.name}"
            try:
                st = path.stat()
            except OSError as exc:  # a dangling link, or no search permission on the folder
                listing.skipped.append((rel, _reason(exc)))
                listing.keys.append(f"{rel}|{label}|unreadable")
                continue
            if not stat.S_ISREG(st.st_mode):
                listing.skipped.append((rel, "a folder, not a file"))
                listing.keys.append(f"{rel}|{label}|not-a-file")
                continue
            listing.files.append((path, label))
            listing.keys.append(f"{rel}|{label}|{st.st_size}|{st.st_mtime_ns}")
    if not listing.files and not listing.skipped:
        raise DataError(
            f"{split_dir} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in its class folders"
        )
    return listing


def _unreadable(folder: Path, n: int, skipped: Sequence[tuple[str, str]]) -> DataError:
    name, why = skipped[0]
    return DataError(
        f"none of the {n} image files in {folder} can be read ({folder / name}: {why}): replace "
        "or remove the damaged files"
    )


def _cache_file(root: Path, kind: str, digest: str, suffix: str) -> Path:
    slug = "".join(c if c.isalnum() else "-" for c in root.resolve().name)[:40] or "data"
    return cache_dir() / "imagefolder" / f"{slug}-{kind}-{digest}{suffix}"


def _probe_mode(path: Path) -> str | None:
    """The image's mode from its header (no decoding); None when it cannot be opened."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return str(img.mode)
    except Exception:  # decoders of malformed files raise many types: unreadable is unreadable
        return None


def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)))


def _tree_info(root: Path, channels: int | None = None) -> tuple[list[str], int]:
    """The classes (sorted folder names of ``train/``) and channel count of an ImageFolder tree,
    both from the training split, so that every split, and every model trained on the tree,
    agrees on them. Channels: 1 when every readable training image is grey, else 3 (a few
    grey images in a colour dataset are replicated, never the other way round). The channel
    count is cached in ``cache_dir()/imagefolder/<name>-tree-<key>.json``, keyed by the class
    folders and their modification times (which change when files are added, removed or
    renamed), so that a cached tree costs a dozen ``stat`` calls, not one per image."""
    train_dir = root / "train"
    classes = _class_names(train_dir)
    if not classes:
        raise DataError(f"{train_dir} has no class folders: expected {train_dir}/<class>/<image>")
    if channels is not None:
        return classes, int(channels)
    key = hashlib.sha256(f"{root.resolve()}|tree|{json.dumps(classes)}\n".encode())
    for cls in classes:
        try:
            key.update(f"{cls}|{(train_dir / cls).stat().st_mtime_ns}\n".encode())
        except OSError:
            key.update(f"{cls}|unreadable\n".encode())
    cached = _cache_file(root, "tree", key.hexdigest()[:20], ".json")
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        known = json.loads(cached.read_text())
        if known.get("classes") == classes and known.get("channels") in (1, 3):
            return classes, int(known["channels"])
    listing = _list_images(train_dir, classes, str(train_dir))
    with _pool() as pool:
        modes = list(pool.map(_probe_mode, [p for p, _ in listing.files], chunksize=256))
    readable = [m for m in modes if m is not None]
    if not readable:
        skipped = listing.skipped + [
            (f"{p.parent.name}/{p.name}", "not an image")
            for (p, _), m in zip(listing.files, modes, strict=True)
            if m is None
        ]
        raise _unreadable(train_dir, len(listing.files) + len(listing.skipped), skipped)
    channels = 1 if all(m in _GREY_MODES for m in readable) else 3
    with contextlib.suppress(OSError):  # a read-only cache only costs the probe next time
        atomic_write_json(cached, {"classes": classes, "channels": channels})
    return classes, channels


def imagefolder_layout(root: str | os.PathLike[str]) -> tuple[list[str], int]:
    """The training classes and channel count of the ImageFolder tree at ``root`` (what every
    split is labelled and decoded with; ``dataset_info`` records them in checkpoints)."""
    path = Path(root).expanduser()
    if _imagefolder_root(path) is None:
        raise DataError(
            f"{path} is not an ImageFolder tree: expected {path}/train/<class>/ and "
            f"{path}/test/<class>/"
        )
    return _tree_info(path)


def _decode(path: Path, mode: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert(mode))


def _try_decode(path: Path, mode: str) -> np.ndarray | str:
    """The decoded image, or why it could not be decoded (a truncated or damaged file)."""
    try:
        return _decode(path, mode)
    except Exception as exc:  # decoders of malformed files raise many types
        return _reason(exc)


def _load_imagefolder(
    root: Path,
    split: str,
    channels: int | None,
    classes: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode an ImageFolder split once; later calls read the cached tensor file.

    Labels are indices into the training classes: ``classes`` when given (a checkpoint's),
    else the folders of ``train/``. ``channels`` (1 or 3) defaults to the training split's
    (see ``_tree_info``). Unreadable image files are skipped with a warning that names them;
    a split with none readable is an error.
    """
    if _imagefolder_root(root) is None:
        raise DataError(
            f"{root} is not an ImageFolder tree: expected {root}/train/<class>/ and "
            f"{root}/test/<class>/"
        )
    if classes is None:
        ref, channels = _tree_info(root, channels)
        origin = str(root / "train")
    else:
        ref = [str(c) for c in classes]
        if channels is None:
            channels = _tree_info(root)[1]
        origin = "the checkpoint"
    split_dir = _split_dir(root, split)
    listing = _list_images(split_dir, ref, origin)
    mode = "L" if channels == 1 else "RGB"
    key = hashlib.sha256()
    key.update(f"{root.resolve()}|{split}|{mode}|{json.dumps(ref)}\n".encode())
    key.update("\n".join(listing.keys).encode())
    cached = _cache_file(root, f"{split}-{mode}", key.hexdigest()[:20], ".safetensors")
    n_files = len(listing.files) + len(listing.skipped)
    if cached.is_file():
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(cached), framework="pt") as f:
                meta = f.metadata() or {}
                images, labels = f.get_tensor("images"), f.get_tensor("labels")
            skipped = [tuple(s) for s in json.loads(meta.get("skipped", "[]"))]
            if skipped:
                _skipped_warning(split_dir, n_files, skipped)  # type: ignore[arg-type]
            return images, labels, ref
        except (SafetensorError, OSError, KeyError, ValueError, TypeError):
            pass  # a damaged cache is rebuilt below
    with _pool() as pool:
        arrays = list(pool.map(lambda f: _try_decode(f[0], mode), listing.files, chunksize=256))
    skipped = list(listing.skipped)
    kept: list[tuple[Path, np.ndarray, int]] = []
    for (path, label), a in zip(listing.files, arrays, strict=True):
        if isinstance(a, str):
            skipped.append((f"{path.parent.name}/{path.name}", a))
        else:
            kept.append((path, a, label))
    if not kept:
        raise _unreadable(split_dir, n_files, skipped)
    first_path, first, _ = kept[0]
    odd = next(((p, a) for p, a, _ in kept if a.shape != first.shape), None)
    if odd is not None:
        raise DataError(
            f"images in {split_dir} differ in size ({first_path.name}: {first.shape}, "
            f"{odd[0].parent.name}/{odd[0].name}: {odd[1].shape}): resize them to one size first"
        )
    stack = np.stack([a for _, a, _ in kept])
    images = torch.from_numpy(stack[:, None] if stack.ndim == 3 else stack.transpose(0, 3, 1, 2))
    images = images.contiguous()
    labels = torch.tensor([label for _, _, label in kept], dtype=torch.int64)
    if skipped:
        _skipped_warning(split_dir, n_files, skipped)
    from safetensors.torch import save

    meta = {"classes": json.dumps(ref), "channels": str(channels), "skipped": json.dumps(skipped)}
    blob = save({"images": images, "labels": labels}, metadata=meta)
    with contextlib.suppress(OSError):  # a read-only cache only costs the decode next time
        atomic_write_bytes(cached, blob)
    return images, labels, ref


def _skipped_warning(folder: Path, n: int, skipped: Sequence[tuple[str, str]]) -> None:
    names = [f"{name} ({why})" for name, why in skipped]
    _warn(
        f"skipped {len(skipped)} of {n} image files in {folder} that cannot be read: "
        f"{_short(names)}; replace or remove them"
    )


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
