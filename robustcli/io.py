"""Atomic writes and output-path checks shared by every command."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from robustcli.errors import DataError, OutputExistsError, RobustError

# atomic_write's temporary files: ".<name>." + mkstemp's 8 random characters + ".tmp"
_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w") -> Iterator[Any]:
    """Open a temporary file next to ``path``; rename it over ``path`` only on success.

    A crash or an exception leaves ``path`` as it was (absent or the old content).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        exc.filename = str(path)
        raise
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename in (None, tmp):
            exc.filename = str(path)  # a full disk names the output, not our temporary file
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    with atomic_write(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=False, default=str)
        fh.write("\n")


def check_output(path: str | os.PathLike[str], force: bool) -> Path:
    """Refuse to overwrite an existing output unless ``force``, and an unwritable one always.

    Every command calls this before any work, so a read-only or misspelt output path fails at
    once instead of after hours of computation.
    """
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists: choose another path or pass --force")
    check_writable(path)
    return path


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Refuse an output path that cannot be written: a read-only or foreign folder, or a file
    where a folder is needed. Creates nothing.

    An existing folder must itself be writable; otherwise the nearest existing ancestor must be a
    writable folder (it gets the new file or folder; atomic writes need it too).
    """
    path = Path(path).expanduser()
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe != path and not probe.is_dir():
        raise RobustError(f"{path}: {probe} is a file, not a folder: choose another output path")
    folder = probe if probe.is_dir() else probe.parent
    # os.access also answers False on a read-only file system (EROFS), even for root
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RobustError(
            f"{path}: folder {folder} is not writable (read-only or permission denied): "
            "choose another output path or fix the folder's permissions"
        )
    return path


def stale_tmp_files(
    folder: str | os.PathLike[str], names: Iterable[str] | None = None
) -> list[Path]:
    """atomic_write's temporary files in ``folder`` (left by a killed process), optionally only
    those of the target file ``names``. Other files, even ``*.tmp`` ones, are never listed."""
    folder = Path(folder)
    wanted = None if names is None else set(names)
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for entry in entries:
        m = _TMP_NAME.match(entry.name)
        if m and (wanted is None or m["name"] in wanted) and entry.is_file():
            found.append(entry)
    return sorted(found)


def remove_stale_tmp(
    folder: str | os.PathLike[str], names: Iterable[str] | None = None
) -> list[Path]:
    """Delete :func:`stale_tmp_files`; call it only while holding :func:`output_lock` on the
    output, so that no live writer's temporary file is removed."""
    removed = []
    for tmp in stale_tmp_files(folder, names):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def lock_path(path: str | os.PathLike[str]) -> Path:
    """The lock file of output ``path``: ``.<name>.lock`` beside it (not inside, so that a run
    folder can be replaced by a rename while it is locked, and a refused command leaves the
    output folder untouched)."""
    real = Path(path).expanduser().resolve()
    return real.parent / f".{real.name}.lock"


_HELD: dict[Path, int] = {}  # lock files this process holds -> nesting depth


