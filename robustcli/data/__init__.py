"""Datasets as uint8 tensors, the model-input adapter, and batches augmented on the device.

``load_dataset(name, split, data_dir)`` returns ``(images, labels)``: uint8 ``N x C x H x W`` and
int64 ``N``; ``dataset_info(name)`` their shape, classes and normalisation. The modules:

- ``registry``: the one dataset registry (``model_zoo.yaml``'s ``datasets:`` plus the built-in
  ``imagefolder``): names, shapes, classes, normalisation, default augmentation, loader kind and
  download location. Everything else asks it.
- ``load``: ``load_dataset`` / ``dataset_info``, which send each dataset to its loader:
  ``digits`` (the embedded offline default: scikit-learn's 1,797 real 8x8 digits, split
  deterministically into 1,433 train and 364 test images), ``idx`` (MNIST / Fashion-MNIST IDX
  files, read and checked without downloading when present), ``torchvision`` (CIFAR-10's
  pickles; downloads when missing) and ``imagefolder`` (``DIR/train/<class>/*`` trees, whose
  classes, channels and normalisation come from the training images).
- ``cache``: ``cache_dir()`` and the safetensors files decoded ImageFolder splits are kept in.
- ``adapter``: ``InputAdapter`` maps a dataset's image shape to a model's (resize, channel
  replication or luma); it is recorded in every checkpoint so evaluation and attacks prepare
  inputs exactly as training did.
- ``batches``: ``DeviceBatches`` keeps the uint8 images on the device and crops / flips /
  normalises whole batches there, driven by one seeded ``torch.Generator``.
"""

from __future__ import annotations

from robustcli.data.adapter import InputAdapter, adapt_images, input_adapter, normalize
from robustcli.data.batches import DeviceBatches, crop_padding, eval_batches, steps_per_epoch
from robustcli.data.cache import cache_dir
from robustcli.data.idx import read_idx
from robustcli.data.imagefolder import IMAGE_SUFFIXES, imagefolder_layout
from robustcli.data.load import dataset_info, load_dataset
from robustcli.data.registry import (
    AUGMENTS,
    DEFAULT_AUGMENT,
    SPLITS,
    DatasetEntry,
    DatasetInfo,
    Download,
    dataset_entry,
    dataset_names,
)

__all__ = [
    "AUGMENTS",
    "DEFAULT_AUGMENT",
    "IMAGE_SUFFIXES",
    "SPLITS",
    "DatasetEntry",
    "DatasetInfo",
    "DeviceBatches",
    "Download",
    "InputAdapter",
    "adapt_images",
    "cache_dir",
    "crop_padding",
    "dataset_entry",
    "dataset_info",
    "dataset_names",
    "eval_batches",
    "imagefolder_layout",
    "input_adapter",
    "load_dataset",
    "normalize",
    "read_idx",
    "steps_per_epoch",
]
