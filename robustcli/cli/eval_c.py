"""`robust eval-c`: accuracy of a model on CIFAR-10-C (official files or generated)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from robustcli.cli import options as opt
from robustcli.cli._common import console, err_console, guarded
from robustcli.errors import RobustError

if TYPE_CHECKING:
    from robustcli.models import ModelRef


@guarded
def eval_c_command(
    model: str = opt.model_argument(),
    cifar_c_dir: Path | None = typer.Option(
        None,
        "--cifar-c-dir",
        help="Folder of the official files (<corruption>.npy, labels.npy; CIFAR-10-C.tar from "
        "Zenodo 2535967, extracted), or one written by `robust corrupt`.",
    ),
    generate: bool = typer.Option(
        False, "--generate", help="Corrupt the clean test images on the fly (seeded by --seed)."
    ),
    seed: int | None = opt.seed_option("Seeds --generate (the same images as `corrupt`)."),
    corruptions: str = typer.Option(
        "common",
        "--corruptions",
        "-c",
        help="common (15), all (19), noise, blur, weather, digital, extra, or names; "
        "comma-separated.",
    ),
    severities: str = typer.Option("1-5", "--severities", "-s", help="e.g. 1-5, 3 or 1,3,5."),
    n_examples: int | None = opt.n_examples_option(
        "The first N per severity; default: all (more than there are: all)."
    ),
    batch_size: int | None = opt.batch_size_option("Default: 100 on CPU, 1000 on GPU."),
    device: str = opt.device_option(),
    precision: str = opt.precision_option(
        "auto: bf16 autocast on GPUs; on CPUs with native bf16, bf16-checked (bf16, near "
        "ties predicted again in fp32; fp32 for push-pull kernel models), else fp32. "
        "fp32 is exact."
    ),
    data_dir: Path | None = opt.data_dir_option(
        "eval-c reads the clean CIFAR-10 test set (cifar-10-batches-py or test/<class>/)."
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
    dataset: str | None = opt.dataset_option(
        "eval-c: only for a package.module:factory model (others know their dataset)."
    ),
    untrained: bool = opt.untrained_option(),
    checkpoint_dir: Path | None = opt.checkpoint_dir_option(),
    out: Path | None = opt.out_option(
        "eval-c: the result JSON, with RobustBench's unaggregated CSV beside it (.csv); "
        "default: none (print only)."
    ),
    force: bool = opt.force_option(),
    fmt: str = opt.format_option(
        "json: the result document; csv: RobustBench's unaggregated CSV (what --out writes)."
    ),
    as_json: bool = opt.json_option(),
    progress: str = opt.progress_option("plain: a line per corruption, with the time left."),
    no_progress: bool = opt.no_progress_option(),
    fold: bool = typer.Option(
        True, "--fold/--no-fold", help="Fold push-pull and BatchNorm layers (exactly equal)."
    ),
    per_image: bool = typer.Option(
        False,
        "--per-image",
        help="Also record which images were classified correctly (a bit per image and cell, "
        "in the JSON): `robust compare --paired` then gives bootstrap intervals over images.",
    ),
) -> None:
    """Evaluate a model on CIFAR-10-C: accuracy per corruption, severity and group; CE.

    Also the clean accuracy, and CE / relative CE against a baseline result (--baseline).

    Examples:

      robust eval-c runs/resnet20/model.safetensors --cifar-c-dir ~/data/CIFAR-10-C

      robust eval-c mypkg.nets:build --dataset cifar10 --generate -n 200

      robust eval-c pp-resnet20 --generate -n 1000 -c noise,blur --out runs/pp-eval-c.json

      robust eval-c runs/pp --cifar-c-dir C10C -c all --baseline runs/resnet20-eval-c.json

      torchrun --nproc_per_node 4 --no-python robust eval-c ck --cifar-c-dir C10C -o r.json
    """
    fmt = opt.output_format(fmt, as_json)  # before any work
    ref = _resolve(model, dataset, untrained, checkpoint_dir)  # before torch loads
    from robustcli.evaluate import check_outputs, run_eval_c

    if out is not None:
        check_outputs(out, force)  # before any work
    doc = run_eval_c(
        ref,  # type: ignore[arg-type]
        cifar_c_dir=cifar_c_dir,
        generate=generate,
        seed=opt.seed_or_default(seed),
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
        untrained=untrained,
        dataset=dataset,
        fold=fold,
        progress=opt.progress_mode(progress, no_progress),
        per_image=per_image,
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return
    _report(doc, fmt, out, force, n_examples)


def _resolve(
    model: str, dataset: str | None, untrained: bool, checkpoint_dir: Path | None
) -> ModelRef:
    """What MODEL names (nothing loaded). --dataset names the data of a model of your own;
    the others are evaluated on the dataset they were trained on."""
    from robustcli.models import resolve_reference

    ref = resolve_reference(model, untrained=untrained, checkpoint_dir=checkpoint_dir)
    if dataset is not None and ref.kind != "user":
        raise RobustError(
            f"--dataset is for package.module:factory models: {model} is evaluated on the "
            "dataset it was trained on; drop --dataset"
        )
    return ref


def _report(doc: dict, fmt: str, out: Path | None, force: bool, n_examples: int | None) -> None:
    """Rank 0 after the work: the note, the files, then stdout in ``fmt``."""
    from robustcli.evaluate import (
        clamp_note,
        corruption_table,
        summary_table,
        unaggregated_frame,
        write_eval_c,
    )
    from robustcli.render import render

    note = clamp_note(n_examples, doc["n_examples"], "images per severity")
    if note is not None:
        err_console.print(f"note: {note}", highlight=False, soft_wrap=True)
    if out is not None:
        paths = write_eval_c(doc, out, force)
        err_console.print(f"wrote {paths['json']} and {paths['csv']}", highlight=False)
    if fmt == "json":
        typer.echo(json.dumps(doc, indent=2))
        return
    if fmt == "csv":
        typer.echo(unaggregated_frame(doc).to_csv(), nl=False)
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
