"""What `robust attack` does, as library calls: load models and data, run, write.

``load_attack_model`` (any model reference, through ``robustcli.models.load_model``),
``load_attack_data`` (a dataset's test split, or the real test images that Foolbox ships),
``run_experiment`` (every model x branch x attack, the worst case, paper B's branch transfer)
and ``write_experiment`` (JSON, CSVs, figure).
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from robustcli.attacks.metrics import default_epsilons, samples_frame, summary_frame
from robustcli.attacks.registry import attack_params
from robustcli.attacks.results import (
    attack_document,
    check_outputs,
    output_paths,
    write_attack_outputs,
)
from robustcli.attacks.runner import (
    AttackOutcome,
    ProgressHook,
    branch_transfer,
    complete_attacks,
    run_attack,
    worst_case,
)
from robustcli.attacks.target import BRANCHES, AttackTarget
from robustcli.errors import DataError, RobustError
from robustcli.io import output_lock
from robustcli.models.loaded import LoadedModel

#: Foolbox's bundled sample sets (``foolbox/data/<set>_<index>_<label>.png``, 20 each: the first
#: 20 test images of each dataset) for the datasets of model_zoo.yaml.
FOOLBOX_SAMPLES = {"cifar10": "cifar10", "mnist": "mnist", "fashion-mnist": "fashionMNIST"}


#: the model type attacks work on: ``robustcli.models.LoadedModel`` (``provenance`` is its
#: ``record()``, ``topdown`` its TD contract); the old name is kept for callers
AttackModel = LoadedModel


def load_attack_model(
    model: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    untrained: bool = False,
    device: str | torch.device = "cpu",
    dataset: str | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """The model to attack (``robustcli.models.load_model``): ``checkpoint`` (a
    ``model.safetensors`` or its run folder; ``model``, if also given, must be the name it
    holds), else the reference ``model`` (a path, a registry name with stored weights, or
    ``package.module:factory`` with ``dataset``). A registry name without stored weights needs
    ``untrained=True``: attacking random weights measures nothing, so it is only a smoke test."""
    from robustcli.models import load_model

    if checkpoint is None and model is None:
        raise RobustError(
            "no model given: pass MODEL (a checkpoint, run folder, registry name or "
            "package.module:factory)"
        )
    ref = checkpoint if checkpoint is not None else model
    assert ref is not None
    lm = load_model(
        ref,
        untrained=untrained,
        dataset=dataset,
        checkpoint_dir=checkpoint_dir,
        device=device,
    )
    if checkpoint is not None and model is not None and model != lm.name:
        raise RobustError(
            f"{checkpoint} holds {lm.name!r}, not {model!r}: drop --model or pass a "
            f"checkpoint of {model}"
        )
    return lm


def foolbox_samples(dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The 20 real test images Foolbox ships for ``dataset`` (uint8 N x C x H x W, labels)."""
    import foolbox
    from PIL import Image

    if dataset not in FOOLBOX_SAMPLES:
        raise DataError(
            f"Foolbox ships no {dataset} images: pass --dataset and --data-dir "
            f"(built-in samples exist for {', '.join(FOOLBOX_SAMPLES)})"
        )
    folder = Path(foolbox.__file__).parent / "data"
    prefix = FOOLBOX_SAMPLES[dataset]
    files = sorted(
        folder.glob(f"{prefix}_*_*.png"), key=lambda p: int(p.stem[len(prefix) + 1 :].split("_")[0])
    )
    if not files:
        raise DataError(f"Foolbox's sample images are missing from {folder}: reinstall foolbox")
    images, labels = [], []
    for f in files:
        arr = np.asarray(Image.open(f))
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        images.append(torch.from_numpy(arr.copy()))
        labels.append(int(f.stem.split("_")[-1]))
    return torch.stack(images), torch.tensor(labels)


@dataclass
class AttackData:
    images: torch.Tensor  # float32 [0, 1], model input shape
    labels: torch.Tensor
    provenance: dict[str, Any]


