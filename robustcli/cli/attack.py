"""`robust attack`: Foolbox L2 attacks with paper B's protocol, TD vs BU curves."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from robustcli.cli import options as opt
from robustcli.cli._common import console, err_console, guarded, in_range
from robustcli.errors import RobustError
from robustcli.render import styled

DEFAULT_EXAMPLES = 1000
DEFAULT_BATCH = 128

if TYPE_CHECKING:
    from robustcli.attacks.experiment import AttackModel, AttackRun
    from robustcli.attacks.runner import AttackOutcome
    from robustcli.models import ModelRef


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
    ref: str | None = opt.model_argument("attack: or give it as --model.", required=False),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        metavar="MODEL",
        help="Same as the MODEL argument (with the old --checkpoint: the name it must hold).",
    ),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        "-c",
        hidden=True,
        help="Old spelling of the MODEL argument for checkpoints and run folders.",
    ),
    vs: list[str] | None = opt.vs_option(
        "Repeatable; paper B compares each TD model with its BU baseline."
    ),
    attacks: str = typer.Option(
        "lelekas2020",
        "--attacks",
        "-a",
        help="Comma-separated attacks or groups: lelekas2020 (paper B's Fig. 6; old name "
        "paper-b), noise-fb2, gradient, all; see --list.",
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
        "Default: the model's dataset, from the real test images Foolbox ships (no download). "
        "A package.module:factory model needs it (its input shape and normalisation)."
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
    untrained: bool = opt.untrained_option(),
    checkpoint_dir: Path | None = opt.checkpoint_dir_option(),
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
      robust attack --model td-nin --vs bu-nin    (stored weights, see --checkpoint-dir)
      robust attack td-nin --untrained -n 20 -a contrast    (random weights: a smoke test)
      robust attack runs/td-nin -d cifar10 --data-dir ~/data/cifar10 -n 1000 --max-seconds 600
      robust attack runs/td-nin-light --branch high,mid,low -a gaussian,pointwise
      robust attack runs/r20 -a ddn,deepfool,cw,fmn,pgd -p cw.steps=1000
      robust attack mypkg.nets:build -d cifar10 -n 20
      robust attack --list
    """
    if list_:
        _list_attacks()
        return
    fmt = opt.output_format(fmt, as_json)
    opt.fp32_only(precision, "attack", "minimal perturbations need exact gradients")
    reference, expected = _model_ref(ref, model, checkpoint)
    # every reference resolved before torch and Foolbox load: a typo fails at once
    refs = _resolve(reference, vs or [], untrained, checkpoint_dir)
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

    models = _load_models(refs, expected, dataset, dev)
    first = models[0]
    if out is None:
        out = Path("runs") / "-vs-".join([f"attack-{first.slug}", *(m.slug for m in models[1:])])
    check_outputs(out, force)  # before any work
    if first.kind == "user" and data_dir is None:
        dataset = None  # its --dataset was the model's: the Foolbox samples of it, as for others
    for m in models:
        if m.untrained:
            warning = (
                f"attacking {m.name} with random weights (--untrained): the numbers say nothing "
                "about the architecture's robustness"
            )
            err_console.print(styled("warning:", "bold yellow", warning))
    if n_examples is None and (dataset is not None or data_dir is not None):
        n_examples = DEFAULT_EXAMPLES
    data = load_attack_data(
        first, dataset=dataset, data_dir=data_dir, n_examples=n_examples, seed=seed
    )
    if data.provenance.get("note"):
        err_console.print(styled("note:", "yellow", data.provenance["note"]))
    fed = data.provenance["input"]["description"]
    fed = "" if fed == "none" else f", fed as {fed}"
    for m in models:
        if m.dataset and m.dataset != data.provenance["dataset"]:
            warning = (
                f"{m.label} is a {m.dataset} model but these are {data.provenance['dataset']} "
                f"images{fed}: its accuracy and distances are on data it was not trained for; "
                f"-d {m.dataset} attacks it on its own"
            )
            err_console.print(styled("warning:", "bold yellow", warning))
    err_console.print(
        f"attacking {', '.join(m.label for m in models)} on {data.provenance['n_examples']} "
        f"images ({data.provenance['source']}) with {', '.join(names)}; device {dev}",
        highlight=False,
    )

    show_bars = mode == "rich"

    def finished(o: AttackOutcome) -> None:
        if mode == "plain":  # no bars: say something after each attack run, not nothing for hours
            err_console.print(_finished_line(o), highlight=False, soft_wrap=True)

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


def _resolve(
    reference: str | None, vs: list[str], untrained: bool, checkpoint_dir: Path | None
) -> list[ModelRef]:
    """MODEL, then each --vs, resolved (robustcli.models.resolve_reference; nothing loaded)."""
    from robustcli.models import resolve_reference

    if reference is None:
        raise RobustError(
            "no model given: pass MODEL (a checkpoint, run folder, registry name or "
            "package.module:factory), e.g. robust attack runs/td-nin"
        )
    return [
        resolve_reference(r, untrained=untrained, checkpoint_dir=checkpoint_dir)
        for r in (reference, *vs)
    ]


def _load_models(
    refs: list[ModelRef], expected: str | None, dataset: str | None, dev: Any
) -> list[AttackModel]:
    """The attacked model, then each --vs one. ``expected``: the name the first must hold
    (the old ``-m NAME -c PATH``); ``dataset``: that of package.module:factory models."""
    from robustcli.models import load_model

    models = [load_model(r, dataset=dataset, device=dev) for r in refs]
    if expected is not None and expected != models[0].name:
        raise RobustError(
            f"{refs[0].text} holds {models[0].name!r}, not {expected!r}: drop --model or pass a "
            f"checkpoint of {expected}"
        )
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


def _is_path(text: str) -> bool:
    return Path(text).expanduser().exists() or "/" in text or text.endswith(".safetensors")


def _model_ref(
    ref: str | None, model: str | None, checkpoint: Path | None
) -> tuple[str | None, str | None]:
    """(the reference to load, the name it must hold). MODEL and --model are one reference;
    the hidden --checkpoint PATH is one too, and a registry name beside a path (the old
    ``-m td-nin -c runs/td-nin``) is the name that checkpoint must hold."""
    if ref is not None and checkpoint is not None and _is_path(ref):
        raise RobustError(
            f"two checkpoints ({ref} and --checkpoint {checkpoint}): give one of them"
        )
    if ref is not None and model is not None and model != ref:
        if checkpoint is not None or not _is_path(ref):
            raise RobustError(f"two models ({ref} and --model {model}): give one of them")
        return ref, model
    name = ref if ref is not None else model
    if checkpoint is None:
        return name, None
    if name is not None and _is_path(name):
        raise RobustError(
            f"two checkpoints ({name} and --checkpoint {checkpoint}): give one of them"
        )
    return str(checkpoint), name


def _render(run: AttackRun, title: str) -> None:
    import pandas as pd

    from robustcli.attacks.metrics import eps_column
    from robustcli.render import render

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
    render(table, "table", title=f"robust attack: {title}", console=console, floatfmt=".3g")
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
        render(
            transfer,
            "table",
            title="branch transfer (paper B Fig. 5): accuracy % with the adversarials fed to "
            "one input",
            console=console,
            floatfmt=".1f",
        )
    notes = {n for o in run.outcomes for n in o.notes}
    notes |= set(run.document["config"].get("notes", []))
    for note in sorted(notes):
        err_console.print(styled("note:", "yellow", note))
