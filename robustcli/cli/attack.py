"""`robust attack`: Foolbox L2 attacks with paper B's protocol, TD vs BU curves."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from robustcli.cli import options as opt
from robustcli.cli._common import console, err_console, guarded, in_range
from robustcli.errors import RobustError

DEFAULT_EXAMPLES = 1000
DEFAULT_BATCH = 128

if TYPE_CHECKING:
    from robustcli.attacks.experiment import AttackModel, AttackRun
    from robustcli.attacks.runner import AttackOutcome


def _floats(text: str | None, what: str) -> list[float] | None:
    if text is None or not text.strip():
        return None
    try:
        values = [float(v) for v in text.replace(" ", ",").split(",") if v]
    except ValueError:
        raise RobustError(
            f"bad {what} {text!r}: give comma-separated numbers, e.g. 0.1,0.5,1"
        ) from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise RobustError(
            f"bad {what} {text!r}: give positive finite L2 sizes ([0,1] pixels), e.g. 0.1,0.5,1"
        )
    return sorted(set(values))


def _finished_line(o: AttackOutcome) -> str:
    """One line per finished attack run (shown when there are no progress bars)."""
    from robustcli.attacks.metrics import median_l2

    med = median_l2(o.distances, o.clean_correct)
    med_text = "cut" if o.fully_cut else ("-" if math.isnan(med) else f"{med:.3g}")
    cut = f", {o.n_cut} cut" if o.n_cut else ""
    return (
        f"done {o.label} / {o.attack}: {o.n_attacked} images attacked{cut} "
        f"({int(o.clean_correct.sum())} correctly classified of {o.n}), {o.seconds:.1f} s, "
        f"median L2 {med_text}"
    )


def _list_attacks() -> None:
    import pandas as pd

    from robustcli.attacks import ATTACKS
    from robustcli.render import render

    rows = [
        {
            "attack": s.name,
            "group": s.group,
            "repeated": "yes" if s.stochastic else "no (deterministic)",
            "minimal L2": s.minimal_l2,
            "defaults": ", ".join(
                f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in s.defaults.items()
            ),
        }
        for s in ATTACKS.values()
    ]
    render(pd.DataFrame(rows), "table", title="robust attack: attacks", console=console)


class _RichProgress:
    """A Rich progress bar per attack (the runner's ProgressHook)."""

    def __init__(self, enabled: bool) -> None:
        from robustcli.progress import progress_bar

        self.progress = progress_bar(remaining=False, console=err_console, enabled=enabled)
        self.tasks: dict[str, int] = {}

    def __call__(self, event: str, key: str, n: int) -> None:
        if event == "start":
            self.tasks[key] = self.progress.add_task(key, total=max(n, 1) if n else 0)
        elif event == "advance":
            self.progress.advance(self.tasks[key], n)
        elif event == "end":
            task = self.tasks[key]
            total = self.progress.tasks[task].total or 0
            self.progress.update(task, completed=self.progress.tasks[task].completed or total)


@guarded
def attack_command(
    ref: str | None = typer.Argument(
        None,
        metavar="MODEL",
        help="The model: model.safetensors, its run folder, or a registry name (untrained: "
        "needs --untrained); or give --model / --checkpoint.",
        show_default=False,
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Registry name (`robust models`); taken from --checkpoint if omitted.",
    ),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", "-c", help="model.safetensors or its run folder (robust train --out)."
    ),
    vs: str | None = typer.Option(
        None,
        "--vs",
        help="A second model to compare (paper B: the BU baseline): a checkpoint path, or a "
        "registry name (untrained: needs --untrained).",
    ),
    attacks: str = typer.Option(
        "paper-b",
        "--attacks",
        "-a",
        help="Comma-separated attacks or groups: paper-b, gradient, all; see --list.",
    ),
    n_examples: int | None = opt.n_examples_option(
        f"Drawn at random (seeded) from the split; default: {DEFAULT_EXAMPLES} (all 20 of "
        "the built-in Foolbox samples); paper B attacked whole test sets."
    ),
    repeats: int = typer.Option(
        3,
        "--repeats",
        callback=in_range("--repeats", 1, 1000),
        help="Runs of each stochastic attack; each sample keeps its smallest L2.",
    ),
    branch: str = typer.Option(
        "all",
        "--branch",
        help="Top-down models: all, or the input scale(s) the perturbation reaches: high, mid, "
        "low (comma-separated for several).",
    ),
    epsilons: str | None = typer.Option(
        None,
        "--epsilons",
        help="L2 grid of the robust accuracies, e.g. 0.1,0.25,0.5,1,2 ([0,1] pixels). Default: "
        "0.1,0.25,0.5,1,2 at 3x32x32, 0.5,1,1.5,2,3 at 1x28x28.",
    ),
    out: Path | None = opt.out_option("Default: runs/attack-<model>[-vs-<model>]."),
    dataset: str | None = opt.dataset_option(
        "Default: the model's dataset, from the real test images Foolbox ships (no download)."
    ),
    data_dir: Path | None = opt.data_dir_option(),
    param: list[str] | None = typer.Option(
        None,
        "--param",
        "-p",
        help="Override an attack default: ATTACK.KEY=VALUE, e.g. cw.steps=1000 (repeatable).",
    ),
    max_seconds: float | None = typer.Option(
        None,
        "--max-seconds",
        callback=in_range("--max-seconds", 0, low_open=True),
        help="Time budget per attack run (model x branch x attack); what was cut is reported.",
    ),
    batch_size: int | None = opt.batch_size_option(f"Per attack call; default: {DEFAULT_BATCH}."),
    seed: int | None = opt.seed_option("Seeds the example draw and the attacks."),
    device: str = opt.device_option(),
    precision: str = opt.precision_option(
        "attack computes in fp32 (minimal perturbations need exact gradients; auto is fp32)."
    ),
    untrained: bool = typer.Option(
        False, "--untrained", help="Allow attacking randomly initialised weights (smoke tests)."
    ),
    force: bool = opt.force_option(),
    progress: str = opt.progress_option("plain: one line per finished attack run."),
    no_progress: bool = opt.no_progress_option(),
    fmt: str = opt.format_option(
        "json: attack.json; csv: attack_summary.csv; table and markdown: the summary."
    ),
    as_json: bool = opt.json_option(),
    list_: bool = typer.Option(False, "--list", help="List the attacks and exit."),
) -> None:
    """Attack a model with Foolbox (L2, [0,1] pixels) using paper B's protocol.

    Each attack runs --repeats times (deterministic ones once) and every sample keeps its
    smallest verified L2 perturbation; failures count at infinity. Prints a table (clean
    accuracy, median minimal L2, robust accuracy on the --epsilons grid, AUC = mean accuracy
    loss over [0, max eps]) and writes attack.json, attack_summary.csv, attack_samples.csv and
    attack_curves.png/.svg (accuracy loss vs L2, one panel per attack, TD green, BU red).

    \b
    Examples:
      robust attack runs/td-nin --vs runs/bu-nin
      robust attack -m td-nin -c runs/td-nin --vs runs/bu-nin
      robust attack -c runs/td-nin -d cifar10 --data-dir ~/data/cifar10 -n 1000 --max-seconds 600
      robust attack -c runs/td-nin-light --branch high,mid,low -a gaussian,pointwise
      robust attack -c runs/r20 -a ddn,deepfool,cw,fmn,pgd -p cw.steps=1000
      robust attack --list
    """
    if list_:
        _list_attacks()
        return
    fmt = opt.output_format(fmt, as_json)
    opt.fp32_only(precision, "attack", "minimal perturbations need exact gradients")
    model, checkpoint = _model_ref(ref, model, checkpoint)
    seed = opt.seed_or_default(seed)
    batch_size = batch_size or DEFAULT_BATCH
    mode = opt.progress_mode(progress, no_progress)

    from robustcli.attacks.experiment import load_attack_data, run_experiment, write_experiment
    from robustcli.attacks.results import check_outputs
    from robustcli.runtime import resolve_device

    names, params = _attacks_and_params(attacks, param)
    eps = _floats(epsilons, "--epsilons")
    branches = [b.strip() for b in branch.split(",") if b.strip()] or ["all"]
    # the library checks these too; here they fail before any model is loaded
    if repeats < 1:
        raise RobustError(f"--repeats must be at least 1, got {repeats}")
    if max_seconds is not None and not (math.isfinite(max_seconds) and max_seconds > 0):
        raise RobustError(f"--max-seconds must be a positive number, got {max_seconds}")
    if batch_size < 1:
        raise RobustError(f"--batch-size must be at least 1, got {batch_size}")
    dev = resolve_device(device)

    models = _load_models(model, checkpoint, vs, untrained, dev)
    first = models[0]
    if out is None:
        out = Path("runs") / (
            f"attack-{first.name}" + (f"-vs-{models[1].name}" if len(models) > 1 else "")
        )
    check_outputs(out, force)  # before any work
    for m in models:
        if m.provenance.get("sha256") == "untrained":
            err_console.print(
                f"[bold yellow]warning:[/] attacking {m.name} with random weights (--untrained): "
                "the numbers say nothing about the architecture's robustness",
                highlight=False,
            )
    if n_examples is None and (dataset is not None or data_dir is not None):
        n_examples = DEFAULT_EXAMPLES
    data = load_attack_data(
        first, dataset=dataset, data_dir=data_dir, n_examples=n_examples, seed=seed
    )
    if data.provenance.get("note"):
        err_console.print(f"[yellow]note:[/] {escape(data.provenance['note'])}", highlight=False)
    err_console.print(
        f"attacking {', '.join(m.label for m in models)} on {data.provenance['n_examples']} "
        f"images ({data.provenance['source']}) with {', '.join(names)}; device {dev}",
        highlight=False,
    )

    show_bars = mode == "rich"

    def finished(o: AttackOutcome) -> None:
        if mode == "plain":  # no bars: say something after each attack run, not nothing for hours
            err_console.print(escape(_finished_line(o)), highlight=False, soft_wrap=True)

    bars = _RichProgress(show_bars)
    with bars.progress:
        run = run_experiment(
            models,
            data,
            names,
            params=params,
            branches=branches,
            epsilons=eps,
            repeats=repeats,
            batch_size=batch_size,
            seed=seed,
            max_seconds=max_seconds,
            device=dev,
            progress=bars,
            command=["robust", *sys.argv[1:]],
            finished=finished,
        )
    n_used = data.provenance["n_examples"]
    clamped = f", clamped from -n {n_examples}" if data.provenance.get("clamped") else ""
    title = f"{data.provenance['source']} (n={n_used}{clamped})"
    paths = write_experiment(run, out, force=force, title=title)
    _print_outputs(run, paths, fmt, title)


