"""Checkpoints: safetensors weights plus the metadata that rebuilds and feeds the model.

``save_checkpoint`` writes ``model.safetensors`` atomically. Its metadata (safetensors allows
str -> str only, so every value is a JSON string) holds the model name, backbone and full builder
config, the dataset, its normalisation, the input adapter (how dataset images were resized /
replicated to the model's input), and whatever the caller adds (recipe, epochs, seed, metrics,
versions, git commit). ``checkpoint_sha256`` (format 2) covers every metadata entry and every
tensor's name, dtype, shape and bytes, so silent corruption *and* an edited model name,
normalisation or config are caught on load, not just truncation.

``load_checkpoint(path)`` checks the metadata (types, ranges, sizes) and the tensor shapes in
the file header against the model the registry builds from it (on the meta device: nothing is
allocated before the shapes agree), verifies the checksum, refuses non-finite weights and a
model whose outputs are non-finite on a probe input, and returns the model in eval mode. What it
could verify is reported as ``Checkpoint.integrity``:

- ``"verified"``: format 2, ``checkpoint_sha256`` over metadata and tensors matches;
- ``"legacy-tensors"``: format 1 (earlier robustcli wrote ``tensor_sha256`` over the tensors
  only): the weights are verified, the metadata is not; a warning says so;
- ``"unverified"``: no checksum at all (hand-made or stripped file): loaded as an unverified
  import with a warning.

``import_state_dict`` brings in plain PyTorch state dicts (such as the Strisciuglio release)
with ``torch.load(weights_only=True)`` only: files that need arbitrary unpickling are refused.

Training state for ``--resume`` (``last.safetensors``) uses the same format rules: tensors in
safetensors, everything else in a JSON metadata string, never pickle.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

from robustcli.data import InputAdapter, normalize
from robustcli.errors import CheckpointError, RobustError
from robustcli.io import atomic_write_bytes

FORMAT = "robustcli-checkpoint"
#: 2: ``checkpoint_sha256`` covers metadata and tensors; 1: ``tensor_sha256``, tensors only
FORMAT_VERSION = 2
STATE_FORMAT = "robustcli-train-state"
#: the checksum key of format 2 (metadata + tensors) and of format 1 (tensors only)
HASH_KEY = "checkpoint_sha256"
LEGACY_HASH_KEY = "tensor_sha256"
#: ``Checkpoint.integrity`` values, most to least checked
INTEGRITY = ("verified", "legacy-tensors", "unverified")
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
    "checkpoint_sha256",
)


@dataclass
class Checkpoint:
    """A model rebuilt from a checkpoint, with everything needed to feed it.

    ``integrity`` says what the stored checksum covered (``verified`` only for format-2 files).
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
    #: what the checksum covered: "verified", "legacy-tensors" or "unverified" (see module doc)
    integrity: str = "unverified"

    @property
    def verified(self) -> bool:
        """True when the checksum covered metadata and tensors (format 2) and matched."""
        return self.integrity == "verified"

    def integrity_record(self) -> dict[str, Any]:
        """``{"verified": bool, "integrity": str}`` for the provenance of result documents."""
        return {"verified": self.verified, "integrity": self.integrity}

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


