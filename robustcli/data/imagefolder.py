"""ImageFolder trees: ``DIR/train/<class>/*`` and ``DIR/test/<class>/*`` (``val`` is accepted
for ``test``).

A tree's classes (the folders of ``train/``) and channel count (1 only when every training
image is grey) come from the training split, for every split: a test split may lack classes, a
class training did not have is an error. Hidden files (macOS ``._x.jpg``) are ignored;
unreadable image files are skipped with a ``warning:`` line on stderr that counts and names
them. Each split is decoded once into a cached safetensors file (``robustcli.data.cache``),
keyed by the file list, sizes and modification times.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robustcli.data.cache import cache_file, read_tensors, write_tensors
from robustcli.errors import DataError
from robustcli.io import atomic_write_json

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}

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


def imagefolder_root(root: Path) -> Path | None:
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


def tree_info(root: Path, channels: int | None = None) -> tuple[list[str], int]:
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
    cached = cache_file(root, "tree", key.hexdigest()[:20], ".json")
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
    if imagefolder_root(path) is None:
        raise _not_a_tree(path)
    return tree_info(path)


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


def _not_a_tree(root: Path) -> DataError:
    return DataError(
        f"{root} is not an ImageFolder tree: expected {root}/train/<class>/ and "
        f"{root}/test/<class>/"
    )


def _decode_split(
    split_dir: Path, listing: _Listing, mode: str
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """Decode every listed file (in threads): images, labels and the files skipped, with why.
    Images of different sizes are an error; a split with none readable too."""
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
        raise _unreadable(split_dir, len(listing.files) + len(listing.skipped), skipped)
    first_path, first, _ = kept[0]
    odd = next(((p, a) for p, a, _ in kept if a.shape != first.shape), None)
    if odd is not None:
        raise DataError(
            f"images in {split_dir} differ in size ({first_path.name}: {first.shape}, "
            f"{odd[0].parent.name}/{odd[0].name}: {odd[1].shape}): resize them to one size first"
        )
    stack = np.stack([a for _, a, _ in kept])
    images = torch.from_numpy(stack[:, None] if stack.ndim == 3 else stack.transpose(0, 3, 1, 2))
    labels = torch.tensor([label for _, _, label in kept], dtype=torch.int64)
    return images.contiguous(), labels, skipped


def _cached_split(
    path: Path, split_dir: Path, n_files: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A split decoded before (repeating its warning about skipped files), or None."""
    found = read_tensors(path)
    if found is None:
        return None
    images, labels, meta = found
    try:
        skipped = [tuple(s) for s in json.loads(meta.get("skipped", "[]"))]
    except (ValueError, TypeError):
        return None  # damaged metadata: decode again
    if skipped:
        _skipped_warning(split_dir, n_files, skipped)  # type: ignore[arg-type]
    return images, labels


def load_imagefolder(
    root: Path,
    split: str,
    channels: int | None,
    classes: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode an ImageFolder split once; later calls read the cached tensor file.

    Labels are indices into the training classes: ``classes`` when given (a checkpoint's),
    else the folders of ``train/``. ``channels`` (1 or 3) defaults to the training split's
    (see ``tree_info``). Unreadable image files are skipped with a warning that names them;
    a split with none readable is an error.
    """
    if imagefolder_root(root) is None:
        raise _not_a_tree(root)
    if classes is None:
        ref, channels = tree_info(root, channels)
        origin = str(root / "train")
    else:
        ref = [str(c) for c in classes]
        if channels is None:
            channels = tree_info(root)[1]
        origin = "the checkpoint"
    split_dir = _split_dir(root, split)
    listing = _list_images(split_dir, ref, origin)
    mode = "L" if channels == 1 else "RGB"
    key = hashlib.sha256()
    key.update(f"{root.resolve()}|{split}|{mode}|{json.dumps(ref)}\n".encode())
    key.update("\n".join(listing.keys).encode())
    cached = cache_file(root, f"{split}-{mode}", key.hexdigest()[:20], ".safetensors")
    n_files = len(listing.files) + len(listing.skipped)
    hit = _cached_split(cached, split_dir, n_files)
    if hit is not None:
        return hit[0], hit[1], ref
    images, labels, skipped = _decode_split(split_dir, listing, mode)
    if skipped:
        _skipped_warning(split_dir, n_files, skipped)
    meta = {"classes": json.dumps(ref), "channels": str(channels), "skipped": json.dumps(skipped)}
    write_tensors(cached, images, labels, meta)
    return images, labels, ref


def _skipped_warning(folder: Path, n: int, skipped: Sequence[tuple[str, str]]) -> None:
    names = [f"{name} ({why})" for name, why in skipped]
    _warn(
        f"skipped {len(skipped)} of {n} image files in {folder} that cannot be read: "
        f"{_short(names)}; replace or remove them"
    )
