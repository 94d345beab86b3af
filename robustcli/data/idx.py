"""MNIST and Fashion-MNIST from their IDX files, in torchvision's ``<Name>/raw`` layout.

Files that are present are read by ``read_idx`` (gzip-compressed or not), checked by their
decompressed contents (the registry's MD5 sums, where published), and never downloaded again;
only missing files fall back to torchvision's download (``robustcli.data.torchvision``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from robustcli.data import torchvision as tv
from robustcli.data.registry import SPLITS, dataset_entry, registry
from robustcli.errors import DataError


def _md5_sums() -> dict[str, dict[str, str]]:
    return {n: dict(e.download.md5) for n, e in registry().items() if e.download and e.download.md5}


#: MD5 sums of the decompressed IDX files by dataset and file stem (from the registry; tests
#: replace it for synthetic files).
_IDX_MD5: dict[str, dict[str, str]] | None = None


def _idx_folder(name: str) -> str:
    """``MNIST`` for ``MNIST/raw``: the dataset's folder under the data folder."""
    dl = dataset_entry(name).download
    assert dl is not None  # the registry refuses an idx loader without a download entry
    return dl.folder.split("/")[0]


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
    default = tv.torchvision_root(name, root) / _idx_folder(name) / "raw"
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


def load_idx(name: str, split: str, root: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
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
        tv.load_torchvision(name, split, root)  # downloads (or says how to get the files)
        paths = [_find_idx(raw, stem) for stem in stems]
        if any(p is None for p in paths):
            raise DataError(f"{name} files are not in {raw} after the download: fetch them there")
    image_path, label_path = paths[0], paths[1]
    assert image_path is not None and label_path is not None
    md5s = (_md5_sums() if _IDX_MD5 is None else _IDX_MD5).get(name, {})
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