def load_attack_data(
    model: AttackModel,
    *,
    dataset: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    n_examples: int | None = None,
    seed: int = 0,
) -> AttackData:
    """Test images for ``model`` in ``[0, 1]`` at its input shape.

    Without ``dataset``/``data_dir``: the real test images Foolbox ships for the model's dataset
    (20 each for CIFAR-10, MNIST, Fashion-MNIST; the embedded digits test split for digits
    models). ``n_examples`` draws that many at random (seeded, indices recorded) from the split.
    Images are adapted to the model's input as in its training (checkpoint's InputAdapter), so
    distances are measured in the model's input pixels.
    """
    from robustcli.data import input_adapter, load_dataset

    name = dataset or model.dataset
    if dataset is None and data_dir is None and name in FOOLBOX_SAMPLES:
        images, labels = foolbox_samples(name)
        source = f"foolbox sample images: the first {len(labels)} {name} test images"
    else:
        images, labels = load_dataset(name, "test", data_dir)
        source = f"{name} test split" + (f" from {data_dir}" if data_dir else "")
    total = len(labels)
    if n_examples is not None and n_examples < 1:
        raise DataError(f"--n-examples must be positive, got {n_examples}")
    if n_examples is not None and n_examples < total:
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(total, generator=gen)[:n_examples].sort().values
    else:
        idx = torch.arange(total)
    images, labels = images[idx], labels[idx]
    src_shape = tuple(int(v) for v in images.shape[1:])
    adapter = model.adapter
    if adapter is None or tuple(adapter.source_shape) != src_shape:
        adapter = input_adapter(src_shape, model.input_shape)
    x = adapter(images)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    note = None
    if n_examples is not None and n_examples > total:
        note = (
            f"-n {n_examples} is more than the {total} images of the {source}: clamped to n={total}"
        )
    return AttackData(
        images=x.clamp(0.0, 1.0).contiguous(),
        labels=labels.long(),
        provenance={
            "source": source,
            "dataset": name,
            "data_dir": str(data_dir) if data_dir else None,
            "split_size": total,
            "n_examples": len(idx),
            "n_requested": n_examples,
            "clamped": n_examples is not None and n_examples > total,
            "indices": idx.tolist(),
            "selection": "all" if len(idx) == total else f"random, seed {seed}",
            "input": adapter.to_dict(),
            "note": note,
        },
    )


@dataclass
class AttackRun:
    """Everything one `robust attack` produced."""

    outcomes: list[AttackOutcome]
    epsilons: list[float]
    document: dict[str, Any]
    transfer: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def summary(self) -> pd.DataFrame:
        return summary_frame(self.outcomes, self.epsilons)

    @property
    def samples(self) -> pd.DataFrame:
        return samples_frame(self.outcomes)


def run_experiment(
    models: Sequence[AttackModel],
    data: AttackData,
    attacks: Sequence[str],
    *,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    branches: Sequence[str] = ("all",),
    epsilons: Sequence[float] | None = None,
    repeats: int = 3,
    batch_size: int = 128,
    seed: int = 0,
    max_seconds: float | None = None,
    device: str | torch.device = "cpu",
    progress: ProgressHook | None = None,
    command: Sequence[str] | None = None,
    finished: Callable[[AttackOutcome], None] | None = None,
) -> AttackRun:
    """Attack every model (TD models through each of ``branches``; other models whole) with every
    attack; add the per-sample worst case over attacks and, for TD models attacked whole, paper
    B's branch transfer (Fig. 5). Returns the outcomes and the JSON document.

    The worst cases of all models and branches combine the same attacks: those that left no
    sample out on any of them (``complete_attacks``); a worst case without every attack is
    marked partial and names the attacks left out. ``finished(outcome)`` is called after each
    attack run (e.g. to log a line)."""
    params = params or {}
    for b in branches:
        if b not in BRANCHES:
            raise RobustError(f"unknown branch {b!r}: use one of {', '.join(BRANCHES)}")
    shapes = {m.input_shape for m in models}
    if len(shapes) > 1:
        raise RobustError(
            f"the models take different inputs ({', '.join(map(str, shapes))}): compare models "
            "of one input size, so that distances are measured in the same pixels"
        )
    eps = list(epsilons) if epsilons else default_epsilons(models[0].input_shape)
    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.perf_counter()
    targets, notes = _targets(models, branches, device)
    groups: list[tuple[AttackTarget, list[AttackOutcome]]] = []
    for target in targets:
        # adversarial images are kept only where the branch transfer needs them
        keep = target.topdown and target.branch == "all"
        group = []
        for a in attacks:
            o = run_attack(
                target,
                a,
                data.images,
                data.labels,
                params=params.get(a),
                repeats=repeats,
                batch_size=batch_size,
                seed=seed,
                max_seconds=max_seconds,
                progress=progress,
                keep_adversarials=keep,
            )
            group.append(o)
            if finished is not None:
                finished(o)
        groups.append((target, group))
    outcomes, transfer_rows, common = _combine(groups, data.images)
    seconds = time.perf_counter() - t0
    left_out = [a for a in attacks if a not in common]
    config = {
        "attacks": {a: attack_params(a, params.get(a)) for a in attacks},
        "repeats": repeats,
        "branches": list(branches),
        "batch_size": batch_size,
        "max_seconds": max_seconds,
        "worst_case": {"of": common, "left_out": left_out, "partial": bool(left_out)}
        if len(attacks) > 1
        else None,
        "notes": notes,
    }
    doc = attack_document(
        outcomes,
        epsilons=eps,
        models=[m.provenance | {"label": m.label} for m in models],
        data=data.provenance,
        config=config,
        seed=seed,
        device=str(device),
        started=started,
        seconds=seconds,
        branch_transfer={"rows": transfer_rows},
        command=command,
    )
    return AttackRun(outcomes, eps, doc, pd.DataFrame(transfer_rows))


