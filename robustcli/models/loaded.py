"""``load_model(ref)``: any model reference, loaded into one type, ``LoadedModel``.

``LoadedModel`` is what every command works on (it replaces the former ``AttackModel`` and
``ExplainModel``, which remain as aliases): the ``nn.Module`` plus how to feed it (input shape,
the checkpoint's input adapter, normalisation) and where it came from (``record()``, the
provenance that eval-c, attack and explain documents embed, with the checkpoint's
``verified`` / ``integrity``). ``prepare(device)`` puts it in eval mode on the device.

The three loaders behind ``load_model``: a checkpoint (``robustcli.checkpoint.load_checkpoint``,
all its checks), a registry name with random weights (seeded with 0), and a user's
``package.module:factory`` (imported, called, probed once on the dataset's input shape; recorded
as unverified user code with the SHA-256 of its source file).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustcli.errors import CheckpointError, RobustError
from robustcli.models.reference import ModelRef, resolve_reference

if TYPE_CHECKING:  # torch loads with the first model, not with `robust --help`
    import torch
    from torch import nn

    from robustcli.checkpoint import Checkpoint
    from robustcli.data import InputAdapter

#: ``record()["trained"]``: the checkpoint metadata that says how the weights were trained
TRAINED_KEYS = ("recipe", "epochs", "seed")
#: the seed of ``untrained=True`` weights (recorded as ``init_seed``)
INIT_SEED = 0


@dataclass
class LoadedModel:
    """A model ready to run, with what is needed to feed it and to record it.

    ``kind``: ``checkpoint``, ``untrained`` (registry name, random weights), ``user``
    (``package.module:factory``) or ``module`` (built in memory by the caller). ``adapter`` is
    the checkpoint's dataset -> model input adaptation when it records an input size.
    """

    model: nn.Module
    name: str
    source: str  # checkpoint path, "untrained", or the package.module:factory text
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_shape: tuple[int, int, int]
    dataset: str | None = None
    untrained: bool = False
    sha256: str | None = None
    adapter: InputAdapter | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    integrity: str | None = None  # Checkpoint.integrity; "unverified" for user code
    kind: str = "module"
    path: Path | None = None  # the checkpoint file
    backbone: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    checkpoint: Checkpoint | None = None  # what load_checkpoint returned, if anything
    user_code: dict[str, Any] | None = None  # module, factory, file, sha256

    @property
    def label(self) -> str:
        return f"{self.name} (untrained)" if self.untrained else self.name

    @property
    def slug(self) -> str:
        """``name`` safe in a folder name (``pkg.nets:build`` -> ``pkg.nets-build``)."""
        return re.sub(r"[^\w.-]+", "-", self.name).strip("-") or "model"

    @property
    def verified(self) -> bool:
        return self.integrity == "verified"

    @property
    def topdown(self) -> bool:
        """Paper B's TD contract (``pyramid`` and ``forward_scales``): attacked per branch."""
        return callable(getattr(self.model, "pyramid", None)) and callable(
            getattr(self.model, "forward_scales", None)
        )

    @property
    def input(self) -> InputAdapter:
        """The dataset -> model input adaptation: the checkpoint's as recorded (identity of
        unknown size for old checkpoints), else the identity at ``input_shape``."""
        if self.checkpoint is not None:
            return self.checkpoint.input
        if self.adapter is not None:
            return self.adapter
        from robustcli.data import InputAdapter

        return InputAdapter(self.input_shape, self.input_shape)

    @property
    def normalization(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @property
    def provenance(self) -> dict[str, Any]:
        """``record()`` (the name attack documents used)."""
        return self.record()

    def integrity_record(self) -> dict[str, Any]:
        return {"verified": self.verified, "integrity": self.integrity}

    def prepare(self, device: str | torch.device | None = None) -> LoadedModel:
        """Eval mode, on ``device`` (when given); returns ``self`` for chaining."""
        self.model.eval()
        if device is not None:
            self.model.to(device)
        return self

    def normalise(self, x01: torch.Tensor) -> torch.Tensor:
        """``x01`` (this model's input in [0, 1]) normalised with its mean and std."""
        from robustcli.data import normalize

        return normalize(x01, self.mean, self.std)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        """Dataset images (uint8 0..255 or float 0..1) -> normalised model input (float32):
        the input adaptation, then ``(x - mean) / std`` (``Checkpoint.prepare``)."""
        import torch

        x = self.input(x)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return self.normalise(x)

    def record(self) -> dict[str, Any]:
        """The provenance every result document embeds for this model. ``mean``, ``std``,
        ``input_adapter`` and ``arrangement`` are explain.json's names, kept for its readers."""
        rec: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "checkpoint": str(self.path.resolve()) if self.path is not None else None,
            "sha256": self.sha256,
            **self.integrity_record(),  # verified: false for legacy, unverified and user code
            "untrained": self.untrained,
            "dataset": self.dataset,
            "backbone": self.backbone,
            "config": self.config,
            "normalization": self.normalization,
            "input": self.input.to_dict(),
            "input_shape": list(self.input_shape),
            "trained": {k: self.meta[k] for k in TRAINED_KEYS if k in self.meta},
            "mean": list(self.mean),
            "std": list(self.std),
            "input_adapter": self.adapter.to_dict() if self.adapter is not None else None,
            "arrangement": getattr(self.model, "arrangement", None),
        }
        if self.untrained:
            rec["init_seed"] = INIT_SEED
        if self.user_code is not None:
            rec["user_code"] = dict(self.user_code)
        return rec


