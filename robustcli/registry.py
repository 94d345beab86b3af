"""Moved to ``robustcli.models.registry`` (timm's layout); this module re-exports it for one
release so that ``from robustcli.registry import create_model`` keeps working.

It is the same module object's names, not copies: ``BACKBONES`` is the one registry, and
``register_backbone`` here registers there. Patch functions where they are looked up now
(``robustcli.models.registry``).
"""

from __future__ import annotations

from robustcli.models.registry import (  # noqa: F401 (re-exports)
    BACKBONES,
    Builder,
    DatasetSpec,
    ModelSpec,
    _load_unique,
    _load_zoo,
    _merge,
    _UniqueKeyLoader,
    build_from_config,
    closest_models,
    count_parameters,
    create_model,
    get_dataset_spec,
    get_model_spec,
    list_models,
    register_backbone,
    resolve_config,
    zoo_path,
)

__all__ = [
    "BACKBONES",
    "Builder",
    "DatasetSpec",
    "ModelSpec",
    "build_from_config",
    "closest_models",
    "count_parameters",
    "create_model",
    "get_dataset_spec",
    "get_model_spec",
    "list_models",
    "register_backbone",
    "resolve_config",
    "zoo_path",
]