def _targets(
    models: Sequence[AttackModel], branches: Sequence[str], device: str | torch.device
) -> tuple[list[AttackTarget], list[str]]:
    """What is attacked: each TD model through each of ``branches``, other models whole (with a
    note when branches were asked for); labels made unique (``#2``) where models share one."""
    targets: list[AttackTarget] = []
    notes: list[str] = []
    labels = [m.label for m in models]
    for i, m in enumerate(models):
        label = m.label if labels.count(m.label) == 1 else f"{m.label} #{i + 1}"
        own = [b for b in branches if m.topdown] or ["all"]
        if not m.topdown and any(b != "all" for b in branches):
            notes.append(f"{label} is not top-down: attacked on its single input (branch all)")
        for branch in own:
            target = AttackTarget(m.model, m.mean, m.std, m.name, branch, device)
            target.label = label if branch == "all" else f"{label} [{branch}]"
            targets.append(target)
    return targets, notes


def _combine(
    groups: list[tuple[AttackTarget, list[AttackOutcome]]], images: torch.Tensor
) -> tuple[list[AttackOutcome], list[dict[str, Any]], list[str]]:
    """Every target's outcomes plus its worst case over the attacks cut nowhere (one attack set
    for all worst cases), and the branch transfer rows of TD models attacked whole. Returns the
    outcomes (adversarial images dropped), the transfer rows and that attack set."""
    common = complete_attacks([g for _, g in groups])
    reasons: dict[str, str] = {}
    for _, g in groups:
        for o in g:
            if o.n_cut and o.attack not in reasons:
                reasons[o.attack] = f"{o.n_cut} of {int(o.clean_correct.sum())} cut on {o.label}"
    outcomes: list[AttackOutcome] = []
    transfer_rows: list[dict[str, Any]] = []
    for target, group in groups:
        if len(group) > 1:
            group.append(worst_case(group, include=common, reasons=reasons))
        if target.topdown and target.branch == "all":
            for o in group:
                accs = branch_transfer(target, o, images)
                if accs:
                    transfer_rows.append({"model": target.label, "attack": o.attack, **accs})
        for o in group:
            o.adversarials = None  # the document keeps distances, not images
        outcomes.extend(group)
    return outcomes, transfer_rows, common


def write_experiment(
    run: AttackRun,
    out_dir: str | os.PathLike[str],
    *,
    force: bool = False,
    title: str | None = None,
) -> dict[str, Path]:
    """Write the JSON, both CSVs and the figure (PNG + SVG) of ``run`` to ``out_dir``."""
    from robustcli.plots import plot_attack_curves, save_attack_figure

    with output_lock(out_dir):  # another process writing the same folder is refused
        check_outputs(out_dir, force)
        paths = write_attack_outputs(out_dir, run.document, run.summary, run.samples, force=force)
        fig = plot_attack_curves(run.outcomes, epsilons=run.epsilons, title=title)
        stem = output_paths(out_dir)["figure_png"].with_suffix("")
        figs = save_attack_figure(fig, stem, force=force)
    return {**paths, "figure_png": figs["png"], "figure_svg": figs["svg"]}
