"""The models ``robust explain`` explains: any model reference (``robustcli.models``).

``load_explain_model`` returns a ``LoadedModel`` (``ExplainModel`` is its old name): the
``nn.Module`` in eval mode plus what is needed to feed it (input size, adapter, normalisation)
and to record it (``record()``).
``model_inputs`` turns dataset images into the model's [0, 1] input; ``ExplainModel.normalise``
makes that the normalised input Grad-CAM takes.
"""

from __future__ import annotations

import os

import torch

from robustcli.models.loaded import LoadedModel

#: the model type explain works on: ``robustcli.models.LoadedModel``; the old name is kept
ExplainModel = LoadedModel


def load_explain_model(
    reference: str | os.PathLike[str],
    *,
    untrained: bool = False,
    dataset: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Any model reference (``robustcli.models.load_model``): a checkpoint file or run folder,
    a registry name with stored weights, or with ``untrained=True`` random ones (for trying the
    command: their heatmaps mean nothing), or ``package.module:factory`` with ``dataset``."""
    from robustcli.models import load_model

    return load_model(
        reference,
        untrained=untrained,
        dataset=dataset,
        data_dir=data_dir,
        checkpoint_dir=checkpoint_dir,
    )


def model_inputs(em: ExplainModel, images: torch.Tensor) -> torch.Tensor:
    """Dataset images (uint8 ``N x C x H x W``) as ``em``'s input in [0, 1], adapted as in
    training (the checkpoint's recorded adapter when it fits these images), not normalised."""
    from robustcli.data import adapt_images, input_adapter

    adapter = em.adapter
    if adapter is None or tuple(adapter.source_shape) != tuple(images.shape[1:]):
        adapter = input_adapter(images.shape[1:], em.input_shape)
    x = adapt_images(images, adapter)
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
