"""The whole ``robust eval-c`` command as one call: ``run_eval_c(checkpoint, ...)`` checks the
arguments, resolves the checkpoint, builds the source (official files or generated), evaluates
it (``loop``) and returns the result document (``report``)."""

from __future__ import annotations

import datetime as _dt
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from robustcli.errors import DataError, RobustError
from robustcli.evaluate.loop import eval_precision, evaluate_corruptions
from robustcli.evaluate.metrics import Tally
from robustcli.evaluate.report import eval_c_document, read_result
from robustcli.evaluate.selection import (
    check_count,
    check_seed,
    parse_severities,
    select_corruptions,
)
from robustcli.evaluate.sources import (
    GeneratedSource,
    OfficialSource,
    clean_provenance,
    load_clean,
)
from robustcli.runtime import (
    environment,
    init_distributed,
    resolve_device,
    teardown_distributed,
)

Images = tuple[torch.Tensor, torch.Tensor]


def run_eval_c(
    checkpoint: str | os.PathLike[str],
    *,
    cifar_c_dir: str | os.PathLike[str] | None = None,
    generate: bool = False,
    seed: int = 0,
    corruptions: str | Sequence[str] = "common",
    severities: str | Sequence[int] = "1-5",
    n_examples: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    data_dir: str | os.PathLike[str] | None = None,
    data_label: str | None = None,
    clean: bool = True,
    baseline: str | os.PathLike[str] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    channels_last: bool | None = None,
    fold: bool = True,
    progress: bool | str = False,
    untrained: bool = False,
    dataset: str | None = None,
    per_image: bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint on CIFAR-10-C and return the result document (every rank of a
    ``torchrun`` job gets the same document; write it on rank 0 only).

    Exactly one of ``cifar_c_dir`` (official files) and ``generate`` (corrupt the clean test
    images on the fly, seeded by ``seed``) must be given. Clean accuracy uses the checkpoint's
    dataset test split from ``data_dir`` (``clean=False`` skips it; ``--generate`` needs it).
    ``checkpoint`` is any model reference (``robustcli.models.load_model``): ``dataset`` is
    the one of a ``package.module:factory`` model, ``untrained`` allows a bare registry name.
    ``per_image``: the document also records which images were right (``per_image``; see
    ``robustcli.evaluate.paired`` for paired comparisons of two models on the same images).
    ``progress``: ``rich`` (or ``True``) a bar, ``plain`` a line per corruption, ``none`` (or
    ``False``) nothing.

    Numbers and selections are checked first (``RobustError``, before any file is read):
    ``n_examples`` and ``batch_size`` >= 1, ``seed`` >= 0, severities in 1..5, known corruption
    names. An ``n_examples`` above the images available evaluates them all: the document's
    ``n_examples`` is the number evaluated, ``provenance.n_examples_requested`` the one asked for.
    """
    names, sevs = _check_arguments(
        cifar_c_dir, generate, n_examples, batch_size, seed, corruptions, severities
    )
    baseline_doc = read_result(baseline) if baseline is not None else None
    from robustcli.models import load_model, resolve_reference

    ref = resolve_reference(checkpoint, untrained=untrained, checkpoint_dir=checkpoint_dir)
    info = init_distributed(device)
    try:
        dev = resolve_device(device, info)
        ck = load_model(ref, dataset=dataset, data_dir=data_dir)
        prec = eval_precision(precision, dev, ck.model)
        data = _inputs(
            ck,
            cifar_c_dir=cifar_c_dir,
            corruptions=names,
            clean=clean,
            generate=generate,
            seed=seed,
            n_examples=n_examples,
            data_dir=data_dir,
            data_label=data_label,
            device=dev,
        )
        tally = evaluate_corruptions(
            ck.model,
            data.source,
            mean=ck.mean,
            std=ck.std,
            corruptions=names,
            severities=sevs,
            n_examples=None if generate else data.n_examples,
            clean=data.clean_data if clean else None,
            batch_size=batch_size,
            device=dev,
            precision=prec,
            channels_last=channels_last,
            fold=fold,
            adapter=data.adapter,
            info=info,
            progress=progress,
            per_image=per_image,
        )
    finally:
        teardown_distributed(info)
    model_info = ck.record()
    clean_info = data.clean_info if clean else None
    provenance = _provenance(tally, dev, prec, n_examples, data.source, clean_info)
    return eval_c_document(
        tally,
        model=model_info,
        provenance=provenance,
        baseline=baseline_doc,
        baseline_path=baseline,
    )


@dataclass
class _Inputs:
    """What the loop evaluates, with the clean images (``clean_data``, adapted to the model's
    input when they were corrupted after adapting) and the ``adapter`` still to apply."""

    source: OfficialSource | GeneratedSource
    n_examples: int | None  # the request, lowered to the images there are
    clean_data: Images | None
    clean_info: dict[str, Any] | None
    adapter: Any


def _inputs(
    ck: Any,
    *,
    cifar_c_dir: str | os.PathLike[str] | None,
    corruptions: Sequence[str],
    clean: bool,
    generate: bool,
    seed: int,
    n_examples: int | None,
    data_dir: str | os.PathLike[str] | None,
    data_label: str | None,
    device: torch.device,
) -> _Inputs:
    """The corrupted source (official files or generated) and the clean test images, the source
    checked against the model's input and classes."""
    official = OfficialSource(cifar_c_dir, corruptions) if cifar_c_dir is not None else None
    if official is not None:  # a mismatched model fails here, not on loading its clean set
        _check_compatible(ck, official)
    # -n above the images there are evaluates them all; the document records both numbers
    n = n_examples
    if official is not None and n is not None:
        n = min(n, official.n_available)
    clean_data: Images | None = None
    clean_info: dict[str, Any] | None = None
    if generate or clean:
        clean_data, clean_info = _clean_images(ck, data_dir, data_label, n, generate)
        if generate and n is not None:
            n = min(n, int(clean_data[0].shape[0]))
    adapter: Any = None if ck.input.identity else ck.input
    if official is not None:
        return _Inputs(official, n, clean_data, clean_info, adapter)
    assert clean_data is not None
    pre_adapted = False
    if _adapt_before_corrupting(clean_data, adapter):
        clean_data = (adapter(clean_data[0]), clean_data[1])
        clean_info = {**(clean_info or {}), "adapted_before_corrupting": adapter.to_dict()}
        adapter, pre_adapted = None, True
    source = GeneratedSource(
        clean_data[0], clean_data[1], seed=seed, device=device, clean_info=clean_info
    )
    _check_compatible(ck, source, shape_checked=not pre_adapted)  # pre-adapted: the model's shape
    return _Inputs(source, n, clean_data, clean_info, adapter)


def _check_arguments(
    cifar_c_dir: str | os.PathLike[str] | None,
    generate: bool,
    n_examples: int | None,
    batch_size: int | None,
    seed: int,
    corruptions: str | Sequence[str],
    severities: str | Sequence[int],
) -> tuple[list[str], list[int]]:
    """Every choice and number, checked before any file is read, so a typo costs nothing.
    Returns the corruption names and severities."""
    if (cifar_c_dir is None) == (not generate):
        raise RobustError(
            "choose the corrupted data: --cifar-c-dir DIR (the official files) or --generate"
        )
    check_count("--n-examples", n_examples)
    check_count("--batch-size", batch_size)
    check_seed(seed)
    return select_corruptions(corruptions), parse_severities(severities)


def _clean_images(
    ck: Any,
    data_dir: str | os.PathLike[str] | None,
    data_label: str | None,
    n_examples: int | None,
    generate: bool,
) -> tuple[Images, dict[str, Any]]:
    """The checkpoint's dataset test split (the first ``n_examples``) and its provenance."""
    dataset = ck.dataset or "cifar10"
    why = "needed for --generate" if generate else "for clean accuracy; --no-clean skips it"
    # an ImageFolder tree is labelled with the classes the model was trained on
    layout: dict[str, Any] = {}
    trained = ck.meta.get("classes")
    if (
        dataset == "imagefolder"
        and isinstance(trained, list)
        and trained
        and all(isinstance(c, str) for c in trained)
    ):
        layout = {"classes": trained, "channels": ck.input.source_shape[0]}
    images, labels, subset = load_clean(dataset, data_dir, n_examples, why, **layout)
    return (images, labels), clean_provenance(dataset, data_dir, data_label, subset)


def _adapt_before_corrupting(clean_data: Images, adapter: Any) -> bool:
    """Generated corruptions need RGB images: a model trained on a grey dataset through an RGB
    input adapter (digits 1x8x8 -> 3x32x32) is evaluated on its adapted test images, corrupted
    at the model's input size."""
    return adapter is not None and clean_data[0].shape[1] != 3 and adapter.target_shape[0] == 3


def _provenance(
    tally: Tally,
    device: torch.device,
    precision: str,
    requested_n: int | None,
    source: OfficialSource | GeneratedSource,
    clean_info: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The document's ``provenance``: when, how fast, on what, from which data."""
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(tally.seconds, 3),
        "images": tally.images,
        "images_per_second": round(tally.images / tally.seconds, 1) if tally.seconds else None,
        "device": str(device),
        "precision": precision,
        "n_examples": int(tally.total[0, 0]) if tally.total.size else 0,
        "n_examples_requested": requested_n,
        "corrupted_data": source.provenance(),
        "clean_data": clean_info,
        "inference": tally.report,
        "environment": environment(device),
        "command": " ".join(sys.argv),
    }


def _check_compatible(
    ck: Any, source: OfficialSource | GeneratedSource, shape_checked: bool = True
) -> None:
    """The corrupted images must fit the model's input adapter, the labels its classes."""
    src = tuple(ck.input.source_shape) if shape_checked else (0, 0, 0)
    if isinstance(source, OfficialSource):
        name = source.data.corruptions[0]
        shape = source.data.images(name, source.data.severities[0]).shape
        have = (int(shape[3]), int(shape[1]), int(shape[2]))
    else:
        have = tuple(int(v) for v in source.images.shape[1:])
    if src[1:] != (0, 0) and tuple(src) != have:
        raise DataError(
            f"{ck.name} takes {'x'.join(map(str, src))} dataset images ({ck.dataset}) but the "
            f"corrupted images are {'x'.join(map(str, have))}: evaluate a model trained on "
            "CIFAR-10 (or the matching dataset)"
        )
    num_classes = int(ck.config.get("num_classes", 10))
    if source.num_classes_needed() > num_classes:
        raise DataError(
            f"the labels go up to {source.num_classes_needed() - 1} but {ck.name} has "
            f"{num_classes} classes: use the model's dataset (CIFAR-100-C needs a 100-class model)"
        )
