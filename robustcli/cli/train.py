"""`robust train`: train a registry model and write a run folder."""

from __future__ import annotations

from pathlib import Path

import typer

from robustcli.cli import options as opt
from robustcli.cli._common import guarded, in_range

# a literal, not robustcli.train.RECIPES: importing that loads torch before --help is parsed
RECIPE_HELP = (
    "fast (ours, default) | ranabhat2025 (Ranabhat et al. 2025; old name paper-a) | "
    "strisciuglio (Strisciuglio et al. 2020) | topdown (Lelekas et al. 2020); "
    "see docs/training.md."
)


@guarded
def train_command(
    model: str = typer.Option(
        ..., "--model", "-m", help="Model name from model_zoo.yaml (`robust models` lists them)."
    ),
    dataset: str | None = opt.dataset_option("Default: digits."),
    data_dir: Path | None = opt.data_dir_option("Missing torchvision files are downloaded."),
    recipe: str | None = typer.Option(None, "--recipe", "-r", help=RECIPE_HELP),
    epochs: int | None = typer.Option(
        None, "--epochs", "-e", help="Override the recipe's.", callback=in_range("--epochs", 1)
    ),
    batch_size: int | None = opt.batch_size_option(
        "The global batch (all processes); default: the recipe's."
    ),
    lr: float | None = typer.Option(
        None,
        "--lr",
        help="Peak learning rate (0 < lr <= 10); overrides the recipe.",
        callback=in_range("--lr", 0, 10, low_open=True),
    ),
    out: Path | None = opt.out_option(
        "The run folder; default: runs/<model>-<dataset>-s<seed>. Refused if it exists, "
        "unless --resume or --force; locked while training."
    ),
    seed: int | None = opt.seed_option("Seeds init, data order and augmentation."),
    device: str = opt.device_option(),
    precision: str = opt.precision_option(
        "auto: bf16 where the hardware computes it natively (GPUs, recent CPUs), else fp32."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out from its last finished epoch."
    ),
    force: bool = opt.force_option(
        "Replaces a run folder only robust train wrote; the old run stays until the new "
        "one's first checkpoint."
    ),
    compile: bool = typer.Option(False, "--compile", help="Use torch.compile (slow first epoch)."),
    normalize: str | None = typer.Option(
        None,
        "--normalize",
        help="Input normalisation stored with the model: dataset (default: the dataset's mean "
        "and std), mean (subtract the mean only) or none (pixels in [0, 1], as Lelekas et al. "
        "2020 feed MNIST).",
    ),
    progress: str = opt.progress_option(),
) -> None:
    """Train a model; write model.safetensors, metrics.csv and config.json to a run folder.

    \b
    Examples:
      robust train --model resnet20          # embedded digits: offline, a few minutes
      robust train -m pp-resnet20 -d cifar10 --data-dir ~/data/cifar10
      robust train -m resnet20 -d cifar10 -r strisciuglio -o runs/r20
      robust train -m resnet20 -d cifar10 -r strisciuglio -o runs/r20 --resume
      torchrun --nproc_per_node 4 --no-python \\
          robust train -m mspp-resnet20 -d cifar10 -r ranabhat2025

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
        normalize=normalize,
        progress=progress,  # the library resolves auto (train/ owns its reporters)
    )
