"""Named training recipes and their learning-rate schedules.

A :class:`Recipe` is the optimiser, schedule and augmentation of a published (or our own)
training setup; ``RECIPES`` names them. Step milestones are fractions of the recipe's epochs,
so ``--epochs`` rescales them (:func:`milestone_epochs`); :func:`learning_rate` gives the rate of
every step and :func:`describe_schedule` says it in words for the log's first line.

- ``fast`` (default, ours): SGD + Nesterov 0.9, wd 5e-4, batch 256, peak lr 0.2, one-cycle
  (linear warm-up over 15% of the steps, linear decay to 0), label smoothing 0.1, crop + flip.
  10 epochs on CIFAR-10; on digits batch 64, lr 0.1, 10 epochs.
- ``ranabhat2025`` (alias ``paper-a``): the public code of Ranabhat et al. 2025: 120 epochs,
  batch 2048, lr 0.1, steps x0.1 at epochs 80 and 120, SGD momentum 0.9; Nesterov and wd 1e-4 as
  in the Strisciuglio code it derives from.
- ``strisciuglio``: batch 128, 160 epochs, lr 0.1, Nesterov 0.9, wd 1e-4, x0.1 at 80 and 120.
- ``topdown``: the code of Lelekas et al. 2020: batch 128, lr 0.1, Nesterov 0.9, x0.1 at 50% and
  80% of the epochs, no augmentation; CIFAR-10: 100 epochs with L2 5e-4 on conv / linear weights
  (a loss term, i.e. weight decay 1e-3 on those weights only); MNIST / Fashion-MNIST: 30 epochs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from robustcli.errors import RobustError

SCHEDULES = ("step", "cosine", "onecycle", "constant")
DEFAULT_RECIPE = "fast"


@dataclass(frozen=True)
class Recipe:
    """Optimiser, schedule and augmentation of a named training recipe.

    ``milestones`` are fractions of ``epochs`` (step schedule); ``warmup`` is a fraction of all
    steps (cosine / one-cycle). ``weight_decay_on`` is ``all`` (every parameter, as
    ``torch.optim.SGD``) or ``weights`` (conv and linear weights only, as a Keras L2 term).
    ``augment`` ``None`` means the dataset's default (``robustcli.data.DEFAULT_AUGMENT``).
    ``per_dataset`` overrides fields for one dataset.
    """

    name: str
    summary: str
    source: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    weight_decay_on: str = "all"
    schedule: str = "step"
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    warmup: float = 0.0
    label_smoothing: float = 0.0
    augment: str | None = None
    per_dataset: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def for_dataset(self, dataset: str) -> Recipe:
        """This recipe with the overrides of ``dataset`` applied."""
        over = dict(self.per_dataset.get(dataset, {}))
        return replace(self, **over) if over else self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("per_dataset")
        d["milestones"] = list(self.milestones)
        return d


_RECIPES = (
    Recipe(
        name="fast",
        summary="ours: one-cycle SGD, label smoothing; good accuracy in few epochs",
        source="robustcli (docs/training.md)",
        epochs=10,
        batch_size=256,
        lr=0.2,
        weight_decay=5e-4,
        schedule="onecycle",
        warmup=0.15,
        label_smoothing=0.1,
        per_dataset={
            "digits": {"batch_size": 64, "lr": 0.1},
            "mnist": {"epochs": 5},
            "fashion-mnist": {"epochs": 10},
        },
    ),
    Recipe(
        name="ranabhat2025",
        summary="Ranabhat et al. 2025 code: 120 epochs, batch 2048, lr 0.1 x0.1 at 80, 120",
        source="Ranabhat et al. 2025, first author's public fork",
        epochs=120,
        batch_size=2048,
        lr=0.1,
        weight_decay=1e-4,
        milestones=(80 / 120, 120 / 120),
        augment="crop+flip",
    ),
    Recipe(
        name="strisciuglio",
        summary="Strisciuglio et al. 2020: batch 128, 160 epochs, x0.1 at 80 and 120",
        source="github.com/nicstrisc/Push-Pull-CNN-layer",
        epochs=160,
        batch_size=128,
        lr=0.1,
        weight_decay=1e-4,
        milestones=(80 / 160, 120 / 160),
        augment="crop+flip",
    ),
    Recipe(
        name="topdown",
        summary="Lelekas et al. 2020 code: batch 128, lr 0.1, x0.1 at 50% and 80%, no augment",
        source="github.com/giannislelekas/topdown",
        epochs=100,
        batch_size=128,
        lr=0.1,
        weight_decay=1e-3,
        weight_decay_on="weights",
        milestones=(0.5, 0.8),
        augment="none",
        per_dataset={
            "mnist": {"epochs": 30, "weight_decay": 0.0},
            "fashion-mnist": {"epochs": 30, "weight_decay": 0.0},
            "digits": {"epochs": 30, "weight_decay": 0.0},
        },
    ),
)

#: Old recipe names that still work (for one release): old name -> current name.
RECIPE_ALIASES: dict[str, str] = {"paper-a": "ranabhat2025"}

#: Every accepted recipe name -> its recipe. The current names come first; each alias maps to
#: the same :class:`Recipe` (whose ``name`` is the current one), so code that checks a name with
#: ``name in RECIPES`` (e.g. a study file's ``recipe:``) keeps accepting the old names.
RECIPES: dict[str, Recipe] = {r.name: r for r in _RECIPES}
RECIPES.update({old: RECIPES[new] for old, new in RECIPE_ALIASES.items()})


def recipe_names() -> list[str]:
    """The current recipe names (without the old aliases), in the order they are listed."""
    return [name for name, r in RECIPES.items() if r.name == name]


def canonical_recipe(name: str) -> str:
    """The current name of recipe ``name`` (``paper-a`` -> ``ranabhat2025``); others unchanged."""
    return RECIPE_ALIASES.get(name, name)


def get_recipe(name: str, dataset: str | None = None) -> Recipe:
    """The recipe ``name`` or one of its old names (with ``dataset``'s overrides applied when
    given)."""
    if name not in RECIPES:
        raise RobustError(f"unknown recipe {name!r}: choose one of {', '.join(recipe_names())}")
    recipe = RECIPES[name]
    return recipe.for_dataset(dataset) if dataset else recipe


def describe_recipes() -> str:
    """One line per recipe: its name and summary (old names in brackets)."""
    labels = {}
    for name in recipe_names():
        old = [a for a, new in RECIPE_ALIASES.items() if new == name]
        labels[name] = f"{name} (was {', '.join(old)})" if old else name
    width = max(map(len, labels.values()))
    return "\n".join(f"{label:{width}s}  {RECIPES[n].summary}" for n, label in labels.items())


def milestone_epochs(milestones: Sequence[float], epochs: int) -> list[int]:
    """Epoch numbers (0-based start of the lowered lr) of fractional milestones.

    Each milestone is ``round(f * epochs)``; milestones inside the run (``f < 1``) stay distinct
    and inside it (a short run keeps one epoch per learning-rate stage rather than dropping the
    rate twice at once), e.g. ``(0.5, 0.8)`` at 3 epochs gives ``[1, 2]``. A run too short for
    the recipe's stages is refused.
    """
    ms = sorted(float(f) for f in milestones)
    out = [max(1, round(f * epochs)) for f in ms]
    inside = [i for i, f in enumerate(ms) if f < 1.0]
    if len(inside) >= epochs:
        raise RobustError(
            f"--epochs {epochs} is too short for the recipe's {len(inside)} learning-rate drops: "
            f"use --epochs {len(inside) + 1} or more, or a recipe without step drops (-r fast)"
        )
    upper = epochs - 1
    for i in reversed(inside):  # keep each inside drop below the next one and the run's end
        out[i] = min(out[i], upper)
        upper = out[i] - 1
    for k, i in enumerate(inside):  # and above the previous one
        out[i] = max(out[i], k + 1, (out[inside[k - 1]] + 1) if k else 1)
    return out


def learning_rate(hp: Mapping[str, Any], step: int, steps_per_epoch: int, epochs: int) -> float:
    """Learning rate at global ``step`` (0-based) for resolved hyperparameters ``hp``."""
    base = float(hp["lr"])
    total = max(1, steps_per_epoch * epochs)
    schedule = hp["schedule"]
    if schedule == "constant":
        return base
    if schedule == "step":
        epoch = step // steps_per_epoch
        drops = sum(epoch >= m for m in hp["milestone_epochs"])
        return base * float(hp["gamma"]) ** drops
    warm = round(float(hp["warmup"]) * total)
    if step < warm:
        return base * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "onecycle":
        return base * max(0.0, 1.0 - t)
    raise RobustError(f"unknown schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")


def describe_schedule(hp: Mapping[str, Any], steps_per_epoch: int | None = None) -> str:
    """The resolved learning-rate schedule in words, e.g. ``lr 0.1, x0.1 after epochs 6, 9``."""
    lr = f"lr {float(hp['lr']):g}"
    schedule = hp["schedule"]
    epochs = int(hp["epochs"])
    if schedule == "constant":
        return f"{lr} constant"
    if schedule == "step":
        return _describe_steps(lr, hp, epochs)
    total = steps_per_epoch * epochs if steps_per_epoch else None
    warm = float(hp.get("warmup", 0.0))
    if warm > 0:
        steps = f" ({round(warm * total)} steps)" if total else ""
        ramp = f"linear warm-up over {100 * warm:g}% of the steps{steps}, then "
    else:
        ramp = ""
    if schedule == "onecycle":
        return f"{lr} one-cycle: {ramp}linear decay to 0"
    if schedule == "cosine":
        return f"{lr} cosine: {ramp}cosine decay to 0"
    return f"{lr} {schedule}"


def _describe_steps(lr: str, hp: Mapping[str, Any], epochs: int) -> str:
    # milestone m lowers the lr from 0-based epoch m on: after m finished epochs
    inside = [int(m) for m in hp["milestone_epochs"] if int(m) < epochs]
    later = len(hp["milestone_epochs"]) - len(inside)
    if inside:
        plural = "s" if len(inside) > 1 else ""
        text = f"{lr}, x{float(hp['gamma']):g} after epoch{plural} "
        text += ", ".join(map(str, inside))
    else:
        text = f"{lr} constant"
    if later:
        text += f" ({later} later drop{'s' if later > 1 else ''} past the last epoch)"
    return text


__all__ = [
    "DEFAULT_RECIPE",
    "RECIPES",
    "RECIPE_ALIASES",
    "SCHEDULES",
    "Recipe",
    "canonical_recipe",
    "describe_recipes",
    "describe_schedule",
    "get_recipe",
    "learning_rate",
    "milestone_epochs",
    "recipe_names",
]
