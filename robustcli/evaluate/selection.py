"""What eval-c evaluates: corruption and severity selections, count and seed checks, and the
checkpoint a name or path stands for (``robustcli.models.reference`` decides; re-exported
here). All checks raise ``RobustError`` before any file is read."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robustcli.corruptions import COMMON, CORRUPTIONS, GROUPS, SEVERITIES
from robustcli.errors import CheckpointError, RobustError

# where registered names find their weights: defined with the model references, kept here
from robustcli.models.reference import (  # noqa: E402, F401 (re-exports)
    CHECKPOINTS_ENV,
    checkpoint_home,
    resolve_reference,
    stored_checkpoint,
)

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


def resolve_checkpoint(
    spec: str | os.PathLike[str], checkpoint_dir: str | os.PathLike[str] | None = None
) -> Path:
    """A checkpoint file or run folder as given, or the stored checkpoint of a registered name
    (``robustcli.models.resolve_reference``, which every command uses; kept for its callers)."""
    ref = resolve_reference(spec, checkpoint_dir=checkpoint_dir)
    if ref.kind != "checkpoint" or ref.path is None:
        raise CheckpointError(f"{spec} is not a checkpoint: pass a model.safetensors or run folder")
    return ref.path
