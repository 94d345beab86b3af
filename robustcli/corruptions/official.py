"""Loader for the official CIFAR-10-C / CIFAR-100-C file layout (Zenodo 2535967 / 3555552).

One ``<corruption>.npy`` per corruption, uint8 (S*N, H, W, 3), severity-major (rows
[(s-1)*N, s*N) are severity s), and ``labels.npy`` (S*N,) with the N test labels repeated S
times; S = 5 for the official files. Folders written by ``generate_dataset`` have the same
layout and a ``generation.json`` naming their severities. Files are memory-mapped: nothing is
read until an array is used, and no file is ever unpickled.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robustcli.corruptions.generate import CORRUPTIONS, SEVERITIES
from robustcli.errors import DataError
from robustcli.io import writer_of

_GET_IT = (
    "download CIFAR-10-C.tar from Zenodo (record 2535967) and extract it, "
    "or write one with `robust corrupt FOLDER` (Python: robustcli.corruptions.generate_dataset)"
)


def _first_line(err: BaseException, limit: int = 120) -> str:
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:limit]


def _load(path: Path) -> np.ndarray:
    """Memory-map the ``.npy`` file ``path`` after checking its header against its size.

    The header is parsed by hand (numpy's readers, no pickle): a damaged or hostile header
    (bad magic, unparsable dict, object dtype, negative or huge shape, data shorter or longer
    than the shape says) is one ``DataError`` naming the file, and nothing is allocated for
    a shape the file cannot hold. A ``.npz`` or pickle is refused, never opened as such.
    """
    fix = "re-download or regenerate it"
    try:
        fh = open(path, "rb")  # noqa: SIM115 (closed below, before mapping)
    except FileNotFoundError:
        raise DataError(f"{path} is missing: {_GET_IT}") from None
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    with fh:
        try:
            size = os.fstat(fh.fileno()).st_size
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            offset = fh.tell()
        except Exception as err:  # noqa: BLE001 (any parser failure on an untrusted header)
            raise DataError(
                f"{path} is not a readable .npy file ({_first_line(err)}): {fix}"
            ) from None
    if dtype.hasobject:
        raise DataError(
            f"{path} is not a readable .npy array: it holds Python objects (never unpickled): {fix}"
        )
    if any(isinstance(d, bool) or d < 0 for d in shape):
        raise DataError(f"{path} has an invalid shape {shape} in its header: {fix}")
    nbytes = math.prod(shape) * dtype.itemsize
    if offset + nbytes != size:
        what = "truncated" if offset + nbytes > size else "longer than its header says"
        raise DataError(
            f"{path} is {what} ({size - offset} data bytes for shape {shape} of {dtype}): {fix}"
        )
    if nbytes == 0:  # mmap cannot map nothing
        return np.empty(shape, dtype=dtype)
    try:
        return np.memmap(
            path, dtype=dtype, mode="r", shape=shape, order="F" if fortran else "C", offset=offset
        )
    except (OSError, ValueError) as err:
        raise DataError(f"cannot map {path} ({_first_line(err)}): {fix}") from None


@dataclass(frozen=True)
class CorruptedSet:
    """An official-layout folder, memory-mapped.

    ``images(name, severity)`` is a read-only uint8 (N, H, W, 3) view; ``labels`` the N labels
    (the same for every severity); iteration yields ``(name, severity, images, labels)``.
    """

    root: Path
    corruptions: tuple[str, ...]
    severities: tuple[int, ...]
    n: int
    labels: np.ndarray
    _arrays: dict[str, np.ndarray] = field(repr=False)

    def images(self, name: str, severity: int) -> np.ndarray:
        if name not in self._arrays:
            raise DataError(
                f"corruption {name!r} is not loaded from {self.root}: "
                f"choose from {', '.join(self.corruptions)}"
            )
        if severity not in self.severities:
            raise DataError(
                f"severity {severity} is not in {self.root}: choose from "
                f"{', '.join(map(str, self.severities))}"
            )
        block = self.severities.index(severity)
        return self._arrays[name][block * self.n : (block + 1) * self.n]

    def __iter__(self) -> Iterator[tuple[str, int, np.ndarray, np.ndarray]]:
        for name in self.corruptions:
            for severity in self.severities:
                yield name, severity, self.images(name, severity), self.labels


def _severities_of(root: Path) -> tuple[int, ...]:
    meta = root / "generation.json"
    if not meta.is_file():
        return SEVERITIES
    try:
        sevs = tuple(int(s) for s in json.loads(meta.read_text())["severities"])
    except (ValueError, KeyError, TypeError, RecursionError, OSError) as err:
        raise DataError(
            f"{meta} is not valid ({_first_line(err)}): delete it or regenerate the folder"
        ) from None
    if not sevs or any(s not in SEVERITIES for s in sevs) or list(sevs) != sorted(set(sevs)):
        raise DataError(f"{meta} lists invalid severities {sevs}: regenerate the folder")
    return sevs


def load_official(
    root: str | os.PathLike[str],
    corruptions: Iterable[str] | None = None,
    num_classes: int | None = None,
) -> CorruptedSet:
    """Open and check a CIFAR-10-C style folder (any number of test images).

    Args:
        root: the folder holding ``labels.npy`` and ``<corruption>.npy``.
        corruptions: names to load; None loads every one of the 19 present in the folder.
        num_classes: when given, every label must be below it.

    Raises:
        DataError: a missing folder or file, an unreadable or malformed file, a wrong dtype or
            shape, a length not divisible by the number of severities, negative labels (or
            labels >= ``num_classes``), or labels that do not match.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"corruption folder {root} not found: {_GET_IT}")
    writer = writer_of(root)
    if writer:
        raise DataError(
            f"{root} is being written by another robustcli process ({writer}, `robust corrupt`):"
            " wait for it to finish, then run this again"
        )
    sevs = _severities_of(root)
    s = len(sevs)
    if corruptions is None:
        names = [c for c in CORRUPTIONS if (root / f"{c}.npy").is_file()]
        if not names:
            raise DataError(f"{root} holds no <corruption>.npy files: {_GET_IT}")
    else:
        names = list(corruptions)
        unknown = [c for c in names if c not in CORRUPTIONS]
        if unknown:
            raise DataError(
                f"unknown corruption {unknown[0]!r}: choose from {', '.join(CORRUPTIONS)}"
            )
    labels = _load(root / "labels.npy")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(
            f"{root / 'labels.npy'} must be a 1-D integer array, got {labels.dtype} "
            f"{labels.shape}: re-download or regenerate it"
        )
    if labels.shape[0] == 0 or labels.shape[0] % s:
        raise DataError(
            f"{root / 'labels.npy'} has {labels.shape[0]} rows, not a positive multiple of the "
            f"{s} severities: re-download or regenerate it"
        )
    n = labels.shape[0] // s
    blocks = np.asarray(labels).reshape(s, n)
    low, high = int(blocks.min()), int(blocks.max())
    if low < 0:
        raise DataError(
            f"{root / 'labels.npy'} holds a negative label ({low}): re-download or regenerate it"
        )
    if num_classes is not None and high >= num_classes:
        raise DataError(
            f"{root / 'labels.npy'} holds label {high}, but there are {num_classes} classes "
            f"(0..{num_classes - 1}): use the matching dataset's files or model"
        )
    if not (blocks == blocks[0]).all():
        raise DataError(
            f"{root / 'labels.npy'} is not the test labels repeated {s} times: "
            "re-download or regenerate it"
        )
    arrays = {}
    for name in names:
        path = root / f"{name}.npy"
        arr = _load(path)
        if arr.dtype != np.uint8:
            raise DataError(f"{path} has dtype {arr.dtype}, expected uint8: re-download it")
        if arr.ndim != 4 or arr.shape[-1] != 3 or 0 in arr.shape[1:3]:
            raise DataError(
                f"{path} has shape {arr.shape}, expected (rows, H, W, 3) images: re-download it"
            )
        if arr.shape[0] % s:
            raise DataError(
                f"{path} has {arr.shape[0]} rows, not divisible by the {s} severities: "
                "the file is truncated, re-download or regenerate it"
            )
        if arr.shape[0] != labels.shape[0]:
            raise DataError(
                f"{path} has {arr.shape[0]} rows but labels.npy has {labels.shape[0]}: "
                "the files come from different sets, re-download or regenerate them"
            )
        arrays[name] = arr
    return CorruptedSet(
        root=root,
        corruptions=tuple(names),
        severities=sevs,
        n=n,
        labels=np.asarray(blocks[0]),
        _arrays=arrays,
    )