def _attacks_and_params(
    attacks: str, param: list[str] | None
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """--attacks resolved to names; --param overrides, each for an attack that runs."""
    from robustcli.attacks import parse_param_overrides, resolve_attacks

    names = resolve_attacks(attacks)
    params = parse_param_overrides(param)
    unused = [a for a in params if a not in names]
    if unused:
        raise RobustError(
            f"--param for {', '.join(unused)}, which --attacks does not select "
            f"({', '.join(names)}): add it to --attacks or drop the --param"
        )
    return names, params


def _load_models(
    model: str | None, checkpoint: Path | None, vs: str | None, untrained: bool, dev: Any
) -> list[AttackModel]:
    """The attacked model, then the --vs one (a path is a checkpoint, else a registry name)."""
    from robustcli.attacks.experiment import load_attack_model

    models = [load_attack_model(model, checkpoint, untrained=untrained, device=dev)]
    if vs is not None:
        p = Path(vs).expanduser()
        if p.exists() or vs.endswith(".safetensors") or "/" in vs:
            models.append(load_attack_model(None, p, device=dev))
        else:
            models.append(load_attack_model(vs, None, untrained=untrained, device=dev))
    return models


def _print_outputs(run: AttackRun, paths: dict[str, Path], fmt: str, title: str) -> None:
    """stdout in ``fmt`` (json and csv: the files as written), then the paths of the files."""
    if fmt == "table":
        _render(run, title)
    elif fmt == "json":
        typer.echo(paths["json"].read_text(), nl=False)  # exactly what attack.json holds
    elif fmt == "csv":
        typer.echo(paths["summary_csv"].read_text(), nl=False)
    else:
        from robustcli.render import to_markdown

        typer.echo(f"**robust attack: {title}**\n\n{to_markdown(run.summary, '.3g')}", nl=False)
    where = console if fmt == "table" else err_console  # stdout stays machine-readable
    for key in ("json", "summary_csv", "samples_csv", "figure_png", "figure_svg"):
        where.print(f"  {paths[key]}", highlight=False)


def _model_ref(
    ref: str | None, model: str | None, checkpoint: Path | None
) -> tuple[str | None, Path | None]:
    """The positional model reference as (--model, --checkpoint): a file, a folder or a path
    is a checkpoint, anything else a registry name (the rule --vs follows)."""
    if ref is None:
        return model, checkpoint
    p = Path(ref).expanduser()
    if p.exists() or ref.endswith(".safetensors") or "/" in ref:
        if checkpoint is not None:
            raise RobustError(
                f"two checkpoints ({ref} and --checkpoint {checkpoint}): give one of them"
            )
        return model, p
    if model is not None and model != ref:
        raise RobustError(f"two models ({ref} and --model {model}): give one of them")
    return ref, checkpoint


def _render(run: AttackRun, title: str) -> None:
    import pandas as pd

    from robustcli.attacks.metrics import eps_column
    from robustcli.render import to_rich_table

    summary = run.summary.copy()
    missing = pd.Series([o.fully_cut for o in run.outcomes], index=summary.index)
    metric_cols = ["median_l2", *(eps_column(e) for e in run.epsilons), "auc"]
    cols = ["model", "attack", "clean_acc", *metric_cols, "img_per_s"]
    names = {"clean_acc": "clean%", "median_l2": "med L2", "auc": "AUC%", "img_per_s": "img/s"}
    names |= {eps_column(e): f"@{e:g}" for e in run.epsilons}
    any_cut = bool(summary["cut"].any() or summary["left_out"].astype(bool).any())
    if any_cut:
        # cut: images left out of the metrics (not attacked, or in fewer repeats than asked)
        cols += ["attacked", "cut", "cut_repeats"]
        names |= {"cut_repeats": "cut by repeat"}
    summary["attack"] = [
        f"{a} (partial)" if left else a
        for a, left in zip(summary["attack"], summary["left_out"].astype(bool), strict=True)
    ]
    table = summary[cols].copy()
    for c in metric_cols:
        table[c] = table[c].astype(object)
        table.loc[missing, c] = "cut"
    table = table.rename(columns=names)
    console.print(
        to_rich_table(table, title=f"robust attack: {title}", floatfmt=".3g"), soft_wrap=False
    )
    console.print(
        f"clean%: accuracy (%) of all images; @eps: accuracy (%) with L2 perturbations up to "
        f"eps ([0,1] pixels); med L2: median minimal L2 of the attacked images (inf: most not "
        f"fooled); AUC%: mean accuracy loss over [0, {max(run.epsilons):g}]"
        + (
            "; cut: images left out of the attack metrics by --max-seconds (they are computed "
            "over the attacked ones); 'cut' in a cell: nothing attacked, no value; partial: a "
            "worst case without the attacks that were cut"
            if any_cut
            else ""
        ),
        style="dim",
        highlight=False,
    )
    if len(run.transfer):
        transfer = run.transfer.copy()
        branch_cols = [c for c in ("all", "high", "mid", "low") if c in transfer]
        cut_rows = transfer[branch_cols].isna().all(axis=1) & (transfer.get("attacked", 1) == 0)
        for c in branch_cols:
            transfer[c] = transfer[c].astype(object)
            transfer.loc[cut_rows, c] = "cut"
        if "cut" in transfer and not transfer["cut"].any():
            transfer = transfer.drop(columns=["attacked", "cut"])
        console.print(
            to_rich_table(
                transfer,
                title="branch transfer (paper B Fig. 5): accuracy % with the adversarials fed "
                "to one input",
                floatfmt=".1f",
            )
        )
    notes = {n for o in run.outcomes for n in o.notes}
    notes |= set(run.document["config"].get("notes", []))
    for note in sorted(notes):
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
