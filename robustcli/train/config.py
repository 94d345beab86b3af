"""The resolved configuration of a run: argument checks, recipe + overrides, resume checks.

:func:`configure` turns a :class:`TrainRequest` (what the caller asked for) into the
``config.json`` document of the run: for a new run the model's builder config, the dataset, the
input adapter and normalisation and the recipe's hyperparameters with the caller's overrides
(:func:`resolve_config`); for ``--resume`` the run's own ``config.json``, against which the given
options are checked (:func:`check_resume_args`). Either way ``config["runtime"]`` records the
device, precision and memory format this process trains with.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from robustcli import runtime
from robustcli.data import AUGMENTS, DEFAULT_AUGMENT, DatasetInfo, dataset_info, input_adapter
from robustcli.errors import RobustError
from robustcli.registry import get_model_spec
from robustcli.registry import resolve_config as resolve_model_config
from robustcli.train.recipes import (
    DEFAULT_RECIPE,
    SCHEDULES,
    canonical_recipe,
    get_recipe,
    milestone_epochs,
)
from robustcli.train.rundir import CONFIG_SCHEMA, on_rank0, read_run_config

DEFAULT_DATASET = "digits"
DEFAULT_SEED = 0

# Ranges of the numeric options (the CLI checks the same ones with ``in_range``).
LR_RANGE = (0.0, 10.0)  # exclusive low: a larger peak lr only diverges
SEED_MAX = 2**32 - 1  # NumPy's limit
NORMALIZE_MODES = ("dataset", "mean", "none")

EpochCallback = Callable[[dict[str, float]], None]


@dataclass(frozen=True)
class TrainRequest:
    """What the caller of ``train`` asked for (``None``: the recipe's, or the saved run's)."""

    model_name: str
    dataset: str | None
    data_dir: str | None
    recipe: str | None
    epochs: int | None
    batch_size: int | None
    lr: float | None
    out: Path | None
    seed: int | None
    device: str
    resume: bool
    compile: bool
    precision: str
    channels_last: bool | None
    hp_overrides: Mapping[str, Any] = field(default_factory=dict)
    model_overrides: Mapping[str, Any] = field(default_factory=dict)
    input_shape: Sequence[int] | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    normalize: str | None = None
    eval_every: int = 1
    progress: bool | str = "auto"
    callbacks: Sequence[EpochCallback] = ()


def check_numbers(**values: Any) -> None:
    """One-line errors for numeric arguments out of range, before anything is touched (Python
    callers get the CLI's checks too). ``None`` means "the recipe's"."""
    whole = (lambda v: v >= 1 and v.is_integer(), "a whole number >= 1")
    lo, hi = LR_RANGE
    rules: dict[str, tuple[Callable[[float], bool], str]] = {
        "epochs": whole,
        "batch_size": whole,
        "train_limit": whole,
        "test_limit": whole,
        "eval_every": whole,
        "lr": (lambda v: lo < v <= hi, f"a number > {lo:g} and <= {hi:g}"),
        "seed": (lambda v: 0 <= v <= SEED_MAX and v.is_integer(), f"a whole number 0..{SEED_MAX}"),
        "momentum": (lambda v: 0 <= v < 1, "a number >= 0 and < 1"),
        "weight_decay": (lambda v: v >= 0, "a number >= 0"),
        "label_smoothing": (lambda v: 0 <= v < 1, "a number >= 0 and < 1"),
    }
    for name, value in values.items():
        if value is None:
            continue
        ok, rule = rules[name]
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (is_number and math.isfinite(value) and ok(float(value))):
            raise RobustError(f"--{name.replace('_', '-')} {value!r} is out of range: give {rule}")


def configure(
    req: TrainRequest, dev: torch.device, info: runtime.DistInfo
) -> tuple[dict[str, Any], str | None]:
    """The run's configuration (with ``runtime`` filled in) and the data folder to read."""
    saved = read_run_config(req.out) if req.resume and req.out is not None else None
    precision, channels_last = req.precision, req.channels_last
    saved_rt = (saved or {}).get("runtime") or {}
    if saved_rt.get("device") == dev.type:  # keep the run's numerics unless told
        if precision == "auto":
            precision = saved_rt.get("precision", precision)
        if channels_last is None:
            channels_last = saved_rt.get("channels_last")
    prec = runtime.resolve_precision(precision, dev)
    cl = runtime.default_channels_last(dev) if channels_last is None else bool(channels_last)

    if saved is not None:
        config = saved
        check_resume_args(config, _resume_args(req))
        data_dir = req.data_dir or config.get("data_dir")
    else:
        config = _new_config(req, info)
        data_dir = req.data_dir
    config["runtime"] = {
        "device": dev.type,
        "precision": prec,
        "channels_last": cl,
        "compile": bool(req.compile),
        "world_size": info.world_size,
        "threads": torch.get_num_threads(),
    }
    return config, data_dir


def _resume_args(req: TrainRequest) -> dict[str, Any]:
    return {
        "model": req.model_name,
        "dataset": req.dataset,
        "seed": req.seed,
        "recipe": req.recipe,
        "epochs": req.epochs,
        "batch_size": req.batch_size,
        "lr": req.lr,
        "normalize": req.normalize,
    }


def _new_config(req: TrainRequest, info: runtime.DistInfo) -> dict[str, Any]:
    dataset = req.dataset or DEFAULT_DATASET
    # rank 0 first: reading the dataset's description may download it
    ds_info: DatasetInfo = on_rank0(info, lambda: dataset_info(dataset, req.data_dir))
    hp_overrides = {
        "epochs": req.epochs,
        "batch_size": req.batch_size,
        "lr": req.lr,
        **req.hp_overrides,
    }
    return resolve_config(
        model_name=req.model_name,
        dataset=dataset,
        data_dir=req.data_dir,
        recipe=req.recipe or DEFAULT_RECIPE,
        seed=DEFAULT_SEED if req.seed is None else req.seed,
        hp_overrides=hp_overrides,
        model_overrides=req.model_overrides,
        input_shape=req.input_shape,
        info=ds_info,
        train_limit=req.train_limit,
        test_limit=req.test_limit,
        normalize=req.normalize,
    )


def resolve_config(
    *,
    model_name: str,
    dataset: str,
    data_dir: str | None,
    recipe: str,
    seed: int,
    hp_overrides: Mapping[str, Any],
    model_overrides: Mapping[str, Any],
    input_shape: Sequence[int] | None,
    info: DatasetInfo,
    train_limit: int | None,
    test_limit: int | None,
    normalize: str | None = None,
) -> dict[str, Any]:
    """The ``config.json`` document of a new run.

    ``normalize``: ``dataset`` (default: subtract the dataset's mean, divide by its std),
    ``mean`` (subtract the mean only) or ``none`` (pixels in [0, 1], as Lelekas et al. feed MNIST).
    """
    spec = get_model_spec(model_name)
    overrides = dict(model_overrides)
    if "num_classes" not in overrides and info.num_classes != spec.num_classes:
        overrides["num_classes"] = info.num_classes
    model_config = resolve_model_config(model_name, **overrides)
    in_ch = int(model_config.get("in_channels", spec.input_shape[0]))
    target = tuple(int(v) for v in input_shape) if input_shape else (in_ch, *spec.input_shape[1:])
    if len(target) == 2:
        target = (in_ch, *target)
    adapter = input_adapter(info.input_shape, target)
    mean, std = adapter.normalization(info.mean, info.std)
    mode = normalize or "dataset"
    if mode not in NORMALIZE_MODES:
        raise RobustError(
            f"unknown normalization {mode!r}: give one of {', '.join(NORMALIZE_MODES)}"
        )
    if mode != "dataset":
        std = (1.0,) * len(std)
        mean = mean if mode == "mean" else (0.0,) * len(mean)
    return {
        "schema": CONFIG_SCHEMA,
        "schema_version": 1,
        "model": model_name,
        "backbone": spec.backbone,
        "model_config": model_config,
        "dataset": dataset,
        "dataset_info": info.to_dict(),
        "data_dir": str(Path(data_dir).expanduser().resolve()) if data_dir else None,
        "input": adapter.to_dict(),
        "normalization": {"mean": list(mean), "std": list(std), "mode": mode},
        "hyperparameters": resolve_hyperparameters(recipe, dataset, hp_overrides),
        "seed": int(seed),
        "train_limit": train_limit,
        "test_limit": test_limit,
    }


def resolve_hyperparameters(
    recipe: str, dataset: str, overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """The recipe's hyperparameters for ``dataset`` with the non-``None`` ``overrides``,
    checked, with the milestones turned into epochs (``milestone_epochs``)."""
    hp = get_recipe(recipe, dataset).to_dict()
    hp["recipe"] = hp.pop("name")  # the current name, also when an old alias was given
    for key, value in overrides.items():
        if value is not None:
            hp[key] = value
    if hp["augment"] is None:
        hp["augment"] = DEFAULT_AUGMENT.get(dataset, "none")
    if hp["augment"] not in AUGMENTS:
        raise RobustError(f"unknown augmentation {hp['augment']!r}: choose one of {AUGMENTS}")
    if hp["schedule"] not in SCHEDULES:
        raise RobustError(f"unknown schedule {hp['schedule']!r}: choose one of {SCHEDULES}")
    if hp["weight_decay_on"] not in ("all", "weights"):
        raise RobustError("weight_decay_on must be 'all' or 'weights'")
    for key in ("epochs", "batch_size"):
        if int(hp[key]) < 1:
            raise RobustError(f"--{key.replace('_', '-')} must be at least 1, got {hp[key]}")
    if float(hp["lr"]) <= 0:
        raise RobustError(f"--lr must be positive, got {hp['lr']}")
    hp["epochs"], hp["batch_size"] = int(hp["epochs"]), int(hp["batch_size"])
    hp["milestone_epochs"] = milestone_epochs(hp["milestones"], hp["epochs"])
    return hp


_RESUME_CHECKED = {
    "model": ("model",),
    "dataset": ("dataset",),
    "seed": ("seed",),
    "recipe": ("hyperparameters", "recipe"),
    "epochs": ("hyperparameters", "epochs"),
    "batch_size": ("hyperparameters", "batch_size"),
    "lr": ("hyperparameters", "lr"),
    "normalize": ("normalization", "mode"),
}


def check_resume_args(saved: Mapping[str, Any], requested: Mapping[str, Any]) -> None:
    """Refuse an option given with ``--resume`` that differs from the saved run's."""
    for key, value in requested.items():
        if value is None or key not in _RESUME_CHECKED:
            continue
        cur: Any = saved
        for part in _RESUME_CHECKED[key]:
            cur = cur.get(part) if isinstance(cur, Mapping) else None
        if key == "recipe" and isinstance(cur, str):
            # a run saved as paper-a resumes with -r ranabhat2025, and the other way round
            same = canonical_recipe(cur) == canonical_recipe(value)
        else:
            same = cur == value
        if cur is not None and not same:
            raise RobustError(
                f"--{key.replace('_', '-')} {value} differs from the run being resumed ({cur}): "
                "resume uses the run's own settings; drop the option or start a new --out"
            )


__all__ = [
    "DEFAULT_DATASET",
    "DEFAULT_SEED",
    "LR_RANGE",
    "NORMALIZE_MODES",
    "SEED_MAX",
    "EpochCallback",
    "TrainRequest",
    "check_numbers",
    "check_resume_args",
    "configure",
    "resolve_config",
    "resolve_hyperparameters",
]
