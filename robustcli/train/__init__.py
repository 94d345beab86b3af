"""Training: named recipes, one readable loop, run folders that survive Ctrl-C and kill -9.

``train(model_name, ...)`` is the public entry point (the CLI's ``robust train`` calls it). A run
folder gets ``model.safetensors`` (weights + everything to rebuild and evaluate the model),
``metrics.csv`` (one row per epoch), ``config.json`` (the resolved configuration),
``result.json`` and ``last.safetensors`` (model, optimiser and RNG state after the last finished
epoch, for ``resume=True``). Resuming a CPU run gives bit-for-bit the weights of an
uninterrupted one. docs/training.md describes it all.

Modules:

- :mod:`~robustcli.train.recipes`: ``Recipe``, ``RECIPES`` (``fast``, ``ranabhat2025``,
  ``strisciuglio``, ``topdown``; old names such as ``paper-a`` are aliases), the learning-rate
  schedules and their description in words.
- :mod:`~robustcli.train.config`: argument checks, the resolved ``config.json`` of a new run,
  the checks of options given with ``--resume``.
- :mod:`~robustcli.train.rundir`: the run folder: ``--force`` staging and swap, its lock,
  recovery after a kill, reading ``config.json``, ``metrics.csv``.
- :mod:`~robustcli.train.loop`: the epoch / step loop, evaluation, divergence checks, the
  per-epoch state and the final checkpoint.
- :mod:`~robustcli.train.report`: progress display, log lines, the checkpoint's training record
  and ``result.json``.
- :mod:`~robustcli.train.trainer`: ``train()`` and the named steps of a run.
"""

from __future__ import annotations

from robustcli.train.config import (
    DEFAULT_DATASET,
    DEFAULT_SEED,
    LR_RANGE,
    SEED_MAX,
    EpochCallback,
)
from robustcli.train.loop import TrainingDivergedError, evaluate_tensors
from robustcli.train.recipes import (
    DEFAULT_RECIPE,
    RECIPE_ALIASES,
    RECIPES,
    SCHEDULES,
    Recipe,
    canonical_recipe,
    describe_recipes,
    describe_schedule,
    get_recipe,
    learning_rate,
    milestone_epochs,
    recipe_names,
)
from robustcli.train.report import git_commit, versions
from robustcli.train.rundir import (
    CONFIG_SCHEMA,
    METRIC_COLUMNS,
    RUN_FILES,
    is_run_folder,
    read_run_config,
)
from robustcli.train.trainer import TrainResult, train

__all__ = [
    "CONFIG_SCHEMA",
    "DEFAULT_DATASET",
    "DEFAULT_RECIPE",
    "DEFAULT_SEED",
    "LR_RANGE",
    "METRIC_COLUMNS",
    "RECIPES",
    "RECIPE_ALIASES",
    "RUN_FILES",
    "SCHEDULES",
    "SEED_MAX",
    "EpochCallback",
    "Recipe",
    "TrainResult",
    "TrainingDivergedError",
    "canonical_recipe",
    "describe_recipes",
    "describe_schedule",
    "evaluate_tensors",
    "get_recipe",
    "git_commit",
    "is_run_folder",
    "learning_rate",
    "milestone_epochs",
    "read_run_config",
    "recipe_names",
    "train",
    "versions",
]
