"""`robust corrupt`: write a CIFAR-10-C style folder from clean test images."""

from __future__ import annotations

from pathlib import Path

import typer

from robustcli.cli import options as opt
from robustcli.cli._common import err_console, guarded
from robustcli.errors import RobustError

DEFAULT_DATASET = "cifar10"


@guarded
def corrupt_command(
    folder: Path | None = typer.Argument(
        None,
        help="Folder to write (<corruption>.npy, labels.npy); the same as --out.",
        show_default=False,
    ),
    dataset: str | None = opt.dataset_option(f"Default: {DEFAULT_DATASET}."),
    data_dir: Path | None = opt.data_dir_option(),
    corruptions: str = typer.Option(
        "all",
        "--corruptions",
        "-c",
        help="common, all, noise, blur, weather, digital, extra or names.",
    ),
    severities: str = typer.Option("1-5", "--severities", "-s", help="e.g. 1-5, 3 or 1,3,5."),
    n_examples: int | None = opt.n_examples_option(
        "The first N test images (evenly spaced if sorted by class); default: all."
    ),
    seed: int | None = opt.seed_option(),
    device: str = opt.device_option(
        "CPU and GPU draw other random numbers: eval-c --generate reproduces a folder on the "
        "same kind of device."
    ),
    out: Path | None = opt.out_option(
        "The folder (or give it as the argument); default: runs/corrupt-<dataset>-s<seed>."
    ),
    force: bool = opt.force_option("Writes into a non-empty folder."),
    progress: str = opt.progress_option("plain: a line per corruption, with the time left."),
    no_progress: bool = opt.no_progress_option(),
) -> None:
    """Write a CIFAR-10-C style folder from the clean test images (the make_cifar_c.py recipe).

    The layout is the official one (Zenodo 2535967): eval-c --cifar-c-dir OUT reads it, and
    eval-c --generate --seed S evaluates the same images without writing them (same device).

    Examples:

      robust corrupt runs/c10c-s0 --data-dir /data/cifar10

      robust corrupt -o runs/noise -c noise -s 3 -n 1000 --seed 1
    """
    if folder is not None and out is not None and folder != out:
        raise RobustError(f"two output folders ({folder} and --out {out}): give the folder once")
    dataset = dataset or DEFAULT_DATASET
    seed = opt.seed_or_default(seed)
    target = folder or out or Path("runs") / f"corrupt-{dataset}-s{seed}"

    from robustcli.corruptions import generate_dataset
    from robustcli.evaluate import (
        check_seed,
        clamp_note,
        load_clean,
        parse_severities,
        select_corruptions,
    )
    from robustcli.runtime import resolve_device

    names = select_corruptions(corruptions)
    sevs = parse_severities(severities)
    check_seed(seed)
    dev = resolve_device(device)
    images, labels, subset = load_clean(dataset, data_dir, n_examples, "the images to corrupt")
    note = clamp_note(n_examples, int(images.shape[0]), "test images")
    if note is not None:
        err_console.print(f"note: {note}", highlight=False, soft_wrap=True)
    path = generate_dataset(
        images,
        labels.numpy(),
        target,
        names,
        sevs,
        seed,
        opt.progress_mode(progress, no_progress),
        force=force,
        device=dev,
    )
    err_console.print(
        f"wrote {len(names)} corruptions x {len(sevs)} severities x {images.shape[0]} images "
        f"({subset}) to {path} (seed {seed})",
        highlight=False,
    )
