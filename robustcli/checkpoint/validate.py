"""Checks of untrusted checkpoint contents, each before it sizes or builds anything: metadata
(types, ranges, sizes), tensor names and shapes against the model the metadata describes,
finite weights, and one probe forward that must give finite outputs.

Every failure raises ``CheckpointError`` with one line naming the key or tensor and the fix.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

from robustcli.checkpoint.spec import (
    FORMAT,
    FORMAT_VERSION,
    HASH_KEY,
    LEGACY_HASH_KEY,
    Checkpoint,
    _one_line,
    _printable,
)
from robustcli.data import InputAdapter, normalize
from robustcli.errors import CheckpointError, RobustError

_RAW_KEYS = ("format", "format_version", "model", "backbone", "dataset", HASH_KEY, LEGACY_HASH_KEY)
#: bounds of what a checkpoint may ask for (far above any model of the zoo)
MAX_CLASSES = 100_000
MAX_CHANNELS = 16
MAX_SIDE = 4096
MAX_PULL_SCALE = 16.0
_MAX_DEPTH, _MAX_ITEMS, _MAX_STR = 6, 64, 256
#: what ``check_metadata`` returns besides the version and decoded metadata: name, backbone,
#: dataset, config, input adapter, mean, std
MetaFields = tuple[
    str, str, str, dict[str, Any], InputAdapter, tuple[float, ...], tuple[float, ...]
]


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


def check_metadata(p: Path, raw: Mapping[str, str]) -> tuple[int, dict[str, Any], MetaFields]:
    """Check every metadata value of the checkpoint ``p`` (``raw``: its str -> str metadata);
    return its format version, the decoded metadata and the checked rebuild fields.

    Raises ``CheckpointError`` for files without robustcli metadata, newer formats, missing keys
    and any malformed, out-of-range or inconsistent value (one line naming the key and the fix).
    """
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
    return version, meta, (name, backbone, dataset, config, input_adapter, mean, std)


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
