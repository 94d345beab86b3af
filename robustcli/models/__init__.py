"""Models: the registry (``create_model``, ``list_models``; model_zoo.yaml), the backbones, the
zoo table, and ``load_model(ref)``, the one way every command turns a model reference into a
``LoadedModel``.

- ``registry``: backbone builders and the zoo entries (names, configs, datasets, sources);
- ``zoo``: the table ``robust models`` prints (parameters, MACs);
- ``reference``: what a reference names (file, run folder, ``package.module:factory``, registry
  name with stored or random weights), decided without loading anything;
- ``loaded``: ``load_model`` and ``LoadedModel`` (``prepare()``, ``record()``);
- ``factory``, ``resnet_cifar``, ``densenet``, ``topdown_nets``: the networks.

Importing this package does not import torch (``robust --help`` stays fast).
"""

from robustcli.models.loaded import LoadedModel, load_model
from robustcli.models.reference import (
    ModelRef,
    checkpoint_home,
    resolve_reference,
    stored_checkpoint,
)
from robustcli.models.registry import create_model, get_model_spec, list_models

__all__ = [
    "LoadedModel",
    "ModelRef",
    "checkpoint_home",
    "create_model",
    "get_model_spec",
    "list_models",
    "load_model",
    "resolve_reference",
    "stored_checkpoint",
]
