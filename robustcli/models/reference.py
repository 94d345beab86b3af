"""What a model reference names, decided without loading anything.

Every command that takes a model (``eval-c``, ``attack``, ``explain``) reads its first argument
and each ``--vs`` with ``resolve_reference``. The grammar, tried in this order:

1. an existing file: a robustcli checkpoint (``model.safetensors`` or any ``*.safetensors``);
2. an existing folder: a run folder holding ``model.safetensors`` (``robust train --out``);
3. ``package.module:factory``: a model of your own, a callable returning an ``nn.Module``
   (imported with importlib; the current folder is searched too);
4. a registry name (``robust models``): its stored weights
   ``<checkpoint-dir>/<name>/model.safetensors``, or random weights with ``untrained=True``.

Anything else is refused in one line that says which of these it is not. The stored-weights
folder is ``checkpoint_dir``, else ``$ROBUSTCLI_CHECKPOINTS``, else
``~/.cache/robustcli/checkpoints``. Nothing here imports torch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from robustcli.errors import CheckpointError, RobustError

CHECKPOINTS_ENV = "ROBUSTCLI_CHECKPOINTS"
#: ``package.module:factory`` (the factory may be a dotted attribute, e.g. ``Nets.small``)
USER_MODEL = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
#: suffixes that make a missing reference a missing file rather than an unknown name
_FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")

Kind = Literal["checkpoint", "registry", "user"]


@dataclass(frozen=True)
class ModelRef:
    """A resolved reference: ``kind`` and what it points at (``path``, ``name`` or
    ``module``/``factory``); ``text`` is the reference as given."""

    kind: Kind
    text: str
    path: Path | None = None  # checkpoint: the file or run folder
    name: str | None = None  # registry: the model name (also set for its stored checkpoint)
    module: str | None = None  # user: package.module
    factory: str | None = None  # user: the callable's name in the module
    untrained: bool = False  # registry: random weights, asked for


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


def is_user_model(text: str) -> bool:
    """True for ``package.module:factory`` (checked before registry names: those have no colon)."""
    return bool(USER_MODEL.match(text))


def _looks_like_path(text: str) -> bool:
    return "/" in text or os.sep in text or text.lower().endswith(_FILE_SUFFIXES)


def no_weights_message(name: str, stored: Path) -> str:
    """The one line for a registry name without stored weights: how to get them, or not."""
    from robustcli.models.registry import get_model_spec

    dataset = get_model_spec(name).dataset
    return (
        f"no stored checkpoint for {name!r} at {stored}: train one with `robust train -m {name} "
        f"-d {dataset} --out {stored.parent}` (or put its model.safetensors there; "
        "--checkpoint-dir or $ROBUSTCLI_CHECKPOINTS choose the folder), pass a checkpoint path, "
        "or add --untrained for random weights (a smoke test)"
    )


def resolve_reference(
    ref: str | os.PathLike[str] | ModelRef,
    *,
    untrained: bool = False,
    checkpoint_dir: str | os.PathLike[str] | None = None,
) -> ModelRef:
    """What ``ref`` names (see the module doc for the grammar); raises ``CheckpointError`` or
    ``RobustError`` in one line for a missing file, a folder without weights, a registry name
    without stored weights (unless ``untrained``) and an unknown name."""
    if isinstance(ref, ModelRef):
        return ref
    text = os.fspath(ref)
    if not text.strip():
        raise RobustError(
            "empty model reference: give a checkpoint, a run folder, a registry name or "
            "package.module:factory"
        )
    path = Path(text).expanduser()
    if path.is_file():
        return ModelRef("checkpoint", text, path=path)
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            return ModelRef("checkpoint", text, path=path)
        raise CheckpointError(
            f"{text} is a folder without model.safetensors, not a run folder: pass a run folder "
            "or checkpoint from `robust train`"
        )
    if is_user_model(text):
        module, factory = text.split(":", 1)
        return ModelRef("user", text, module=module, factory=factory)
    if _looks_like_path(text):
        raise CheckpointError(
            f"checkpoint {text} not found: check the path (a run folder works too)"
        )
    from robustcli.models.registry import closest_models, list_models

    if text in list_models("*"):
        if untrained:
            return ModelRef("registry", text, name=text, untrained=True)
        stored = stored_checkpoint(text, checkpoint_dir)
        if stored.is_file():
            return ModelRef("checkpoint", text, path=stored, name=text)
        raise CheckpointError(no_weights_message(text, stored))
    hint = closest_models(text)
    did = f" (did you mean {hint[0]}?)" if hint else ""
    raise CheckpointError(
        f"{text} is neither a checkpoint file or run folder, a registered model{did}, nor "
        "package.module:factory: check the path, or run `robust models` for the names"
    )
