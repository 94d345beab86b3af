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

Modules: ``spec`` (constants, the ``Checkpoint`` type, safetensors readers), ``integrity``
(checksums and labels), ``validate`` (metadata, shape, finite-weight and probe checks),
``format`` (save / load / upgrade), ``imports`` (plain state dicts) and ``state`` (resume
state). Every public name is re-exported here: import from ``robustcli.checkpoint``.
"""

from __future__ import annotations

from robustcli.checkpoint.format import (
    load_checkpoint,
    model_state,
    save_checkpoint,
    upgrade_checkpoint,
)
from robustcli.checkpoint.imports import import_state_dict, match_state_dict, read_state_dict
from robustcli.checkpoint.integrity import checkpoint_digest, tensor_digest
from robustcli.checkpoint.spec import (
    FORMAT,
    FORMAT_VERSION,
    HASH_KEY,
    INTEGRITY,
    LEGACY_HASH_KEY,
    RESERVED,
    STATE_FORMAT,
    Checkpoint,
)
from robustcli.checkpoint.state import (
    load_training_state,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_training_state,
)
from robustcli.checkpoint.validate import (
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_PULL_SCALE,
    MAX_SIDE,
    check_finite,
    check_metadata,
    check_state_shapes,
    probe_outputs,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "HASH_KEY",
    "INTEGRITY",
    "LEGACY_HASH_KEY",
    "MAX_CHANNELS",
    "MAX_CLASSES",
    "MAX_PULL_SCALE",
    "MAX_SIDE",
    "RESERVED",
    "STATE_FORMAT",
    "Checkpoint",
    "check_finite",
    "check_metadata",
    "check_state_shapes",
    "checkpoint_digest",
    "import_state_dict",
    "load_checkpoint",
    "load_training_state",
    "match_state_dict",
    "model_state",
    "optimizer_from_tensors",
    "optimizer_to_tensors",
    "probe_outputs",
    "read_state_dict",
    "save_checkpoint",
    "save_training_state",
    "tensor_digest",
    "upgrade_checkpoint",
]