def load_model(
    ref: str | os.PathLike[str] | ModelRef,
    *,
    untrained: bool = False,
    dataset: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    check_outputs: bool = True,
    warn: bool = True,
) -> LoadedModel:
    """Load what ``ref`` names (``robustcli.models.reference``): a ``.safetensors`` checkpoint,
    a run folder, a registry name (its stored weights, or random ones with ``untrained``) or
    ``package.module:factory`` (``dataset`` gives its input shape, classes and normalisation).
    Returned in eval mode on ``device``. Every failure is one line (``RobustError``)."""
    r = resolve_reference(ref, untrained=untrained, checkpoint_dir=checkpoint_dir)
    if r.kind == "checkpoint":
        from robustcli.checkpoint import load_checkpoint

        assert r.path is not None
        ck = load_checkpoint(r.path, device=device, check_outputs=check_outputs, warn=warn)
        return from_checkpoint(ck, r.path).prepare(device)
    if r.kind == "registry":
        assert r.name is not None
        return untrained_model(r.name).prepare(device)
    return user_model(r, dataset, data_dir=data_dir).prepare(device)


def from_checkpoint(ck: Checkpoint, given: str | os.PathLike[str] | None = None) -> LoadedModel:
    """A ``LoadedModel`` of a loaded checkpoint (its file hashed for the record)."""
    from robustcli.io import file_sha256

    source = Path(ck.path) if ck.path is not None else Path(given or "")
    shape = tuple(int(v) for v in ck.input.target_shape)
    known = min(shape[1:]) > 0
    if not known:  # older checkpoints without a recorded input size: the zoo's
        from robustcli.models.registry import get_model_spec

        try:
            shape = (shape[0], *get_model_spec(ck.name).input_shape[1:])
        except RobustError:
            raise CheckpointError(
                f"{source} records no input size and {ck.name!r} is not in the zoo: "
                "re-save it with `robust train`"
            ) from None
    return LoadedModel(
        model=ck.model.eval(),
        name=ck.name,
        source=str(source),
        mean=tuple(ck.mean),
        std=tuple(ck.std),
        input_shape=shape,  # type: ignore[arg-type]
        dataset=ck.dataset or None,
        sha256=file_sha256(source),
        adapter=ck.input if known else None,
        meta=dict(ck.meta),
        integrity=ck.integrity,
        kind="checkpoint",
        path=source,
        backbone=ck.backbone,
        config=dict(ck.config),
        checkpoint=ck,
    )


def untrained_model(name: str) -> LoadedModel:
    """Registry model ``name`` with random weights (seeded with ``INIT_SEED``): for smoke tests,
    its numbers say nothing about the architecture."""
    import torch

    from robustcli.models.registry import (
        create_model,
        get_dataset_spec,
        get_model_spec,
        resolve_config,
    )

    spec = get_model_spec(name)
    ds = get_dataset_spec(spec.dataset)
    torch.manual_seed(INIT_SEED)
    net = create_model(name).eval()
    c = spec.input_shape[0]
    mean = ds.mean if len(ds.mean) == c else (ds.mean[0],) * c
    std = ds.std if len(ds.std) == c else (ds.std[0],) * c
    return LoadedModel(
        model=net,
        name=name,
        source="untrained",
        mean=tuple(mean),
        std=tuple(std),
        input_shape=tuple(spec.input_shape),  # type: ignore[arg-type]
        dataset=spec.dataset,
        untrained=True,
        sha256="untrained",
        kind="untrained",
        backbone=spec.backbone,
        config=resolve_config(name),
    )


# --------------------------------------------------------------------------------------------
# A user's own model: package.module:factory
# --------------------------------------------------------------------------------------------


def _one_line(exc: BaseException, limit: int = 120) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:limit]}" if lines else type(exc).__name__