def _hash_tensors(h: Any, tensors: Mapping[str, torch.Tensor]) -> None:
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}\n".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # a buffer: no copy


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over sorted names, dtypes, shapes and raw bytes of ``tensors`` (format 1)."""
    h = hashlib.sha256()
    _hash_tensors(h, tensors)
    return h.hexdigest()


def checkpoint_digest(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """The format-2 checksum: SHA-256 of the canonical JSON of every metadata entry except
    ``checkpoint_sha256`` itself (sorted keys, ASCII, no spaces), then of the tensors as in
    ``tensor_digest``. Editing the model name, the normalisation or the config changes it."""
    covered = {str(k): str(v) for k, v in metadata.items() if k != HASH_KEY}
    h = hashlib.sha256(b"robustcli-checkpoint-sha256/2\n")
    h.update(json.dumps(covered, sort_keys=True, ensure_ascii=True, separators=(",", ":")).encode())
    h.update(b"\n")
    _hash_tensors(h, tensors)
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


def _resolve_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "model.safetensors"
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} not found: check the path (a run folder works too)")
    return p


def _one_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception message, shortened (messages of parsers can be long)."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first[:limit]


def _printable(text: str, limit: int = 80) -> str:
    """``text`` safe for a one-line message: non-printable names are shown escaped."""
    return text[:limit] if text.isprintable() else ascii(text)[:limit]


def _sniff(path: Path) -> None:
    """Refuse files that are not safetensors with a message that names what they are."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(head) == 9 and head[8:9] == b"{":
        return  # 8-byte header length, then the JSON header: safetensors
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        raise CheckpointError(
            f"{path} is a PyTorch torch.save file, not a robustcli safetensors checkpoint: "
            "convert it with robustcli.checkpoint.import_state_dict(path, model_name, out=...)"
        )
    raise CheckpointError(
        f"{path} is not a safetensors checkpoint (corrupt or truncated, or another format): "
        "re-download it or retrain"
    )


def _open_safetensors(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Tensor shapes (from the header, nothing loaded) and the metadata of ``path``."""
    from safetensors import SafetensorError, safe_open

    _sniff(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except SafetensorError as exc:
        raise CheckpointError(
            f"{path} is corrupt or truncated ({_one_line(exc)}): re-download it or retrain"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError, RuntimeError, OverflowError) as exc:  # odd headers
        raise CheckpointError(
            f"{path} has an unreadable safetensors header ({_one_line(exc)}): re-download it"
        ) from None
    return shapes, meta


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    _sniff(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except SafetensorError as exc:
        raise CheckpointError(
            f"{path} is corrupt or truncated ({_one_line(exc)}): re-download it or retrain"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError, RuntimeError, OverflowError) as exc:  # e.g. exotic dtypes
        raise CheckpointError(
            f"{path} holds tensors this torch cannot read ({_one_line(exc)}): re-export it"
        ) from None
    return tensors, meta


# --------------------------------------------------------------------------------------------
# Metadata checks: every value is checked before it sizes or builds anything
# --------------------------------------------------------------------------------------------

_RAW_KEYS = ("format", "format_version", "model", "backbone", "dataset", HASH_KEY, LEGACY_HASH_KEY)
#: bounds of what a checkpoint may ask for (far above any model of the zoo)
MAX_CLASSES = 100_000
MAX_CHANNELS = 16
MAX_SIDE = 4096
MAX_PULL_SCALE = 16.0
_MAX_DEPTH, _MAX_ITEMS, _MAX_STR = 6, 64, 256


def _bad(path: Path, key: str, problem: str, fix: str = "re-download it or retrain") -> NoReturn:
    raise CheckpointError(f"{path}: metadata {key!r} {problem}: {fix}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _check_json_value(path: Path, key: str, value: Any, depth: int = 0) -> None:
    """Builder configs are small: bounded nesting, lengths and finite numbers only."""
    if depth > _MAX_DEPTH:
        _bad(path, key, f"nests deeper than {_MAX_DEPTH} levels")
    if isinstance(value, dict):
        if len(value) > _MAX_ITEMS:
            _bad(path, key, f"has more than {_MAX_ITEMS} entries")
        for k, v in value.items():
            if not (k.isprintable() and len(k) <= _MAX_STR):  # keys end up in messages
                _bad(path, key, f"has a key {_printable(k, 40)} that is not a printable name")
            _check_json_value(path, f"{key}.{k}", v, depth + 1)
    elif isinstance(value, list):
        if len(value) > _MAX_ITEMS:
            _bad(path, key, f"has more than {_MAX_ITEMS} items")
        for v in value:
            _check_json_value(path, key, v, depth + 1)
    elif isinstance(value, str):
        if len(value) > _MAX_STR:
            _bad(path, key, f"holds a string longer than {_MAX_STR} characters")
    elif isinstance(value, float) and not math.isfinite(value):
        _bad(path, key, "holds NaN or infinity")
    elif not (value is None or isinstance(value, bool | int | float)):
        _bad(path, key, f"holds a {type(value).__name__}")


def _decode_json(path: Path, key: str, value: str) -> Any:
    try:
        return json.loads(value)
    except (json.JSONDecodeError, RecursionError):
        _bad(path, key, "is not valid JSON (corrupt file)", "retrain or re-export it")


def _decode_meta(path: Path, meta: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in meta.items():
        out[key] = value if key in _RAW_KEYS else _decode_json(path, key, value)
    return out


def _format_version(path: Path, raw: Mapping[str, str]) -> int:
    text = raw.get("format_version", "1")  # the first files had none
    if not (isinstance(text, str) and text.isascii() and text.isdigit() and len(text) <= 6):
        _bad(path, "format_version", f"is {_printable(str(text), 20)!r}, not a version number")
    version = int(text)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} uses checkpoint format {version}, newer than this robustcli "
            f"({FORMAT_VERSION}): upgrade robustcli"
        )
    if version < 1:
        _bad(path, "format_version", f"is {version}; versions start at 1")
    return version


def _check_name(path: Path, key: str, value: Any, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty):
        _bad(path, key, "must be a non-empty string")
    if len(value) > 200 or not value.isprintable():
        _bad(path, key, "must be a printable name of at most 200 characters")
    return value


def _check_config(path: Path, config: Any) -> dict[str, Any]:
    if not isinstance(config, dict):
        _bad(path, "config", f"must be a JSON object, not {type(config).__name__}")
    _check_json_value(path, "config", config)
    n = config.get("num_classes", 10)  # present means an integer (null is no default)
    if not (_is_int(n) and 2 <= n <= MAX_CLASSES):
        _bad(path, "config.num_classes", f"is {n!r}; it must be an integer in [2, {MAX_CLASSES}]")
    c = config.get("in_channels", 1)
    if not (_is_int(c) and 1 <= c <= MAX_CHANNELS):
        _bad(path, "config.in_channels", f"is {c!r}; it must be an integer in [1, {MAX_CHANNELS}]")
    pp = config.get("pp")
    if pp is not None:
        if not isinstance(pp, dict):
            _bad(path, "config.pp", "must be an object or null")
        # the pull kernel grows with the scale: a huge one would make every forward enormous
        scales = [pp["scale"]] if "scale" in pp else []
        scales += pp["scales"] if isinstance(pp.get("scales"), list) else []
        if "scales" in pp and not (isinstance(pp["scales"], list) and 1 <= len(pp["scales"]) <= 8):
            _bad(path, "config.pp.scales", "must be a list of 1 to 8 numbers")
        if not all(_is_number(v) and 0 < v <= MAX_PULL_SCALE for v in scales):
            _bad(path, "config.pp.scale", f"must be numbers in (0, {MAX_PULL_SCALE:g}]")
        r = pp.get("reduction", 4)
        if not (_is_int(r) and 1 <= r <= 1024):
            _bad(path, "config.pp.reduction", f"is {r!r}; it must be an integer in [1, 1024]")
        a = pp.get("alpha", 1.0)
        if not _is_number(a):
            _bad(path, "config.pp.alpha", f"is {a!r}; it must be a finite number")
    return config


def _check_shape(path: Path, key: str, shape: Any) -> tuple[int, int, int]:
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(v) for v in shape)):
        _bad(path, key, f"is {_printable(str(shape), 40)}, not [C, H, W] integers")
    c, h, w = shape
    if not 1 <= c <= MAX_CHANNELS:
        _bad(path, key, f"has {c} channels; it must be 1..{MAX_CHANNELS}")
    # 0 x 0: the spatial size is unknown (written for models outside the zoo)
    if not ((h, w) == (0, 0) or (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE)):
        _bad(path, key, f"has size {h}x{w}; height and width must be 1..{MAX_SIDE}")
    return c, h, w


def _check_input(path: Path, value: Any) -> InputAdapter:
    if not isinstance(value, dict):
        _bad(path, "input", f"must be a JSON object, not {type(value).__name__}")
    src = _check_shape(path, "input.source_shape", value.get("source_shape"))
    dst = _check_shape(path, "input.target_shape", value.get("target_shape"))
    channels, resize = value.get("channels", "keep"), value.get("resize", "none")
    fits = {"keep": src[0] == dst[0], "replicate": src[0] == 1, "luma": (src[0], dst[0]) == (3, 1)}
    if channels not in fits:
        _bad(
            path, "input.channels", f"is {_printable(str(channels), 20)!r}, not keep/replicate/luma"
        )
    if not fits[channels]:
        _bad(path, "input.channels", f"{channels!r} does not turn {src[0]} into {dst[0]} channels")
    if resize not in ("none", "bilinear"):
        _bad(path, "input.resize", f"is {_printable(str(resize), 20)!r}, not none/bilinear")
    return InputAdapter(src, dst, channels, resize)


def _check_normalization(path: Path, value: Any, channels: int) -> tuple[tuple[float, ...], ...]:
    if not isinstance(value, dict):
        _bad(path, "normalization", "must be an object {mean: [...], std: [...]}")
    out = []
    for key in ("mean", "std"):
        v = value.get(key)
        if not (isinstance(v, list) and v and all(_is_number(x) for x in v)):
            _bad(path, f"normalization.{key}", "must be a list of finite numbers")
        if len(v) != channels:
            _bad(
                path,
                f"normalization.{key}",
                f"has {len(v)} values for a {channels}-channel model; give one per channel",
            )
        out.append(tuple(float(x) for x in v))
    if not all(s > 0 for s in out[1]):
        _bad(path, "normalization.std", f"is {list(out[1])}; every std must be > 0")
    return out[0], out[1]


def _check_shapes(
    expected: Mapping[str, Sequence[int]], got: Mapping[str, Sequence[int]], source: str
) -> None:
    missing = [_printable(k) for k in expected if k not in got]
    unexpected = [_printable(k) for k in got if k not in expected]
    wrong = [
        f"{_printable(k)} {tuple(got[k])} vs {tuple(v)}"
        for k, v in expected.items()
        if k in got and tuple(got[k]) != tuple(v)
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


def check_state_shapes(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ``CheckpointError`` naming missing, unexpected or mis-shaped tensors."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    _check_shapes(expected, {k: tuple(v.shape) for k, v in state.items()}, source)


def check_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse weights with NaN or infinity, naming the first such tensor (in name order)."""
    for name in sorted(state):
        t = state[name]
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(
                f"{source}: tensor {_printable(name)} holds NaN or infinite values (diverged "
                "training or a damaged file): retrain, or use an earlier checkpoint"
            )


def _build(path: Path, name: str, backbone: str, config: Mapping[str, Any]) -> nn.Module:
    """``build_from_config`` with any failure of the builder reported as the file's fault:
    the config comes from the checkpoint, so a builder that chokes on it means a bad file."""
    from robustcli.models.registry import build_from_config

    try:
        return build_from_config(backbone, config)
    except RobustError as exc:
        text = " ".join(str(exc).split())  # one line whatever the builder said
        raise CheckpointError(f"{path}: cannot rebuild {name!r}: {text}") from None
    except Exception as exc:  # noqa: BLE001 (untrusted config; see docstring)
        raise CheckpointError(
            f"{path}: cannot rebuild {name!r} from its config ({type(exc).__name__}: "
            f"{_one_line(exc, 100)}): the metadata is damaged; re-download it or retrain"
        ) from None


def _probe_shape(ck: Checkpoint) -> tuple[int, int, int] | None:
    c, h, w = ck.input.target_shape
    if h and w:
        return c, h, w
    from robustcli.models.registry import get_model_spec

    try:
        return (c, *get_model_spec(ck.name).input_shape[1:])  # type: ignore[return-value]
    except RobustError:
        return None  # a model outside the zoo without a recorded size: nothing to probe with


def probe_outputs(ck: Checkpoint, source: str) -> None:
    """Run the model once on a fixed random image of its input size and refuse non-finite
    outputs: finite weights can still give NaN (a negative BatchNorm variance, overflowing
    weights), which would otherwise count as arbitrary predictions without a word."""
    shape = _probe_shape(ck)
    if shape is None or shape[1] * shape[2] > 512 * 512:  # unknown, or too costly to probe
        return
    x = torch.rand((1, *shape), generator=torch.Generator().manual_seed(0))
    x = x.to(next(iter(ck.model.parameters()), x).device)
    try:
        with torch.no_grad():
            out = ck.model(normalize(x, ck.mean, ck.std))
    except Exception as exc:  # noqa: BLE001 (the recorded shape or config is wrong)
        raise CheckpointError(
            f"{source}: the model fails on its recorded input size {shape} "
            f"({type(exc).__name__}: {_one_line(exc, 100)}): the metadata is damaged"
        ) from None
    if not isinstance(out, torch.Tensor) or not bool(torch.isfinite(out.float()).all()):
        raise CheckpointError(
            f"{source}: the model outputs NaN or infinity on a test image (finite weights, "
            "broken statistics such as a negative BatchNorm variance): retrain it"
        )


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _verify(
    path: Path, tensors: Mapping[str, torch.Tensor], raw: Mapping[str, str], version: int
) -> str:
    """Check the stored checksum; return the integrity level (see the module doc)."""
    damaged = f"{path} is corrupt or was edited: its contents do not match the stored checksum"
    if HASH_KEY in raw:
        if checkpoint_digest(tensors, raw) != raw[HASH_KEY]:
            raise CheckpointError(f"{damaged} (metadata and tensors); re-download or retrain")
        return "verified"
    if LEGACY_HASH_KEY in raw:
        if version >= 2:  # format 2 always writes the full checksum: this one was stripped
            raise CheckpointError(
                f"{path} is a format-{version} checkpoint without {HASH_KEY}: its metadata was "
                "edited; re-download or retrain"
            )
        if tensor_digest(tensors) != raw[LEGACY_HASH_KEY]:
            raise CheckpointError(f"{damaged} (tensors); re-download or retrain")
        return "legacy-tensors"
    return "unverified"


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
    if raw.get("format") != FORMAT:
        raise CheckpointError(
            f"{p} has no robustcli metadata: import plain weights with "
            "robustcli.checkpoint.import_state_dict(path, model_name)"
        )
    version = _format_version(p, raw)
    missing = [k for k in ("model", "backbone", "config", "normalization") if k not in raw]
    if missing:
        raise CheckpointError(f"{p} lacks metadata {', '.join(missing)}: retrain or re-export it")
    meta = _decode_meta(p, raw)
    name = _check_name(p, "model", meta["model"])
    backbone = _check_name(p, "backbone", meta["backbone"])
    dataset = _check_name(p, "dataset", meta.get("dataset", ""), empty=True)
    config = _check_config(p, meta["config"])
    if meta.get("input") is not None:
        input_adapter = _check_input(p, meta["input"])
    else:  # identity; the spatial size is unknown (0 x 0) but not needed
        norm = meta["normalization"]
        guess = (
            len(norm["mean"])
            if isinstance(norm, dict) and isinstance(norm.get("mean"), list)
            else 3
        )
        c = config.get("in_channels", guess)
        shape = _check_shape(p, "input", [c, 0, 0])
        input_adapter = InputAdapter(shape, shape)
    channels = int(config.get("in_channels", input_adapter.target_shape[0]))
    if channels != input_adapter.target_shape[0]:
        _bad(
            p,
            "input.target_shape",
            f"has {input_adapter.target_shape[0]} channels but config.in_channels is {channels}",
        )
    mean, std = _check_normalization(p, meta["normalization"], channels)
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


# --------------------------------------------------------------------------------------------
# Plain PyTorch state dicts
# --------------------------------------------------------------------------------------------

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
