"""`robust explain`: Grad-CAM heatmaps and paper B's weakly supervised localization."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.text import Text

from robustcli.cli import options as opt
from robustcli.cli._common import console, err_console, guarded, in_range
from robustcli.errors import RobustError
from robustcli.render import styled

if TYPE_CHECKING:
    import pandas as pd

    from robustcli.models import ModelRef

DEFAULT_IMAGES = 8
DEFAULT_BATCH = 256


def _int_list(text: str | None, option: str) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise RobustError(f"{option} takes comma-separated integers, e.g. 0,5,17") from None


_METRICS = {
    "layer": "layer",
    "images": "images",
    "precision": "precision (mean)",
    "precision_std": "precision (std)",
    "recall": "recall (mean)",
    "recall_std": "recall (std)",
    "pooled_precision": "pooled precision",
    "pooled_recall": "pooled recall",
    "empty_heatmaps": "empty heatmaps",
    "excluded_empty_object": "no object (excluded)",
}


def _by_metric(df: pd.DataFrame) -> pd.DataFrame:
    """One column per model, one row per metric: fits a terminal for two models."""
    import pandas as pd

    rows = [
        {"metric": label, **{str(r["model"]): r[key] for _, r in df.iterrows()}}
        for key, label in _METRICS.items()
    ]
    return pd.DataFrame(rows, dtype=object)


def _run_name(ref: ModelRef) -> str:
    """The default folder's name: the run folder's or file's, a registry or factory name."""
    if ref.kind == "checkpoint" and ref.path is not None and ref.name is None:
        p = ref.path
        name = p.parent.name if p.name == "model.safetensors" else p.stem
    else:
        name = ref.text
    return re.sub(r"[^\w.-]+", "-", name).strip("-") or "model"