@contextlib.contextmanager
def output_lock(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an exclusive lock on output ``path`` (a file or folder) for the ``with`` block.

    A second process that asks for the same output fails at once with a one-line
    :class:`~robustcli.errors.RobustError` naming the holder's pid, instead of interleaving its
    files with ours. The lock is a kernel ``flock`` (``filelock``), so a killed holder leaves no
    stale lock. It is re-entrant within one process. Yields the lock file's path.
    """
    from filelock import FileLock, Timeout

    target = Path(path).expanduser()
    lock_file = lock_path(target)
    if lock_file in _HELD:
        _HELD[lock_file] += 1
        try:
            yield lock_file
        finally:
            _HELD[lock_file] -= 1
        return
    made = [d for d in (lock_file.parent, *lock_file.parent.parents) if not d.exists()]
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_file))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _remove_empty(made)
        raise RobustError(
            f"{target} is in use by another robustcli process ({_holder(lock_file)}): wait for it "
            f"to finish or choose another output path (lock file {lock_file})"
        ) from None
    _HELD[lock_file] = 1
    try:
        # the holder's pid, for the error message of the next process that asks
        with open(lock_file, "w") as fh:
            fh.write(f"{os.getpid()}\n")
        yield lock_file
    finally:
        del _HELD[lock_file]
        # unlink while still locked: a process that opened the old file finds it unlinked
        # after our release, and filelock then retries on the path instead of sharing it
        with contextlib.suppress(OSError):
            lock_file.unlink()
        lock.release()
        _remove_empty(made)  # folders made for the lock file alone (a refused command)


def _remove_empty(folders: list[Path]) -> None:
    for d in folders:  # deepest first; rmdir refuses a folder that has anything in it
        try:
            d.rmdir()
        except OSError:
            break


F = TypeVar("F", bound=Callable[..., Any])


def locked_output(param: str) -> Callable[[F], F]:
    """Decorator: hold :func:`output_lock` on the function's argument ``param`` (an output file
    or folder; ``None`` locks nothing) for the whole call."""

    def decorate(func: F) -> F:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind_partial(*args, **kwargs)
            bound.apply_defaults()
            target = bound.arguments.get(param)
            if target is None:
                return func(*args, **kwargs)
            with output_lock(target):
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def writer_of(path: str | os.PathLike[str]) -> str | None:
    """The holder (``"pid N"``) when another process holds :func:`output_lock` on ``path``, i.e.
    is writing it right now; else None. Never blocks and never creates a lock file: readers
    call it to refuse a half-written folder with a clear message."""
    lock_file = lock_path(path)
    if lock_file in _HELD or not lock_file.exists():
        return None
    try:
        import fcntl  # POSIX; filelock's Unix lock is flock, which this probes
    except ImportError:  # pragma: no cover (Windows: no probe)
        return None
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(lock_file)
    except OSError:
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _holder(lock_file: Path) -> str:
    try:
        pid = lock_file.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "pid unknown"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (provenance of checkpoints and result files)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_text(path: str | os.PathLike[str]) -> str:
    """A text file's content; a name ending in ``.gz`` is gunzipped first (large result JSONs,
    such as a whole-test-set attack.json, are kept as ``attack.json.gz``). Raises
    ``OSError`` (a truncated or corrupt gzip stream included) or ``UnicodeDecodeError`` for the
    caller to word."""
    p = Path(path)
    if not p.name.endswith(".gz"):
        return p.read_text()
    import gzip
    import zlib

    try:
        with gzip.open(p, "rt", encoding="utf-8") as fh:
            return fh.read()
    except (EOFError, zlib.error) as exc:
        raise OSError(f"corrupt or truncated gzip file ({exc})") from None


def read_json_object(path: str | os.PathLike[str], *, what: str, fix: str) -> dict[str, Any]:
    """The JSON object in ``path`` (gunzipped if its name ends in ``.gz``), for every reader of
    result documents. A missing file, unreadable or invalid JSON, or JSON that is not an object
    raises one :class:`~robustcli.errors.DataError` line: ``"{what} {path} <problem>: {fix}"``.
    Schema and kind checks are the caller's."""
    p = Path(path)
    try:
        doc = json.loads(read_text(p))
    except FileNotFoundError:
        raise DataError(f"{what} {p} not found: {fix}") from None
    except (OSError, ValueError) as exc:  # ValueError: invalid JSON or UTF-8 (UnicodeDecodeError)
        raise DataError(f"{what} {p} is not readable JSON ({exc}): {fix}") from None
    if not isinstance(doc, dict):
        raise DataError(f"{what} {p} is not a JSON object: {fix}")
    return doc


def find_in_folder(folder: Path, names: Iterable[str]) -> Path | None:
    """The first of ``names`` (or its ``.gz``) that is a file in ``folder``, or None."""
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def strict_json(obj: Any) -> Any:
    """``obj`` as strict JSON data: non-finite floats -> None, numpy scalars -> Python."""
    if isinstance(obj, Mapping):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def read_yaml(path: str | os.PathLike[str], what: str, fix: str) -> Any:
    """A user's YAML file (gates, study) parsed with ``yaml.safe_load``; every way it can be
    unreadable is one ``RobustError`` line: ``what`` names the file's role ("gates file"),
    ``fix`` says what to pass instead ("pass a YAML file to --gates")."""
    import yaml

    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise RobustError(f"{what} {p} not found: check the path, or {fix}") from None
    except IsADirectoryError:
        raise RobustError(f"{what} {p} is a folder: {fix}") from None
    except UnicodeDecodeError:
        raise RobustError(f"{what} {p} is not text: {fix}") from None
    except OSError as exc:
        raise RobustError(f"cannot read {what} {p}: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None)
        mark = getattr(exc, "problem_mark", None)
        if problem and mark is not None:
            first = f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
        else:
            first = " ".join(str(exc).split()) or type(exc).__name__
        raise RobustError(f"{what} {p} is not valid YAML ({first})") from None
