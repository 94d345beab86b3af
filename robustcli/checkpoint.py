"""Checkpoints: safetensors weights plus the metadata that rebuilds and feeds the model.

``save_checkpoint`` writes ``model.safetensors`` atomically. Its metadata (safetensors allows
str -> str only, so every value is a JSON string) holds the model name, backbone and full builder
config, the dataset, its normalisation, the input adapter (how dataset images were resized /
replicated to the model's input), and whatever the caller adds (recipe, epochs, seed, metrics,
versions, git commit). ``tensor_sha256`` covers every tensor's name, dtype, shape and bytes, so
silent corruption is caught on load, not just truncation.

``load_checkpoint(path)`` rebuilds the model from that metadata alone, checks every tensor's name
and shape against the rebuilt model and returns it in eval mode. ``import_state_dict`` brings in
plain PyTorch state dicts (such as the Strisciuglio release) with ``torch.load(weights_only=True)``
only: files that need arbitrary unpickling are refused.

Training state for ``--resume`` (``last.safetensors``) uses the same format rules: tensors in
safetensors, everything else in a JSON metadata string, never pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustcli.data import InputAdapter, normalize
from robustcli.errors import CheckpointError, RobustError
from robustcli.io import atomic_write_bytes

FORMAT = "robustcli-checkpoint"
FORMAT_VERSION = 1
STATE_FORMAT = "robustcli-train-state"
#: metadata keys written by ``save_checkpoint`` itself (``extra`` may not reuse them)
RESERVED = (
    "format",
    "format_version",
    "model",
    "backbone",
    "config",
    "dataset",
    "normalization",
    "input",
    "tensor_sha256",
)


@dataclass
class Checkpoint:
    """A model rebuilt from a checkpoint, with everything needed to feed it.

    ``prepare(x)`` turns dataset images (uint8 0..255 or float 0..1, in the dataset's shape) into
    model input: the recorded ``input`` adaptation, then ``(x - mean) / std``.
    """

    model: nn.Module
    name: str
    backbone: str
    config: dict[str, Any]
    dataset: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input: InputAdapter
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def adapter(self) -> InputAdapter:
        """Alias of ``input``: the dataset -> model input adaptation used in training."""
        return self.input

    @property
    def normalization(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """Dataset-shaped images -> model-shaped images (no normalisation)."""
        return self.input(x)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Dataset images -> normalised model input (float32, on ``x``'s device)."""
        x = self.adapt(x)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return normalize(x, self.mean, self.std)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _plain_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, unshared copies (safetensors refuses views and shared storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over sorted names, dtypes, shapes and raw bytes of ``tensors``."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}\n".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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
        from robustcli.registry import get_model_spec

        backbone = get_model_spec(model_name).backbone
    tensors = _plain_tensors(model_state(model))
    mean = [float(v) for v in normalization["mean"]]
    std = [float(v) for v in normalization["std"]]
    if input is None:  # identity at the zoo's input size when the model is in the zoo
        from robustcli.registry import get_model_spec

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
        "tensor_sha256": tensor_digest(tensors),
    }
    for key, value in (extra or {}).items():
        if key in RESERVED:
            raise ValueError(f"extra metadata key {key!r} is reserved")
        meta[key] = _json(value)
    path = Path(path)
    atomic_write_bytes(path, save(tensors, metadata=meta))
    return path


def _resolve_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "model.safetensors"
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} not found: check the path (a run folder works too)")
    return p


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except SafetensorError as exc:
        raise CheckpointError(
            f"{path} is corrupt or truncated ({exc}): re-download it or retrain"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    return tensors, meta


def _decode_meta(path: Path, meta: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if key in ("format", "format_version", "model", "backbone", "dataset", "tensor_sha256"):
            out[key] = value
            continue
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            raise CheckpointError(
                f"{path}: metadata {key!r} is not valid JSON (corrupt file): retrain or re-export"
            ) from None
    return out


def check_state_shapes(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ``CheckpointError`` naming missing, unexpected or mis-shaped tensors."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})")
    if wrong:
        problems.append(f"{len(wrong)} with other shapes ({'; '.join(wrong[:3])})")
    if problems:
        raise CheckpointError(
            f"{source} does not match the model it describes: {', '.join(problems)}; "
            "the file is from another model or version"
        )


def load_checkpoint(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> Checkpoint:
    """Rebuild the model of a robustcli checkpoint from its metadata; eval mode, on ``device``.

    Raises ``CheckpointError`` for missing, truncated, corrupt (checksum) or mismatched files,
    and for safetensors files without robustcli metadata (see ``import_state_dict``).
    """
    from robustcli.registry import build_from_config

    p = _resolve_path(path)
    tensors, raw = _read_safetensors(p)
    if raw.get("format") != FORMAT:
        raise CheckpointError(
            f"{p} has no robustcli metadata: import plain weights with "
            "robustcli.checkpoint.import_state_dict(path, model_name)"
        )
    if int(raw.get("format_version", "0")) > FORMAT_VERSION:
        raise CheckpointError(
            f"{p} uses checkpoint format {raw['format_version']}, newer than this robustcli "
            f"({FORMAT_VERSION}): upgrade robustcli"
        )
    missing = [k for k in ("model", "backbone", "config", "normalization") if k not in raw]
    if missing:
        raise CheckpointError(f"{p} lacks metadata {', '.join(missing)}: retrain or re-export it")
    want = raw.get("tensor_sha256")
    if want and tensor_digest(tensors) != want:
        raise CheckpointError(
            f"{p} is corrupt: its tensors do not match the stored checksum; re-download or retrain"
        )
    meta = _decode_meta(p, raw)
    config = dict(meta["config"])
    try:
        model = build_from_config(meta["backbone"], config)
    except RobustError as exc:
        raise CheckpointError(f"{p}: cannot rebuild {meta['model']!r}: {exc}") from None
    check_state_shapes(model, tensors, str(p))
    model.load_state_dict(tensors, strict=True)
    model.to(device).eval()
    norm = meta["normalization"]
    adapter = meta.get("input")
    if adapter:
        input_adapter = InputAdapter.from_dict(adapter)
    else:  # identity; the spatial size is unknown (0 x 0) but not needed
        c = int(config.get("in_channels", len(norm["mean"])))
        input_adapter = InputAdapter((c, 0, 0), (c, 0, 0))
    return Checkpoint(
        model=model,
        name=meta["model"],
        backbone=meta["backbone"],
        config=config,
        dataset=meta.get("dataset", ""),
        mean=tuple(float(v) for v in norm["mean"]),
        std=tuple(float(v) for v in norm["std"]),
        input=input_adapter,
        meta=meta,
        path=p,
    )


# --------------------------------------------------------------------------------------------
# Plain PyTorch state dicts
# --------------------------------------------------------------------------------------------

_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
_PREFIXES = ("module.", "_orig_mod.", "model.")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a ``torch.save``d state dict, loaded with ``weights_only=True`` only.

    Common containers (``{"state_dict": ...}``, ``{"model": ...}``) and ``module.`` /
    ``_orig_mod.`` prefixes are unwrapped.
    """
    import pickle

    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"state dict {p} not found: check the path")
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"refused to load {p}: it contains Python objects beyond tensors, and robustcli only "
            "loads with weights_only=True; re-save it as model.state_dict()"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{p} is not a readable PyTorch file ({first}): re-download it"
        ) from None
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
    from robustcli.registry import create_model, get_model_spec, resolve_config

    spec = get_model_spec(model_name)
    config = resolve_config(model_name, **dict(overrides or {}))
    model = create_model(model_name, **dict(overrides or {}))
    state = match_state_dict(model, read_state_dict(path), str(path))
    model.load_state_dict(state, strict=True)
    model.eval()
    info = dataset_info(dataset or spec.dataset)
    c = int(config.get("in_channels", spec.input_shape[0]))
    shape = (c, *spec.input_shape[1:])
    adapter = InputAdapter(shape, shape)  # type: ignore[arg-type]
    mean, std = adapter.normalization(info.mean, info.std)
    meta = {"imported_from": str(path), "source": dict(spec.source)}
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


# --------------------------------------------------------------------------------------------
# Training state for --resume
# --------------------------------------------------------------------------------------------


def save_training_state(
    path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], state: Mapping[str, Any]
) -> None:
    """Atomically write resume state: ``tensors`` in safetensors, ``state`` as JSON metadata."""
    from safetensors.torch import save

    plain = _plain_tensors(tensors)
    meta = {
        "format": STATE_FORMAT,
        "format_version": str(FORMAT_VERSION),
        "state": _json(dict(state)),
        "tensor_sha256": tensor_digest(plain),
    }
    atomic_write_bytes(path, save(plain, metadata=meta))


def load_training_state(
    path: str | os.PathLike[str],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read what ``save_training_state`` wrote; ``CheckpointError`` if damaged."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"no training state at {p}: nothing to resume")
    tensors, raw = _read_safetensors(p)
    if raw.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{p} is not a robustcli training state")
    if tensor_digest(tensors) != raw.get("tensor_sha256"):
        raise CheckpointError(f"{p} is corrupt (checksum mismatch): start the run again")
    try:
        state = json.loads(raw["state"])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"{p} has unreadable state metadata: start the run again") from None
    return tensors, state


def optimizer_to_tensors(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors and JSON-able values."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], info: Mapping[str, Any]
) -> None:
    """Inverse of ``optimizer_to_tensors``: load the state into ``optimizer``."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, entry in info.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entry)
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
