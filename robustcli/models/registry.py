"""The model registry, read from ``model_zoo.yaml`` (``robustcli.registry`` re-exports it).

``create_model(name, **overrides)`` and ``list_models(pattern)`` are the public surface (as in
timm); ``get_model_spec(name)`` returns the zoo entry (config, dataset, source, expected
parameter count). Backbone builders are registered in ``BACKBONES`` by name.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from robustcli.errors import ModelNotFoundError, RobustError

if TYPE_CHECKING:  # torch loads when a model is built, not when names are listed
    from torch import nn

Builder = Callable[..., "nn.Module"]
BACKBONES: dict[str, Builder] = {}


def register_backbone(name: str) -> Callable[[Builder], Builder]:
    """Register a builder under ``name``; a name already taken is refused (as torchvision
    does), so a plug-in cannot silently replace a backbone."""

    def deco(fn: Builder) -> Builder:
        if name in BACKBONES:
            raise RobustError(
                f"backbone {name!r} is already registered ({BACKBONES[name].__module__}."
                f"{BACKBONES[name].__qualname__}): choose another name"
            )
        BACKBONES[name] = fn
        return fn

    return deco


@register_backbone("resnet20")
def _resnet20(
    num_classes: int = 10,
    in_channels: int = 3,
    activation: str = "relu",
    pp: Mapping[str, Any] | None = None,
) -> nn.Module:
    from robustcli.models.factory import activation_factory, conv_factory
    from robustcli.models.resnet_cifar import CifarResNet

    return CifarResNet(
        20, num_classes, in_channels, conv=conv_factory(pp), act=activation_factory(activation)
    )


@register_backbone("densenet40")
def _densenet40(
    num_classes: int = 10,
    in_channels: int = 3,
    activation: str = "relu",
    pp: Mapping[str, Any] | None = None,
) -> nn.Module:
    from robustcli.models.densenet import DenseNetBC
    from robustcli.models.factory import activation_factory, conv_factory

    return DenseNetBC(
        40,
        12,
        num_classes=num_classes,
        in_channels=in_channels,
        conv=conv_factory(pp),
        act=activation_factory(activation),
    )


def _paper_b(backbone: str) -> Builder:
    def build(
        arrangement: str = "bu",
        num_classes: int = 10,
        in_channels: int = 1,
        activation: str = "relu",
        pyramid_method: str = "gaussian",
    ) -> nn.Module:
        from robustcli.models.topdown_nets import build_paper_b_net

        return build_paper_b_net(
            backbone,
            arrangement,
            in_channels,
            num_classes,
            activation,
            pyramid_method=pyramid_method,
        )

    return build


for _name in ("lenetfc", "nin_light", "nin", "resnet32"):
    register_backbone(_name)(_paper_b(_name))


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class ModelSpec:
    """One entry of model_zoo.yaml."""

    name: str
    family: str
    backbone: str
    dataset: str
    config: dict[str, Any]
    source: dict[str, str]
    params: int
    params_source: str = "paper"
    input_shape: tuple[int, int, int] = (3, 32, 32)
    num_classes: int = 10
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "backbone": self.backbone,
            "dataset": self.dataset,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "config": copy.deepcopy(self.config),
            "source": dict(self.source),
            "params": self.params,
            "params_source": self.params_source,
        }


def zoo_path() -> Path:
    """model_zoo.yaml: inside the installed package, else at the top of the source tree."""
    packaged = resources.files("robustcli").joinpath("model_zoo.yaml")
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "model_zoo.yaml"


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last one
    silently: a second entry of a model would replace the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise RobustError(
                    f"{getattr(self, 'source_name', 'YAML')}: {key!r} is given twice "
                    f"(line {key_node.start_mark.line + 1}): give each name once"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_unique(text: str, source_name: str) -> Any:
    loader = _UniqueKeyLoader(text)
    loader.source_name = source_name  # type: ignore[attr-defined]
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


@functools.lru_cache(maxsize=1)
def _load_zoo() -> tuple[dict[str, DatasetSpec], dict[str, ModelSpec]]:
    path = zoo_path()
    try:
        raw = _load_unique(path.read_text(), str(path))
    except FileNotFoundError:
        raise RobustError(f"model zoo not found at {path}: reinstall robustcli") from None
    datasets = {
        name: DatasetSpec(
            name,
            tuple(d["input_shape"]),
            int(d["num_classes"]),
            tuple(float(v) for v in d["mean"]),
            tuple(float(v) for v in d["std"]),
        )
        for name, d in raw["datasets"].items()
    }
    models = {}
    for name, m in (raw.get("models") or {}).items():
        ds = datasets[m["dataset"]]
        models[name] = ModelSpec(
            name=name,
            family=m["family"],
            backbone=m["backbone"],
            dataset=m["dataset"],
            config=dict(m.get("config") or {}),
            source=dict(m.get("source") or {}),
            params=int(m["params"]),
            params_source=m.get("params_source", "paper"),
            input_shape=tuple(m.get("input_shape", ds.input_shape)),
            num_classes=int(m.get("num_classes", ds.num_classes)),
        )
    return datasets, models


def list_models(pattern: str = "*") -> list[str]:
    """Names of registered models matching a shell-style ``pattern`` (e.g. ``"*resnet20"``)."""
    _, models = _load_zoo()
    if not any(ch in pattern for ch in "*?["):
        pattern = f"*{pattern}*"
    return sorted(n for n in models if fnmatch.fnmatchcase(n, pattern))


def closest_models(name: str, n: int = 3) -> list[str]:
    _, models = _load_zoo()
    return difflib.get_close_matches(name, list(models), n=n, cutoff=0.4)


def get_model_spec(name: str) -> ModelSpec:
    _, models = _load_zoo()
    if name not in models:
        hint = closest_models(name)
        did = f"did you mean {', '.join(hint)}? " if hint else ""
        raise ModelNotFoundError(
            f"unknown model {name!r}: {did}`robust models` lists all {len(models)} models"
        )
    return models[name]


def get_dataset_spec(name: str) -> DatasetSpec:
    datasets, _ = _load_zoo()
    if name not in datasets:
        raise RobustError(f"unknown dataset {name!r}: choose one of {', '.join(sorted(datasets))}")
    return datasets[name]


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The builder keyword arguments of ``name`` with ``overrides`` merged in (dicts deeply)."""
    spec = get_model_spec(name)
    config = {"num_classes": spec.num_classes, "in_channels": spec.input_shape[0]}
    config.update(copy.deepcopy(spec.config))
    return _merge(config, overrides)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build the model ``name`` from model_zoo.yaml; ``overrides`` change its config.

    >>> model = create_model("mspp-resnet20", pp={"scales": [2, 3, 4]})
    """
    spec = get_model_spec(name)
    config = resolve_config(name, **overrides)
    return build_from_config(spec.backbone, config)


def build_from_config(backbone: str, config: Mapping[str, Any]) -> nn.Module:
    """Build a backbone from a full config (as stored in checkpoints)."""
    if backbone not in BACKBONES:
        raise RobustError(
            f"unknown backbone {backbone!r}: this robustcli knows {sorted(BACKBONES)}"
        )
    try:
        return BACKBONES[backbone](**config)
    except (TypeError, ValueError) as exc:
        raise RobustError(f"invalid config for backbone {backbone!r}: {exc}") from None


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
