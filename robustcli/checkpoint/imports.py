"""Plain PyTorch state dicts (``.pt`` / ``.pth`` from ``torch.save``, or bare safetensors):
read with ``torch.load(weights_only=True)`` only, matched onto a registry model by name or by
the order of shapes, and optionally saved as a robustcli checkpoint (``import_state_dict``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustcli.checkpoint.format import save_checkpoint
from robustcli.checkpoint.spec import Checkpoint, _one_line, _read_safetensors
from robustcli.checkpoint.validate import check_finite, check_state_shapes
from robustcli.data import InputAdapter
from robustcli.errors import CheckpointError

_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
_PREFIXES = ("module.", "_orig_mod.", "model.")


def _torch_load(p: Path) -> Any:
    """``torch.load(weights_only=True)`` with each failure as one line saying which it was."""
    import pickle

    try:
        return torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):  # a well-formed pickle of other Python objects
            raise CheckpointError(
                f"refused to load {p}: it contains Python objects beyond tensors, and robustcli "
                "only loads with weights_only=True; re-save it as model.state_dict()"
            ) from None
        raise CheckpointError(
            f"{p} is not a valid PyTorch file (its pickle data is damaged): re-download it"
        ) from None
    except Exception as exc:  # noqa: BLE001 (any parser failure on an untrusted file)
        raise CheckpointError(
            f"{p} is not a valid PyTorch file ({_one_line(exc, 100)}): re-download it"
        ) from None


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a ``torch.save``d state dict, loaded with ``weights_only=True`` only, or of a
    bare safetensors file. Nothing is ever unpickled beyond tensors and plain containers.

    Common containers (``{"state_dict": ...}``, ``{"model": ...}``) and ``module.`` /
    ``_orig_mod.`` prefixes are unwrapped.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"state dict {p} not found: check the path")
    try:
        with open(p, "rb") as fh:
            head = fh.read(9)
    except OSError as exc:
        raise CheckpointError(f"cannot read {p}: {exc.strerror or exc}") from None
    obj: Any
    if len(head) == 9 and head[8:9] == b"{":  # a bare safetensors file
        obj, _ = _read_safetensors(p)
    elif head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch.save: zip or pickle
        obj = _torch_load(p)
    else:
        raise CheckpointError(
            f"{p} is neither a PyTorch (torch.save) nor a safetensors file: it is corrupt, "
            "truncated or of another format; re-download it"
        )
    for _ in range(3):
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{p} holds a {type(obj).__name__}, not a state dict of tensors")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{p} holds no tensors")
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def match_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "state dict"
) -> dict[str, torch.Tensor]:
    """Map ``state`` onto ``model``'s names: by name if they agree, else by order when the
    sequence of shapes is identical (other codebases name layers differently)."""
    expected = model.state_dict()
    if set(state) == set(expected):
        return dict(state)
    # BatchNorm's num_batches_tracked is absent from old checkpoints: keep the model's value
    ours = [(k, v) for k, v in expected.items() if not k.endswith("num_batches_tracked")]
    theirs = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    if len(ours) == len(theirs) and all(
        tuple(a.shape) == tuple(b.shape) for (_, a), (_, b) in zip(ours, theirs, strict=True)
    ):
        mapped = {k: v for (k, _), (_, v) in zip(ours, theirs, strict=True)}
        for k, v in expected.items():
            mapped.setdefault(k, v)
        return mapped
    check_state_shapes(model, state, source)  # raises with the details
    return dict(state)


def import_state_dict(
    path: str | os.PathLike[str],
    model_name: str,
    *,
    dataset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> Checkpoint:
    """Load a plain PyTorch state dict into the registry model ``model_name``.

    The file is read with ``torch.load(weights_only=True)``; names are matched directly or by
    the order of shapes. Normalisation comes from ``dataset`` (default: the model's). With
    ``out``, the result is also saved as a robustcli checkpoint.
    """
    from robustcli.data import dataset_info
    from robustcli.io import check_output
    from robustcli.models.registry import create_model, get_model_spec, resolve_config

    spec = get_model_spec(model_name)
    config = resolve_config(model_name, **dict(overrides or {}))
    model = create_model(model_name, **dict(overrides or {}))
    state = match_state_dict(model, read_state_dict(path), str(path))
    check_finite(state, str(path))
    model.load_state_dict(state, strict=True)
    model.eval()
    info = dataset_info(dataset or spec.dataset)
    c = int(config.get("in_channels", spec.input_shape[0]))
    shape = (c, *spec.input_shape[1:])
    adapter = InputAdapter(shape, shape)  # type: ignore[arg-type]
    mean, std = adapter.normalization(info.mean, info.std)
    meta = {"imported_from": str(path), "source": dict(spec.source)}
    # a plain state dict carries no checksum: the import is unverified (a copy saved with
    # out= gets a checksum, vouching only for what was imported)
    ckpt = Checkpoint(
        model, model_name, spec.backbone, config, info.name, mean, std, adapter, meta, None
    )
    if out is not None:
        target = check_output(out, force)
        save_checkpoint(
            target,
            model,
            model_name=model_name,
            config=config,
            dataset=info.name,
            normalization=ckpt.normalization,
            input=adapter,
            backbone=spec.backbone,
            extra=meta,
        )
        ckpt.path = target
    return ckpt