@guarded
def explain_command(
    model: str = opt.model_argument(),
    vs: list[str] | None = opt.vs_option(
        "Shown side by side (e.g. TD vs BU, paper B Fig. 8); repeatable."
    ),
    untrained: bool = opt.untrained_option(),
    checkpoint_dir: Path | None = opt.checkpoint_dir_option(),
    n_examples: int | None = opt.n_examples_option(
        f"The first N images of the split; default: {DEFAULT_IMAGES}."
    ),
    images: int | None = typer.Option(
        None,
        "--images",
        hidden=True,
        help="Old name of --n-examples.",
        callback=in_range("--images", 1),
    ),
    indices: str | None = typer.Option(
        None, "--indices", help="Comma-separated image indices in the split (overrides --images)."
    ),
    layer: str | None = typer.Option(
        None, "--layer", help="Module name for Grad-CAM (default: the model's last conv layer)."
    ),
    vs_layer: str | None = typer.Option(
        None,
        "--vs-layer",
        help="Layer of the --vs models (default: --layer, else each one's last conv).",
    ),
    target: str = typer.Option(
        "pred", "--target", help="Class to explain: pred (predicted), label, or a class index."
    ),
    normalize: str = typer.Option(
        "max",
        "--normalize",
        help="Heatmap scaling: max (ReLU, then / max; Selvaraju) or centered (authors' code).",
    ),
    per_layer: bool = typer.Option(
        True, "--per-layer/--no-per-layer", help="Grad-CAM at every conv unit (paper B Fig. 7)."
    ),
    layers: str | None = typer.Option(
        None, "--layers", help="Comma-separated layers for the per-layer figure (default: all)."
    ),
    list_layers: bool = typer.Option(
        False, "--list-layers", help="List the conv layers (forward order, shapes) and exit."
    ),
    localization: bool = typer.Option(
        False, "--localization", help="Weakly supervised localization precision/recall (Fig. 9)."
    ),
    limit: int | None = typer.Option(
        None,
        "--limit",
        help="Localization on the first N images of the split (default: all).",
        callback=in_range("--limit", 1),
    ),
    threshold: float = typer.Option(
        0.2,
        "--threshold",
        help="Heatmap threshold t in [0, 1) (paper B: 0.2).",
        callback=in_range("--threshold", 0, 1),
    ),
    object_threshold: float = typer.Option(
        0.2,
        "--object-threshold",
        help="Object mask: image pixel in [0, 1] above this.",
        callback=in_range("--object-threshold", 0, 1),
    ),
    dataset: str | None = opt.dataset_option(
        "Default: the checkpoint's (embedded digits for --untrained); a package.module:factory "
        "model needs it."
    ),
    data_dir: Path | None = opt.data_dir_option(),
    split: str = typer.Option("test", "--split", help="train or test."),
    out: Path | None = opt.out_option("Default: runs/explain-<run folder or file name>."),
    force: bool = opt.force_option("Writes into a non-empty --out."),
    device: str = opt.device_option(),
    precision: str = opt.precision_option("explain computes Grad-CAM in fp32 (auto is fp32)."),
    batch_size: int | None = opt.batch_size_option(f"Per Grad-CAM pass; default: {DEFAULT_BATCH}."),
    fmt: str = opt.format_option(
        "json: the result document; the localization table (or --list-layers) otherwise."
    ),
    as_json: bool = opt.json_option(),
) -> None:
    """Grad-CAM heatmaps at the input size, saved as overlays; TD and BU side by side.

    Writes overlays.png (paper B Fig. 8), layers.png (Fig. 7) and heatmaps.npz, explain.json.

    --localization: paper B's Fig. 9 precision/recall table, localization.csv / .png.

    Examples:

      robust explain td.safetensors --vs bu.safetensors -n 8

      robust explain td.safetensors --vs bu.safetensors --localization -d mnist

      robust explain td-lenetfc --untrained --list-layers

      robust explain mypkg.nets:build -d cifar10 -n 4
    """
    fmt = opt.output_format(fmt, as_json)
    opt.fp32_only(precision, "explain", "Grad-CAM gradients")
    if images is not None and n_examples is not None and images != n_examples:
        raise RobustError(f"--images {images} and --n-examples {n_examples}: give one of them")
    from robustcli.models import resolve_reference

    # every reference resolved (names to their stored weights) before torch loads
    refs = [
        resolve_reference(r, untrained=untrained, checkpoint_dir=checkpoint_dir)
        for r in (model, *(vs or []))
    ]
    from robustcli import explain as ex
    from robustcli.render import render

    if list_layers:
        # load all before printing anything: a bad --vs must fail with one line, not half a table
        loaded = [ex.load_explain_model(r, dataset=dataset) for r in refs]
        if any(em.untrained for em in loaded):
            err_console.print(
                styled(
                    "WARNING: --untrained: model names are built with RANDOM weights; their "
                    "heatmaps show nothing the model learned.",
                    "bold yellow",
                ),
                soft_wrap=True,
            )
        for em in loaded:
            df = ex.describe_layers(em.model, em.input_shape)
            out_text = render(df, fmt, title=f"{em.label}: conv layers", console=console)
            if out_text is not None:
                typer.echo(out_text, nl=False)
        return

    out_dir = out if out is not None else Path("runs") / f"explain-{_run_name(refs[0])}"
    report = ex.run_explain(
        refs[0],  # type: ignore[arg-type]
        vs=refs[1:],  # type: ignore[arg-type]
        untrained=untrained,
        dataset=dataset,
        data_dir=data_dir,
        split=split,
        images=n_examples or images or DEFAULT_IMAGES,
        indices=_int_list(indices, "--indices"),
        layer=layer,
        vs_layer=vs_layer,
        target=target,
        normalize=normalize,  # type: ignore[arg-type]
        per_layer=per_layer,
        layers=[v for v in layers.split(",") if v] if layers else None,
        localization=localization,
        limit=limit,
        threshold=threshold,
        object_threshold=object_threshold,
        out=out_dir,
        force=force,
        device=device,
        batch_size=batch_size or DEFAULT_BATCH,
    )
    # warnings (an --untrained model's random weights among them) come after the work, so that a
    # bad input fails with its one error line alone
    for w in report.warnings:
        err_console.print(styled(f"WARNING: {w}", "bold yellow"), soft_wrap=True)
    if fmt == "json":
        typer.echo(json.dumps(ex.jsonable(report.document), indent=2))
        return
    if report.localization is not None:
        loc = report.document["localization"]
        title = (
            f"Localization, t = {loc['threshold']} (object > {loc['object_threshold']}): "
            f"{loc['images_correct_by_all']} of {loc['images_evaluated']} images correct by all"
        )
        frame = _by_metric(report.localization) if fmt == "table" else report.localization
        text = render(frame, fmt, title=title, console=console, floatfmt=".3f")
        if text is not None:
            typer.echo(text, nl=False)
    if fmt == "table":
        for key, path in report.files.items():
            console.print(Text.assemble(("wrote", "green"), f" {path}  ", (f"({key})", "dim")))
