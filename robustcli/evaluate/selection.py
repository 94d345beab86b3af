"""What eval-c evaluates: corruption and severity selections, count and seed checks, and the
checkpoint a name or path stands for. All checks raise ``RobustError`` before any file is read."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robustcli.corruptions import COMMON, CORRUPTIONS, GROUPS, SEVERITIES
from robustcli.errors import CheckpointError, RobustError

CHECKPOINTS_ENV = "ROBUSTCLI_CHECKPOINTS"
SELECTION_WORDS = ("common", "all", *GROUPS)


# --------------------------------------------------------------------------------------------
# What to evaluate
# --------------------------------------------------------------------------------------------


def select_corruptions(spec: str | Sequence[str] = "common") -> list[str]:
    """Corruption names from a selection: ``common`` (the 15), ``all`` (19), a group (``noise``,
    ``blur``, ``weather``, ``digital``, ``extra``), corruption names, or a comma-separated mix.
    Returned in the recipe's order, without duplicates."""
    tokens = spec.split(",") if isinstance(spec, str) else list(spec)
    chosen: set[str] = set()
    for raw in tokens:
        token = raw.strip().lower().replace("-", "_")
        if not token:
            continue
        if token == "common":
            chosen.update(COMMON)
        elif token == "all":
            chosen.update(CORRUPTIONS)
        elif token in GROUPS:
            chosen.update(GROUPS[token])
        elif token in CORRUPTIONS:
            chosen.add(token)
        else:
            close = difflib.get_close_matches(token, [*SELECTION_WORDS, *CORRUPTIONS], n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise RobustError(
                f"unknown corruption selection {raw.strip()!r}: {hint}use common, all, "
                f"{', '.join(GROUPS)} or corruption names ({', '.join(CORRUPTIONS[:3])}, ...)"
            )
    if not chosen:
        raise RobustError("no corruptions selected: pass --corruptions common (or all, noise, ...)")
    return [c for c in CORRUPTIONS if c in chosen]


def parse_severities(spec: str | int | Sequence[int] = "1-5") -> list[int]:
    """Severities from ``"1-5"``, ``"3"``, ``"1,3,5"``, ``"1-2,5"`` or a list; sorted, unique."""
    out: set[int] = set()
    parts: Iterable[Any] = (
        spec.split(",") if isinstance(spec, str) else ([spec] if isinstance(spec, int) else spec)
    )
    for part in parts:
        text = str(part).strip()
        if not text:
            continue
        try:
            if "-" in text:
                lo, hi = (int(v) for v in text.split("-", 1))
                values = range(lo, hi + 1)
            else:
                values = range(int(text), int(text) + 1)
        except ValueError:
            raise RobustError(
                f"invalid severities {spec!r}: use a range like 1-5, or a list like 1,3,5"
            ) from None
        for v in values:
            if v not in SEVERITIES:
                where = f" (in {text!r})" if text != str(v) else ""
                raise RobustError(
                    f"severity {v}{where} is out of range: severities are 1 to 5, e.g. -s 1-5"
                )
            out.add(v)
        if not values:
            raise RobustError(f"empty severity range {text!r}: write it low-high, e.g. 1-5")
    if not out:
        raise RobustError("no severities selected: pass --severities 1-5")
    return sorted(out)


def check_count(option: str, value: int | None) -> None:
    """A count option (``--n-examples``, ``--batch-size``): None, or an integer >= 1."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise RobustError(f"{option} must be a whole number of at least 1, got {value!r}")


def check_seed(seed: int) -> None:
    """A generator seed: an integer >= 0 (NumPy's SeedSequence refuses negative ones)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise RobustError(f"--seed must be a whole number of at least 0, got {seed!r}")


def clamp_note(requested: int | None, actual: int, what: str) -> str | None:
    """The line saying that ``-n requested`` was more than there is (None when it was not)."""
    if requested is None or requested <= actual:
        return None
    return f"--n-examples {requested} is more than the {actual} {what}: using all {actual}"


# --------------------------------------------------------------------------------------------
# Checkpoints by path or by registered name
# --------------------------------------------------------------------------------------------


def checkpoint_home(checkpoint_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where stored checkpoints of registered models live: ``checkpoint_dir``, else
    ``$ROBUSTCLI_CHECKPOINTS``, else ``<cache>/checkpoints`` (``~/.cache/robustcli/checkpoints``;
    the cache honours ``$ROBUSTCLI_CACHE`` and ``$XDG_CACHE_HOME``)."""
    if checkpoint_dir is not None:
        return Path(checkpoint_dir).expanduser()
    if os.environ.get(CHECKPOINTS_ENV):
        return Path(os.environ[CHECKPOINTS_ENV]).expanduser()
    from robustcli.data import cache_dir

    return cache_dir() / "checkpoints"


def stored_checkpoint(name: str, checkpoint_dir: str | os.PathLike[str] | None = None) -> Path:
    """The stored checkpoint of registered model ``name``: ``<home>/<name>/model.safetensors``
    (the file ``robust train -m NAME --out <home>/<name>`` writes)."""
    return checkpoint_home(checkpoint_dir) / name / "model.safetensors"


def resolve_checkpoint(
    spec: str | os.PathLike[str], checkpoint_dir: str | os.PathLike[str] | None = None
) -> Path:
    """A checkpoint file or run folder as given, or the stored checkpoint of a registered name."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    from robustcli.registry import closest_models, list_models

    name = str(spec)
    if name in list_models("*"):
        stored = stored_checkpoint(name, checkpoint_dir)
        if stored.is_file():
            return stored
        raise CheckpointError(
            f"no stored checkpoint for {name!r} at {stored}: train one with `robust train -m "
            f"{name} -d cifar10 --out {stored.parent}`, or pass a checkpoint path"
        )
    hint = closest_models(name)
    did = f" (did you mean {hint[0]}?)" if hint and os.sep not in name else ""
    raise CheckpointError(
        f"{name} is neither a checkpoint file or run folder nor a registered model{did}: check "
        "the path, or run `robust models` for the names"
    )
