"""``load_dataset`` and ``dataset_info``: one entry point that sends each dataset to its loader.

The registry (``robustcli.data.registry``) says which loader reads a dataset: ``embedded``
(digits), ``idx`` (MNIST-like IDX files), ``torchvision`` (CIFAR-10's pickles) or
``imagefolder``. A fixed dataset may also be read from an ImageFolder tree under
``--data-dir``, labelled by its folders; its class count must match the registry's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from robustcli.data import torchvision as tv
from robustcli.data.digits import load_digits
from robustcli.data.idx import load_idx
from robustcli.data.imagefolder import imagefolder_root, load_imagefolder, tree_info
from robustcli.data.registry import SPLITS, DatasetInfo, dataset_entry, fixed_info
from robustcli.errors import DataError

_NEEDS_DIR = "--dataset imagefolder needs --data-dir DIR with train/<class>/ folders"


def data_root(data_dir: str | os.PathLike[str]) -> Path:
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


def dataset_info(name: str, data_dir: str | os.PathLike[str] | None = None) -> DatasetInfo:
    """Shape, classes and normalisation of ``name`` (from the registry; computed from the
    training images for ``imagefolder``: its classes are the folders of ``train/``, its channels
    those of the training images; ``robust train`` records both in the checkpoint)."""
    if dataset_entry(name).loader != "imagefolder":
        return fixed_info(name)
    if data_dir is None:
        raise DataError(_NEEDS_DIR)
    images, _, classes = load_imagefolder(data_root(data_dir), "train", channels=None)
    x = images.double() / 255.0
    mean = tuple(round(float(v), 5) for v in x.mean(dim=(0, 2, 3)))
    std = tuple(round(float(v), 5) for v in x.std(dim=(0, 2, 3)))
    shape = tuple(int(v) for v in images.shape[1:])
    return DatasetInfo(name, shape, len(classes), mean, std, tuple(classes))  # type: ignore[arg-type]


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
    root = data_root(data_dir) if data_dir is not None else None
    if channels is not None and channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    loader = dataset_entry(name).loader
    if loader == "embedded":
        return load_digits(split)
    if loader == "imagefolder":
        if root is None:
            raise DataError(_NEEDS_DIR)
        images, labels, _ = load_imagefolder(root, split, channels, classes)
        return images, labels
    if root is not None and imagefolder_root(root) is not None:
        return _fixed_from_tree(name, root, split)
    if loader == "idx":
        return load_idx(name, split, root)
    return tv.load_torchvision(name, split, root)  # via the module: one patch covers idx too


def _fixed_from_tree(name: str, root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A registered dataset (e.g. cifar10) read from an ImageFolder tree: the tree's class
    count must be the dataset's (checked before anything is decoded)."""
    info = fixed_info(name)
    tree_classes, _ = tree_info(root, info.channels)
    if len(tree_classes) != info.num_classes:
        raise DataError(
            f"{root} has {len(tree_classes)} class folders but {name} has "
            f"{info.num_classes}: point --data-dir at the right tree or use --dataset "
            "imagefolder"
        )
    images, labels, _ = load_imagefolder(root, split, channels=info.channels)
    return images, labels
