"""`robust eval-c`: accuracy of a checkpoint on CIFAR-10-C (official files or generated)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from robustcli.cli import app
from robustcli.cli._common import console, err_console, guarded, in_range
from robustcli.errors import RobustError
from robustcli.render import render


@app.command("eval-c")
@guarded
def eval_c_command(
    checkpoint: str = typer.Argument(
        ...,
        help="model.safetensors, its run folder (robust train --out), or a registered model name "
        "with a stored checkpoint (<checkpoint-dir>/<name>/model.safetensors).",
        show_default=False,
    ),
    cifar_c_dir: Path | None = typer.Option(
        None,
        "--cifar-c-dir",
        help="Folder of the official files (<corruption>.npy, labels.npy; CIFAR-10-C.tar from "
        "Zenodo 2535967, extracted), or one written by `robust corrupt`.",
    ),
    generate: bool = typer.Option(
        False, "--generate", help="Corrupt the clean test images on the fly (seeded by --seed)."
    ),
    seed: int = typer.Option(
        0,
        "--seed",
        help="Seed of --generate (same images as `corrupt`); 0 or more.",
        callback=in_range("--seed", 0),
    ),
    corruptions: str = typer.Option(
        "common",
        "--corruptions",
        "-c",
        help="common (15), all (19), noise, blur, weather, digital, extra, or names; "
        "comma-separated.",
    ),
    severities: str = typer.Option("1-5", "--severities", "-s", help="e.g. 1-5, 3 or 1,3,5."),
    n_examples: int | None = typer.Option(
        None,
        "--n-examples",
        "-n",
        help="First N test images per severity (default: all; more than there are: all).",
        callback=in_range("--n-examples", 1),
    ),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        "-b",
        help="Images per forward pass (default: 100 on CPU, 1000 on GPU).",
        callback=in_range("--batch-size", 1),
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    precision: str = typer.Option(
        "auto", "--precision", help="auto (bf16 autocast on GPUs, fp32 on CPUs), bf16 or fp32."
    ),
    data_dir: Path | None = typer.Option(
        None,
        "--data-dir",
        help="Clean test set: torchvision's cifar-10-batches-py (or its parent) or an ImageFolder "
        "tree (test/<class>/). Default: the cache (~/.cache/robustcli/cifar10).",
    ),
    data_label: str | None = typer.Option(
        None,
        "--data-label",
        help="How to name the clean data in the results, e.g. 'CIFAR-10 (JPEG mirror)'.",
    ),
    clean: bool = typer.Option(
        True, "--clean/--no-clean", help="Measure clean accuracy (needs the clean test set)."
    ),
    baseline: Path | None = typer.Option(
        None,
        "--baseline",
        help="An eval-c JSON of a reference model: adds corruption error (CE, mCE) and "
        "relative CE.",
    ),
    checkpoint_dir: Path | None = typer.Option(
        None,
        "--checkpoint-dir",
        envvar="ROBUSTCLI_CHECKPOINTS",
        help="Where registered names find their checkpoints "
        "(default: ~/.cache/robustcli/checkpoints).",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Write the result JSON here and RobustBench's unaggregated CSV beside it (.csv).",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite existing --out files."),
    fmt: str = typer.Option("table", "--format", "-f", help="Terminal output: table or markdown."),
    as_json: bool = typer.Option(False, "--json", help="Print the result JSON to stdout."),
    progress: bool | None = typer.Option(
        None,
        "--progress/--no-progress",
        help="Progress bar (default: on when stderr is a terminal).",
    ),
    fold: bool = typer.Option(
        True, "--fold/--no-fold", help="Fold push-pull and BatchNorm layers (exactly equal)."
    ),
) -> None:
    """Evaluate a checkpoint on CIFAR-10-C: accuracy per corruption and severity, group means,
    clean accuracy, CE / relative CE against a baseline result.

    Examples:

      robust eval-c runs/resnet20/model.safetensors --cifar-c-dir ~/data/CIFAR-10-C

      robust eval-c pp-resnet20 --generate -n 1000 -c noise,blur --out results/pp.json

      robust eval-c runs/pp --cifar-c-dir C10C -c all --baseline results/resnet20.json

      torchrun --nproc_per_node 4 --no-python robust eval-c ck --cifar-c-dir C10C -o r.json
    """
    from robustcli.evaluate import (
        check_outputs,
        clamp_note,
        corruption_table,
        run_eval_c,
        summary_table,
    )
    from robustcli.evaluate import write_eval_c as write

    if fmt not in ("table", "markdown"):
        raise RobustError(f"unknown --format {fmt!r}: choose table or markdown (or --json)")
    if out is not None:
        check_outputs(out, force)  # before any work
    doc = run_eval_c(
        checkpoint,
        cifar_c_dir=cifar_c_dir,
        generate=generate,
        seed=seed,
        corruptions=corruptions,
        severities=severities,
        n_examples=n_examples,
        batch_size=batch_size,
        device=device,
        precision=precision,
        data_dir=data_dir,
        data_label=data_label,
        clean=clean,
        baseline=baseline,
        checkpoint_dir=checkpoint_dir,
        fold=fold,
        progress=sys.stderr.isatty() if progress is None else progress,
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return
    note = clamp_note(n_examples, doc["n_examples"], "images per severity")
    if note is not None:
        err_console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    if out is not None:
        paths = write(doc, out, force)
        err_console.print(f"wrote {paths['json']} and {paths['csv']}", highlight=False)
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    prov = doc["provenance"]
    data = prov["corrupted_data"]
    where = f"generated, seed {data['seed']}" if data["source"] == "generated" else data["path"]
    title = (
        f"{doc['model']['name']} on CIFAR-10-C ({where}; n={doc['n_examples']}, "
        f"{prov['device']} {prov['precision']}, {prov['seconds']:.1f} s)"
    )
    for df, t in ((corruption_table(doc), title), (summary_table(doc), "summary (%)")):
        text = render(df, fmt, title=t, console=console)
        if text is not None:
            typer.echo(f"**{t}**\n\n{text}")


@app.command("corrupt")
@guarded
def corrupt_command(
    out: Path = typer.Argument(
        ..., help="Folder to write (<corruption>.npy, labels.npy).", show_default=False
    ),
    dataset: str = typer.Option(
        "cifar10", "--dataset", "-d", help="Dataset of the clean test images."
    ),
    data_dir: Path | None = typer.Option(
        None,
        "--data-dir",
        help="Clean test set: cifar-10-batches-py (or its parent) or an ImageFolder tree. "
        "Default: the cache (~/.cache/robustcli/cifar10).",
    ),
    corruptions: str = typer.Option(
        "all",
        "--corruptions",
        "-c",
        help="common, all, noise, blur, weather, digital, extra or names.",
    ),
    severities: str = typer.Option("1-5", "--severities", "-s", help="e.g. 1-5, 3 or 1,3,5."),
    n_examples: int | None = typer.Option(
        None,
        "--n-examples",
        "-n",
        help="First N test images (evenly spaced if sorted by class; more than there are: all).",
        callback=in_range("--n-examples", 1),
    ),
    seed: int = typer.Option(
        0,
        "--seed",
        help="Seed of the random corruptions; 0 or more.",
        callback=in_range("--seed", 0),
    ),
    device: str = typer.Option(
        "auto",
        "--device",
        help="auto, cpu, cuda or cuda:N (CPU and GPU draw other random numbers; eval-c "
        "--generate reproduces a folder on the same kind of device).",
    ),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty folder."),
    progress: bool | None = typer.Option(
        None,
        "--progress/--no-progress",
        help="Progress bar (default: on when stderr is a terminal).",
    ),
) -> None:
    """Write a CIFAR-10-C style folder from the clean test images (the make_cifar_c.py recipe).

    The layout is the official one (Zenodo 2535967): eval-c --cifar-c-dir OUT reads it, and
    eval-c --generate --seed S evaluates the same images without writing them (same device).

    Examples:

      robust corrupt data/c10c-s0 --data-dir /data/cifar10

      robust corrupt data/noise -c noise -s 3 -n 1000 --seed 1
    """
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
        err_console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    path = generate_dataset(
        images,
        labels.numpy(),
        out,
        names,
        sevs,
        seed,
        sys.stderr.isatty() if progress is None else progress,
        force=force,
        device=dev,
    )
    err_console.print(
        f"wrote {len(names)} corruptions x {len(sevs)} severities x {images.shape[0]} images "
        f"({subset}) to {path} (seed {seed})",
        highlight=False,
    )
