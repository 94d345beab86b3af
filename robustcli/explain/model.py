"""The models ``robust explain`` explains: a checkpoint file or run folder, or (with
``untrained``) a registered model name built with random weights.

``load_explain_model`` returns an ``ExplainModel``: the ``nn.Module`` in eval mode plus what is
needed to feed it (input size, adapter, normalisation) and to record it (``record()``).
``model_inputs`` turns dataset images into the model's [0, 1] input; ``ExplainModel.normalise``
makes that the normalised input Grad-CAM takes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustcli.data import InputAdapter
from robustcli.errors import CheckpointError, RobustError
from robustcli.io import file_sha256


@dataclass
class ExplainModel:
    """A model ready for Grad-CAM with what is needed to feed it."""

    model: nn.Module
    name: str
    source: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_shape: tuple[int, int, int]
    dataset: str | None = None
    untrained: bool = False
    sha256: str | None = None
    adapter: InputAdapter | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    integrity: str | None = None  # Checkpoint.integrity; None for untrained models

    @property
    def label(self) -> str:
        return f"{self.name} (untrained)" if self.untrained else self.name

    def normalise(self, x01: torch.Tensor) -> torch.Tensor:
        """``x01`` (this model's input in [0, 1]) normalised with its mean and std."""
        from robustcli.data import normalize

        return normalize(x01, self.mean, self.std)

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "sha256": self.sha256,
            "untrained": self.untrained,
            "dataset": self.dataset,
            "input_shape": list(self.input_shape),
            "mean": list(self.mean),
            "std": list(self.std),
            "arrangement": getattr(self.model, "arrangement", None),
            "input_adapter": self.adapter.to_dict() if self.adapter is not None else None,
            "verified": self.integrity == "verified",
            "integrity": self.integrity,
        }


def _checkpoint_model(path: Path) -> ExplainModel:
    from robustcli.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    shape = tuple(int(v) for v in ckpt.input.target_shape)
    if min(shape[1:]) <= 0:  # older checkpoints without a recorded input size
        from robustcli.registry import get_model_spec

        try:
            shape = (shape[0], *get_model_spec(ckpt.name).input_shape[1:])
        except RobustError:
            raise CheckpointError(
                f"{path} records no input size and {ckpt.name!r} is not in the zoo: "
                "re-save it with `robust train`"
            ) from None
    source = Path(ckpt.path) if ckpt.path is not None else path
    return ExplainModel(
        model=ckpt.model.eval(),
        name=ckpt.name,
        source=str(source),
        mean=tuple(ckpt.mean),
        std=tuple(ckpt.std),
        input_shape=shape,  # type: ignore[arg-type]
        dataset=ckpt.dataset or None,
        sha256=file_sha256(source),
        adapter=ckpt.input if min(ckpt.input.target_shape[1:]) > 0 else None,
        meta=dict(ckpt.meta),
        integrity=ckpt.integrity,
    )


def load_explain_model(
    reference: str | os.PathLike[str], *, untrained: bool = False
) -> ExplainModel:
    """A checkpoint file (``robust train`` output); with ``untrained=True`` a registered model
    name is also accepted and built with random weights (for trying the command: its heatmaps
    mean nothing)."""
    from robustcli.registry import create_model, get_dataset_spec, get_model_spec, list_models

    ref = str(reference)
    path = Path(ref).expanduser()
    if path.is_file() or (path / "model.safetensors").is_file():  # a file or a run folder
        return _checkpoint_model(path)
    if untrained:
        spec = get_model_spec(ref)
        ds = get_dataset_spec(spec.dataset)
        model = create_model(ref).eval()
        return ExplainModel(
            model, ref, "untrained", ds.mean, ds.std, spec.input_shape, spec.dataset, True
        )
    if ref in list_models(ref):
        raise RobustError(
            f"{ref} is a model name, not a checkpoint: pass a checkpoint from `robust train`, "
            f"or add --untrained to explain an untrained {ref} (random weights)"
        )
    if path.is_dir():  # exists, so "does not exist" would mislead
        raise CheckpointError(
            f"{ref} is a folder without model.safetensors, not a run folder: pass a run folder "
            "or checkpoint from `robust train`"
        )
    raise CheckpointError(f"checkpoint {ref} does not exist: pass a file from `robust train`")


def model_inputs(em: ExplainModel, images: torch.Tensor) -> torch.Tensor:
    """Dataset images (uint8 ``N x C x H x W``) as ``em``'s input in [0, 1], adapted as in
    training (the checkpoint's recorded adapter when it fits these images), not normalised."""
    from robustcli.data import adapt_images, input_adapter

    adapter = em.adapter
    if adapter is None or tuple(adapter.source_shape) != tuple(images.shape[1:]):
        adapter = input_adapter(images.shape[1:], em.input_shape)
    x = adapt_images(images, adapter)
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
