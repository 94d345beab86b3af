"""`robust train`: train a registry model and write a run folder."""

from __future__ import annotations

from pathlib import Path

import typer

from robustcli.cli import app
from robustcli.cli._common import err_console, guarded, in_range

RECIPE_HELP = "fast (ours, default) | paper-a | strisciuglio | topdown; see docs/training.md."


@app.command("train")
@guarded
def train_command(
    model: str = typer.Option(
        ..., "--model", "-m", help="Model name from model_zoo.yaml (`robust models` lists them)."
    ),
    dataset: str | None = typer.Option(
        None,
        "--dataset",
        "-d",
        help="digits (default: embedded, offline), cifar10, mnist, fashion-mnist, imagefolder.",
    ),
    data_dir: Path | None = typer.Option(
        None,
        "--data-dir",
        help="Folder with torchvision files (cifar-10-batches-py, MNIST/raw) or an ImageFolder "
        "tree (train/<class>/, test/<class>/). Default: the cache (~/.cache/robustcli), "
        "downloading when missing.",
    ),
    recipe: str | None = typer.Option(None, "--recipe", "-r", help=RECIPE_HELP),
    epochs: int | None = typer.Option(
        None, "--epochs", "-e", help="Override the recipe's.", callback=in_range("--epochs", 1)
    ),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        "-b",
        help="Global batch size (all processes); overrides the recipe.",
        callback=in_range("--batch-size", 1),
    ),
    lr: float | None = typer.Option(
        None,
        "--lr",
        help="Peak learning rate (0 < lr <= 10); overrides the recipe.",
        callback=in_range("--lr", 0, 10, low_open=True),
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Run folder. Default: runs/<model>-<dataset>-s<seed>. Refused if it exists, "
        "unless --resume or --force; locked while training.",
    ),
    seed: int | None = typer.Option(
        None,
        "--seed",
        help="Seed for init, order, augmentation [0].",
        callback=in_range("--seed", 0),  # the library caps it at 2**32 - 1
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    precision: str = typer.Option(
        "auto", "--precision", help="auto (bf16 where the hardware has it), bf16 or fp32."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out from its last finished epoch."
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Replace an existing run folder (only one robust train wrote); the old run stays "
        "until the new one's first checkpoint.",
    ),
    compile: bool = typer.Option(False, "--compile", help="Use torch.compile (slow first epoch)."),
    progress: str = typer.Option(
        "auto", "--progress", help="auto (bar on a terminal, lines otherwise), rich, plain, none."
    ),
) -> None:
    """Train a model; write model.safetensors, metrics.csv and config.json to a run folder.

    \b
    Examples:
      robust train --model resnet20          # embedded digits: offline, a few minutes
      robust train -m pp-resnet20 -d cifar10 --data-dir ~/data/cifar10
      robust train -m resnet20 -d cifar10 -r strisciuglio -o runs/r20
      robust train -m resnet20 -d cifar10 -r strisciuglio -o runs/r20 --resume
      torchrun --nproc_per_node 4 --no-python \\
          robust train -m mspp-resnet20 -d cifar10 -r paper-a

    The run folder gets model.safetensors (its metadata rebuilds and feeds the model:
    robustcli.checkpoint.load_checkpoint), metrics.csv, config.json and last.safetensors
    (for --resume: after Ctrl-C or a kill, a CPU run ends with the same weights as an
    uninterrupted one). Recipes and data are described in docs/training.md.
    """
    from robustcli.train import DEFAULT_DATASET, DEFAULT_SEED, train

    if out is None:
        out = (
            Path("runs")
            / f"{model}-{dataset or DEFAULT_DATASET}-s{DEFAULT_SEED if seed is None else seed}"
        )
    try:
        train(
            model,
            dataset=dataset,
            data_dir=data_dir,
            recipe=recipe,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            out=out,
            seed=seed,
            device=device,
            resume=resume,
            force=force,
            compile=compile,
            precision=precision,
            progress=progress,
        )
    except KeyboardInterrupt:
        # train() already printed how to resume; exit like an interrupted shell command
        err_console.print("[yellow]interrupted[/]")
        raise typer.Exit(code=130) from None
