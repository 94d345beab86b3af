"""Saving, loading and upgrading robustcli checkpoints (``model.safetensors``).

``load_checkpoint`` runs the checks of ``validate`` in a fixed order (metadata, then shapes on
the meta device, then tensors, checksum via ``integrity``, finite weights, probe forward), so
nothing is allocated or built from a value that has not been checked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustcli.checkpoint.integrity import _verify, checkpoint_digest
from robustcli.checkpoint.spec import (
    FORMAT,
    FORMAT_VERSION,
    HASH_KEY,
    RESERVED,
    Checkpoint,
    _json,
    _one_line,
    _open_safetensors,
    _plain_tensors,
    _read_safetensors,
    _resolve_path,
    _warn,
)
from robustcli.checkpoint.validate import (
    _build,
    _check_shapes,
    check_finite,
    check_metadata,
    probe_outputs,
)
from robustcli.data import InputAdapter
from robustcli.errors import CheckpointError, RobustError
from robustcli.io import atomic_write_bytes


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of ``model`` with DDP / torch.compile wrappers removed."""
    inner = getattr(model, "_orig_mod", model)
    inner = getattr(inner, "module", inner)
    return dict(inner.state_dict())


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    model_name: str,
    config: Mapping[str, Any],
    dataset: str,
    normalization: Mapping[str, Sequence[float]],
    input: InputAdapter | None = None,
    backbone: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights and rebuild metadata to ``path`` atomically; return ``path``.

    ``config`` is the backbone's full builder config (``registry.resolve_config``);
    ``normalization`` is ``{"mean": [...], "std": [...]}``; ``extra`` values are stored as JSON
    (recipe, epochs, seed, metrics, versions, ...). ``backbone`` defaults to the zoo entry's.
    """
    from safetensors.torch import save

    if backbone is None:
        from robustcli.models.registry import get_model_spec

        backbone = get_model_spec(model_name).backbone
    tensors = _plain_tensors(model_state(model))
    mean = [float(v) for v in normalization["mean"]]
    std = [float(v) for v in normalization["std"]]
    if input is None:  # identity at the zoo's input size when the model is in the zoo
        from robustcli.models.registry import get_model_spec

        c = int(config.get("in_channels", len(mean)))
        try:
            shape = (c, *get_model_spec(model_name).input_shape[1:])
        except RobustError:
            shape = (c, 0, 0)
        input = InputAdapter(shape, shape)  # type: ignore[arg-type]
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "model": model_name,
        "backbone": backbone,
        "config": _json(dict(config)),
        "dataset": dataset,
        "normalization": _json({"mean": mean, "std": std}),
        "input": _json(input.to_dict()),
    }
    for key, value in (extra or {}).items():
        if key in RESERVED:
            raise ValueError(f"extra metadata key {key!r} is reserved")
        meta[key] = _json(value)
    meta[HASH_KEY] = checkpoint_digest(tensors, meta)  # last: it covers every entry above
    path = Path(path)
    atomic_write_bytes(path, save(tensors, metadata=meta))
    return path


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    check_outputs: bool = True,
    warn: bool = True,
) -> Checkpoint:
    """Rebuild the model of a robustcli checkpoint from its metadata; eval mode, on ``device``.

    Order: the file type and header are read without loading tensors, every metadata value is
    checked (types, ranges, sizes), the model is built on the meta device and its tensor names
    and shapes compared with the header (so a 1 MB file cannot make it allocate gigabytes),
    then the tensors are loaded, the checksum verified, NaN / infinite weights refused and,
    with ``check_outputs``, one probe forward must give finite outputs.

    Files without a checksum load as ``integrity="unverified"``, format-1 files as
    ``"legacy-tensors"``; with ``warn`` (default) either prints one ``warning:`` line on stderr.

    Raises ``CheckpointError`` (one line naming the problem and the fix) for missing, truncated,
    corrupt (checksum), edited, malformed or mismatched files, non-finite weights, and for
    safetensors files without robustcli metadata (see ``import_state_dict``).
    """
    p = _resolve_path(path)
    shapes, raw = _open_safetensors(p)
    version, meta, fields = check_metadata(p, raw)
    name, backbone, dataset, config, input_adapter, mean, std = fields
    # sizes first, on the meta device: nothing is allocated for a model the file cannot fill
    with torch.device("meta"):
        skeleton = _build(p, name, backbone, config)
    _check_shapes({k: tuple(v.shape) for k, v in skeleton.state_dict().items()}, shapes, str(p))
    del skeleton
    tensors, again = _read_safetensors(p)
    if again != raw:  # replaced between the two reads: what was checked is not what loads
        raise CheckpointError(f"{p} changed while it was read: load it again")
    integrity = _verify(p, tensors, raw, version)
    check_finite(tensors, str(p))
    model = _build(p, name, backbone, config)
    try:
        model.load_state_dict(tensors, strict=True)
    except (RuntimeError, ValueError, TypeError) as exc:  # e.g. a dtype torch cannot copy
        raise CheckpointError(f"{p}: cannot load its tensors ({_one_line(exc, 100)})") from None
    model.eval()
    ck = Checkpoint(
        model=model,
        name=name,
        backbone=backbone,
        config=dict(config),
        dataset=dataset,
        mean=mean,
        std=std,
        input=input_adapter,
        meta=meta,
        path=p,
        integrity=integrity,
    )
    # probe on the device it runs on: a CPU probe of a GPU run would compile the CPU kernel
    model.to(device)
    if check_outputs:
        probe_outputs(ck, str(p))
    if warn and integrity == "unverified":
        _warn(
            f"{p} carries no checksum: loaded as an UNVERIFIED import (results record "
            "verified: false); re-save it with robustcli.checkpoint.upgrade_checkpoint"
        )
    elif warn and integrity == "legacy-tensors":
        _warn(
            f"{p} is a format-1 checkpoint: its weights are verified, its metadata (model, "
            "normalisation, config) is not; re-save it with robustcli.checkpoint.upgrade_checkpoint"
        )
    return ck


def upgrade_checkpoint(
    path: str | os.PathLike[str], out: str | os.PathLike[str], *, force: bool = False
) -> Path:
    """Re-save a legacy (format 1) or unverified checkpoint in the current format, so that
    later loads verify its metadata too. Check the loaded metadata is right before trusting it:
    the new checksum vouches for what the old file said, nothing more."""
    from robustcli.io import check_output

    ck = load_checkpoint(path, warn=False)
    target = check_output(out, force)
    extra = {k: v for k, v in ck.meta.items() if k not in RESERVED}
    return save_checkpoint(
        target,
        ck.model,
        model_name=ck.name,
        config=ck.config,
        dataset=ck.dataset,
        normalization=ck.normalization,
        input=ck.input,
        backbone=ck.backbone,
        extra=extra,
    )
