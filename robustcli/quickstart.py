"""`robust quickstart`: the whole story offline in a few minutes.

Train a plain and a push-pull ResNet-20 on the embedded digits, evaluate both on generated
corruptions, attack both, and print the comparison, using the same library functions as the
individual commands.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustcli.compare import (
    LEGEND,
    Comparison,
    compare,
    plot_comparison,
    render_comparison,
    save_plot,
    write_text,
)
from robustcli.errors import RobustError


@dataclass(frozen=True)
class QuickstartConfig:
    """What ``robust quickstart`` runs (``fast=True``: the test-size variant, same code path)."""

    models: tuple[str, str] = ("resnet20", "pp-resnet20")
    epochs: int = 3
    train_limit: int | None = None
    test_limit: int | None = None
    corruptions: str = "common"
    severities: str = "1,3,5"
    eval_examples: int | None = None  # all 364 digits test images
    attacks: tuple[str, ...] = ("ddn", "contrast")
    attack_params: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: {"ddn": {"steps": 20}}
    )
    attack_examples: int = 100

    @classmethod
    def fast(cls) -> QuickstartConfig:
        return cls(
            epochs=1,
            train_limit=128,
            test_limit=64,
            corruptions="gaussian_noise,defocus_blur,fog,contrast",
            severities="1,5",
            eval_examples=32,
            attacks=("ddn", "contrast"),
            attack_params={"ddn": {"steps": 5}, "contrast": {"binary_search_steps": 5}},
            attack_examples=8,
        )


@dataclass
class QuickstartResult:
    out: Path
    files: dict[str, Path]
    comparison: Comparison
    seconds: dict[str, float]


def quickstart(
    out: str | os.PathLike[str] = "runs/quickstart",
    *,
    force: bool = False,
    fast: bool = False,
    config: QuickstartConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> QuickstartResult:
    """Train a plain and a push-pull ResNet-20 on the embedded digits (offline), evaluate both
    on generated corruptions, attack both, and compare (``QuickstartConfig``: 3 epochs; the 15
    common corruptions at severities 1, 3, 5 on all 364 test images; ddn (20 steps) and contrast
    on 100 test images). ``fast=True`` runs the same steps on a few images. Writes under ``out``::

        <model>/             run folders (model.safetensors, result.json, metrics.csv, ...)
        <model>-eval-c.json  eval-c results (+ RobustBench-layout CSV)
        attack/              attack.json, CSVs, curves
        compare.md, compare.csv, compare.png
    """
    from robustcli.attacks.experiment import (
        load_attack_data,
        load_attack_model,
        run_experiment,
        write_experiment,
    )
    from robustcli.evaluate import run_eval_c, write_eval_c
    from robustcli.train import train

    cfg = config or (QuickstartConfig.fast() if fast else QuickstartConfig())
    say = log or (lambda _msg: None)
    root = Path(out).expanduser()
    if root.exists() and not root.is_dir():
        raise RobustError(f"{root} is a file: choose a folder for --out")
    if root.exists() and any(root.iterdir()) and not force:
        raise RobustError(f"{root} already exists: choose another --out or pass --force")
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()

    checkpoints = []
    for name in cfg.models:
        t0 = time.perf_counter()
        say(f"train {name} on digits, {cfg.epochs} epoch(s)")
        res = train(
            name,
            dataset="digits",
            epochs=cfg.epochs,
            out=root / name,
            force=True,
            device="cpu",
            train_limit=cfg.train_limit,
            test_limit=cfg.test_limit,
            progress="none",
        )
        assert res.checkpoint is not None
        checkpoints.append(res.checkpoint)
        files[f"train:{name}"] = root / name / "result.json"
        seconds[f"train:{name}"] = time.perf_counter() - t0

    for name, ck in zip(cfg.models, checkpoints, strict=True):
        t0 = time.perf_counter()
        say(f"eval-c {name}: {cfg.corruptions}, severities {cfg.severities} (generated)")
        doc = run_eval_c(
            ck,
            generate=True,
            corruptions=cfg.corruptions,
            severities=cfg.severities,
            n_examples=cfg.eval_examples,
            device="cpu",
            precision="fp32",
        )
        paths = write_eval_c(doc, root / f"{name}-eval-c.json", force=True)
        files[f"eval-c:{name}"] = paths["json"]
        seconds[f"eval-c:{name}"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say(f"attack both with {', '.join(cfg.attacks)} on {cfg.attack_examples} test images")
    models = [load_attack_model(checkpoint=ck) for ck in checkpoints]
    data = load_attack_data(models[0], n_examples=cfg.attack_examples)
    run = run_experiment(
        models,
        data,
        list(cfg.attacks),
        params={k: dict(v) for k, v in cfg.attack_params.items()},
        repeats=1,
        batch_size=cfg.attack_examples,
    )
    attack_paths = write_experiment(run, root / "attack", force=True)
    files["attack"] = attack_paths["json"]
    seconds["attack"] = time.perf_counter() - t0

    result_files = [files[k] for k in files if k.startswith(("train:", "eval-c:"))]
    cmp = compare([*result_files, files["attack"]])
    files["compare_md"] = write_text(
        root / "compare.md", render_comparison(cmp, "markdown") + "\n" + LEGEND + "\n"
    )
    files["compare_csv"] = write_text(root / "compare.csv", render_comparison(cmp, "csv") or "")
    files["compare_png"] = save_plot(plot_comparison(cmp), root / "compare.png", force=True)
    seconds["total"] = time.perf_counter() - t_all
    return QuickstartResult(root, files, cmp, seconds)