def _import_factory(ref: ModelRef) -> tuple[Any, Any]:
    """``ref.module`` imported and ``ref.factory`` looked up in it. The current folder is
    searched too (after ``sys.path``): the ``robust`` script, unlike ``python -m``, does not
    put it on the path, and ``robust eval-c mypkg.nets:build`` is run from the project."""
    assert ref.module is not None and ref.factory is not None
    added = os.getcwd() not in sys.path and "" not in sys.path
    if added:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(ref.module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not _is_prefix(exc.name, ref.module):
            # the module exists but imports something missing: its own error, not ours
            raise RobustError(
                f"importing {ref.module} failed ({_one_line(exc)}): install what it needs"
            ) from None
        raise RobustError(
            f"cannot import {ref.module} for {ref.text} ({_one_line(exc)}): run from the folder "
            "that holds it or put that folder on PYTHONPATH"
        ) from None
    except Exception as exc:  # noqa: BLE001 (any error of the user's module is one line)
        raise RobustError(f"importing {ref.module} failed ({_one_line(exc)}): fix it") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    obj: Any = module
    for part in ref.factory.split("."):
        if not hasattr(obj, part):
            raise RobustError(
                f"{ref.module} has no {ref.factory!r}: name a callable that returns an nn.Module"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise RobustError(f"{ref.text} is a {type(obj).__name__}, not a callable: name a factory")
    return obj, module


def _is_prefix(name: str, module: str) -> bool:
    """``name`` is ``module`` or one of its parent packages (``a`` or ``a.b`` of ``a.b.c``)."""
    return module == name or module.startswith(name + ".")


def _factory_kwargs(factory: Any, num_classes: int, in_channels: int) -> dict[str, int]:
    """``num_classes`` / ``in_channels`` from the dataset, for the factories that take them."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    given = {"num_classes": num_classes, "in_channels": in_channels}
    return {k: v for k, v in given.items() if k in params}


def _source_record(module: Any, ref: ModelRef) -> dict[str, Any]:
    from robustcli.io import file_sha256

    try:
        file = inspect.getsourcefile(module)
    except TypeError:  # a built-in or namespace module
        file = None
    return {
        "module": ref.module,
        "factory": ref.factory,
        "file": str(Path(file).resolve()) if file else None,
        "sha256": file_sha256(file) if file and Path(file).is_file() else None,
    }


def user_model(
    ref: ModelRef, dataset: str | None, *, data_dir: str | os.PathLike[str] | None = None
) -> LoadedModel:
    """The network ``package.module:factory`` returns, fed ``dataset``'s images at its shape
    and normalisation; one probe forward must give ``1 x num_classes`` finite outputs."""
    from torch import nn

    if not dataset:
        raise RobustError(
            f"{ref.text} is a model of your own: give --dataset (its input shape, classes and "
            "normalisation), e.g. --dataset cifar10"
        )
    from robustcli.data import dataset_info

    info = dataset_info(dataset, data_dir)
    factory, module = _import_factory(ref)
    shape = tuple(int(v) for v in info.input_shape)
    try:
        net = factory(**_factory_kwargs(factory, info.num_classes, shape[0]))
    except Exception as exc:  # noqa: BLE001 (user code)
        raise RobustError(f"{ref.text}() failed ({_one_line(exc)}): fix the factory") from None
    if not isinstance(net, nn.Module):
        raise RobustError(
            f"{ref.text} returned a {type(net).__name__}, not a torch.nn.Module: return the network"
        )
    lm = LoadedModel(
        model=net.eval(),
        name=ref.text,
        source=ref.text,
        mean=tuple(info.mean),
        std=tuple(info.std),
        input_shape=shape,  # type: ignore[arg-type]
        dataset=info.name,
        integrity="unverified",  # code, not a checksummed file
        kind="user",
        backbone=ref.text,
        config={"num_classes": info.num_classes, "in_channels": shape[0]},
        user_code=_source_record(module, ref),
    )
    lm.sha256 = lm.user_code["sha256"] if lm.user_code else None
    _probe(lm, info.num_classes, info.name)
    return lm


def _probe(lm: LoadedModel, num_classes: int, dataset: str) -> None:
    """One forward on a random image of the dataset's shape: the network must take it and
    return ``1 x num_classes`` finite logits, or the command would fail later, less clearly."""
    import torch

    x = torch.rand((1, *lm.input_shape), generator=torch.Generator().manual_seed(0))
    where = " x ".join(map(str, lm.input_shape))
    try:
        with torch.no_grad():
            out = lm.model(lm.normalise(x))
    except Exception as exc:  # noqa: BLE001 (user code)
        raise RobustError(
            f"{lm.name} fails on a {where} {dataset} image ({_one_line(exc)}): build it for "
            "that input, or choose the --dataset it was made for"
        ) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise RobustError(
            f"{lm.name} returns {got} for one {dataset} image, not (1, {num_classes}) logits: "
            f"make it output one score per class of {dataset}"
        )
    if not bool(torch.isfinite(out.float()).all()):
        raise RobustError(f"{lm.name} outputs NaN or infinity on a {dataset} image")
