"""The options several commands share, defined once: same name, short flag, default and help.

Each ``*_option(extra)`` returns a fresh ``typer.Option``; ``extra`` appends one sentence for
the command (what the default means there), so the shared text always comes first and a test
(tests/test_cli_options.py) can check every command against it. Nothing here imports torch,
pandas or Foolbox: ``robust --help`` must stay fast, so name lists in help texts are plain
strings (the same test checks them against the library's registries).
"""

from __future__ import annotations

from typing import Any

import typer

from robustcli.cli._common import in_range
from robustcli.errors import RobustError

# The output formats of every command that prints a result (robustcli.render.FORMATS).
FORMATS = ("table", "json", "csv", "markdown")
PROGRESS_MODES = ("auto", "rich", "plain", "none")
# Help-text name lists (checked against robustcli.data.dataset_names() by the tests).
DATASETS_HELP = "digits (embedded, offline), mnist, fashion-mnist, cifar10, imagefolder"
SEED_MAX = 2**63 - 1

# The shared help texts, exactly as every command shows them (before its own sentence).
HELP = {
    "device": "auto, cpu, cuda or cuda:N.",
    "data_dir": "Dataset folder: torchvision's files (cifar-10-batches-py, MNIST/raw) or an "
    "ImageFolder tree (train/<class>/, test/<class>/). Default: the cache (~/.cache/robustcli).",
    "dataset": f"{DATASETS_HELP} (with --data-dir).",
    "out": "Where the outputs go.",
    "force": "Overwrite outputs that exist (refused without it).",
    "seed": "Seed of everything drawn at random; 0 or more (default 0).",
    "batch_size": "Images per batch.",
    "n_examples": "How many test images to use.",
    "precision": "auto, fp32 or bf16.",
    "progress": "Progress on stderr: auto (a bar on a terminal, lines otherwise), rich (a bar), "
    "plain (lines) or none. --no-progress (no bars) is --progress plain.",
    "format": f"Output on stdout: {', '.join(FORMATS)}.",
    "json": "Same as --format json.",
    # the model reference every model-taking command reads (robustcli.models.reference)
    "model": "The model: a .safetensors checkpoint, a run folder (robust train --out), a "
    "registry name (`robust models`; its weights from --checkpoint-dir, random ones with "
    "--untrained) or package.module:factory (your own nn.Module; give --dataset).",
    "vs": "A model to compare with (any MODEL reference).",
    "untrained": "Build registry names with RANDOM weights, not their stored ones (smoke "
    "tests: the numbers say nothing about the architecture).",
    "checkpoint_dir": "Where registry names find their weights: <dir>/<name>/model.safetensors "
    "(default: $ROBUSTCLI_CHECKPOINTS, else ~/.cache/robustcli/checkpoints).",
}


def _help(key: str, extra: str) -> str:
    return f"{HELP[key]} {extra}".strip()


def model_argument(extra: str = "", required: bool = True) -> Any:
    """The positional MODEL of eval-c, attack and explain (``required=False`` where an option
    such as attack's ``--model`` may give it instead)."""
    return typer.Argument(
        ... if required else None, metavar="MODEL", help=_help("model", extra), show_default=False
    )


def vs_option(extra: str = "") -> Any:
    """``--vs MODEL``; repeatable when the parameter is a list."""
    return typer.Option(None, "--vs", metavar="MODEL", help=_help("vs", extra))


def untrained_option(extra: str = "") -> Any:
    return typer.Option(False, "--untrained", help=_help("untrained", extra))


def checkpoint_dir_option(extra: str = "") -> Any:
    return typer.Option(
        None,
        "--checkpoint-dir",
        envvar="ROBUSTCLI_CHECKPOINTS",
        help=_help("checkpoint_dir", extra),
        show_envvar=False,
    )


def device_option(extra: str = "") -> Any:
    return typer.Option("auto", "--device", help=_help("device", extra))


def data_dir_option(extra: str = "") -> Any:
    return typer.Option(None, "--data-dir", help=_help("data_dir", extra))


def dataset_option(extra: str = "") -> Any:
    return typer.Option(None, "--dataset", "-d", help=_help("dataset", extra))


def out_option(extra: str = "") -> Any:
    return typer.Option(None, "--out", "-o", help=_help("out", extra))


def force_option(extra: str = "") -> Any:
    return typer.Option(False, "--force", help=_help("force", extra))


def seed_option(extra: str = "") -> Any:
    # None, not 0: `train --resume` must tell "not given" from "0" (it checks the run's seed).
    return typer.Option(
        None, "--seed", help=_help("seed", extra), callback=in_range("--seed", 0, SEED_MAX)
    )


def batch_size_option(extra: str = "") -> Any:
    return typer.Option(
        None,
        "--batch-size",
        "-b",
        help=_help("batch_size", extra),
        callback=in_range("--batch-size", 1),
    )


def n_examples_option(extra: str = "") -> Any:
    return typer.Option(
        None,
        "--n-examples",
        "-n",
        help=_help("n_examples", extra),
        callback=in_range("--n-examples", 1),
    )


def precision_option(extra: str = "") -> Any:
    return typer.Option("auto", "--precision", help=_help("precision", extra))


def _check_progress(value: str) -> str:
    if value not in PROGRESS_MODES:
        raise typer.BadParameter(
            f"--progress {value!r} is not a mode: choose {', '.join(PROGRESS_MODES)}"
        )
    return value


def progress_option(extra: str = "") -> Any:
    return typer.Option(
        "auto", "--progress", help=_help("progress", extra), callback=_check_progress
    )


def no_progress_option() -> Any:
    """``--no-progress``, the old switch (hidden, kept working): no bars, which is ``plain`` (the
    commands that had it printed their per-step lines without bars, and still do)."""
    return typer.Option(False, "--no-progress", hidden=True, help="Same as --progress plain.")


def format_option(extra: str = "") -> Any:
    return typer.Option("table", "--format", "-f", help=_help("format", extra))


def json_option(extra: str = "") -> Any:
    return typer.Option(False, "--json", help=_help("json", extra))


def progress_mode(progress: str, no_progress: bool = False) -> str:
    """``rich``, ``plain`` or ``none``: ``auto`` is a bar when stderr is a terminal (where the
    bars go), lines otherwise; ``--no-progress`` is ``plain`` (no bars)."""
    if no_progress:
        return "plain" if progress in ("auto", "rich") else progress
    from robustcli.progress import resolve_mode

    return resolve_mode(progress)


def output_format(fmt: str, as_json: bool = False, choices: tuple[str, ...] = FORMATS) -> str:
    """The format asked for (``--json`` is ``--format json``), refused in one line before any
    work when it is not one of ``choices``."""
    if as_json:
        if fmt not in ("table", "json"):
            raise RobustError(f"--json and --format {fmt} disagree: give one of them")
        fmt = "json"
    if fmt not in choices:
        raise RobustError(f"unknown --format {fmt!r}: choose one of {', '.join(choices)}")
    return fmt


def seed_or_default(seed: int | None) -> int:
    return 0 if seed is None else seed


def fp32_only(precision: str, command: str, why: str) -> None:
    """For commands that compute in fp32 only: accept ``auto`` and ``fp32``, refuse the rest."""
    if precision not in ("auto", "fp32"):
        raise RobustError(
            f"robust {command} computes in fp32 ({why}): use --precision fp32 or auto, "
            f"not {precision!r}"
        )
