"""The dataset registry: every dataset's shape, classes, normalisation, default augmentation,
loader kind and download location, read from ``model_zoo.yaml``'s ``datasets:`` section.

Everything that names or describes a dataset reads it from here (``dataset_names()``,
``dataset_entry(name)``, ``DEFAULT_AUGMENT``, the loaders' download folders and URLs). It does
not import torch, so listing datasets stays cheap. ``imagefolder`` (any ``train/<class>/`` tree)
is the one entry whose shape, classes and normalisation come from the user's tree
(``robustcli.data.load.dataset_info`` computes them); it is registered here, not in the YAML,
because it has no fixed numbers for ``robustcli.registry``'s models to read.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from robustcli.errors import DataError, RobustError

SPLITS = ("train", "test")
#: Training augmentations ``DeviceBatches`` implements.
AUGMENTS = ("crop+flip", "crop", "flip", "none")
#: How a dataset's files are read: the embedded digits, IDX files (MNIST-like), torchvision's
#: dataset classes (CIFAR-10's pickles), or an ImageFolder tree.
LOADERS = ("embedded", "idx", "torchvision", "imagefolder")


@dataclass(frozen=True)
class Download:
    """Where a dataset's files come from and where they land.

    ``torchvision``: the ``torchvision.datasets`` class that downloads them; ``folder``: the
    folder they land in under ``--data-dir`` or ``cache_dir()/<name>`` (e.g.
    ``cifar-10-batches-py``, ``MNIST/raw``); ``url``: where to fetch them by hand; ``md5``: MD5
    sums of the decompressed IDX files, by file stem (empty when none are published).
    """

    torchvision: str
    folder: str
    url: str
    md5: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetEntry:
    """One registered dataset. Shape, classes and normalisation are ``None`` for
    ``imagefolder`` (they come from the tree); ``download`` is ``None`` when nothing is
    downloaded (``digits`` is embedded, an ImageFolder tree is the user's)."""

    name: str
    loader: str
    augment: str
    input_shape: tuple[int, int, int] | None = None
    num_classes: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    classes: tuple[str, ...] | None = None
    download: Download | None = None


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


IMAGEFOLDER = DatasetEntry("imagefolder", loader="imagefolder", augment="crop+flip")


def _entry(name: str, d: Mapping[str, Any]) -> DatasetEntry:
    """One ``datasets:`` entry, checked: a typo in the YAML is an error that names it."""
    try:
        num_classes = int(d["num_classes"])
        classes = tuple(str(c) for c in d.get("classes") or range(num_classes))
        dl = d.get("download")
        download = None
        if dl is not None:
            md5 = {str(k): str(v) for k, v in (dl.get("md5") or {}).items()}
            download = Download(str(dl["torchvision"]), str(dl["folder"]), str(dl["url"]), md5)
        entry = DatasetEntry(
            name=name,
            loader=str(d["loader"]),
            augment=str(d["augment"]),
            input_shape=tuple(int(v) for v in d["input_shape"]),  # type: ignore[arg-type]
            num_classes=num_classes,
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            classes=classes,
            download=download,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RobustError(
            f"model_zoo.yaml: dataset {name!r} is malformed ({type(exc).__name__}: {exc}): "
            "give input_shape, num_classes, mean, std, augment and loader"
        ) from None
    checks = {
        f"loader {entry.loader!r} is not one of embedded, idx, torchvision": (
            entry.loader not in LOADERS[:3]
        ),
        f"augment {entry.augment!r} is not one of {', '.join(AUGMENTS)}": (
            entry.augment not in AUGMENTS
        ),
        f"{len(classes)} classes for num_classes {num_classes}": len(classes) != num_classes,
        "loader idx/torchvision needs a download entry": (
            entry.loader != "embedded" and download is None
        ),
    }
    problems = [message for message, failed in checks.items() if failed]
    if problems:
        raise RobustError(f"model_zoo.yaml: dataset {name!r}: {'; '.join(problems)}")
    return entry


@functools.lru_cache(maxsize=1)
def registry() -> dict[str, DatasetEntry]:
    """Every registered dataset by name: the YAML's, then ``imagefolder``."""
    # the model registry's reader: the same file, and a name given twice is refused there too
    from robustcli.models.registry import _load_unique, zoo_path

    path = zoo_path()
    try:
        raw = _load_unique(path.read_text(), str(path)) or {}
    except FileNotFoundError:
        raise RobustError(f"model zoo not found at {path}: reinstall robustcli") from None
    entries = {str(name): _entry(str(name), d) for name, d in (raw.get("datasets") or {}).items()}
    if IMAGEFOLDER.name in entries:
        raise RobustError("model_zoo.yaml: 'imagefolder' is built in: rename that dataset")
    entries[IMAGEFOLDER.name] = IMAGEFOLDER
    return entries


def dataset_names() -> list[str]:
    """The registered datasets' names, sorted."""
    return sorted(registry())


def dataset_entry(name: str) -> DatasetEntry:
    """The registry entry of ``name``; an unknown name is a DataError listing the known ones."""
    entries = registry()
    if name not in entries:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(sorted(entries))}")
    return entries[name]


def fixed_info(name: str) -> DatasetInfo:
    """The ``DatasetInfo`` of a dataset with fixed numbers (every one but ``imagefolder``)."""
    e = dataset_entry(name)
    if e.input_shape is None or e.num_classes is None or e.mean is None or e.std is None:
        raise DataError(f"{name} takes its shape and classes from --data-dir: pass it")
    return DatasetInfo(name, e.input_shape, e.num_classes, e.mean, e.std, e.classes or ())


class _DefaultAugment(Mapping[str, str]):
    """``DEFAULT_AUGMENT[name]``: the registry's default training augmentation, read lazily so
    that importing robustcli.data does not read the YAML."""

    def __getitem__(self, name: str) -> str:
        entries = registry()
        if name not in entries:
            raise KeyError(name)
        return entries[name].augment

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(registry())

    def __len__(self) -> int:
        return len(registry())


#: Default training augmentation per dataset (a read-only view of the registry).
DEFAULT_AUGMENT: Mapping[str, str] = _DefaultAugment()
