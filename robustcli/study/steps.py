"""One study step = one call of the library function its CLI command calls.

``execute_step`` is what every executor runs (in this process, in a spawned worker process or in
a Ray task): it runs the step, writes its result under the study folder, then its stamp (the
step's hash and the result's sha256). The stamp is written last, so a step killed midway has no
stamp and runs again on the next ``robust study``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from robustcli.errors import RobustError
from robustcli.io import atomic_write_json, file_sha256
from robustcli.study.plan import STAMP_SCHEMA, Step, work_units


def set_threads(threads: int | None) -> None:
    """Give torch ``threads`` intra-op threads (a worker's share of the machine's cores)."""
    if threads is None:
        return
    import torch

    threads = max(1, int(threads))
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def _path(value: str | None) -> Path | None:
    """A folder of the study file (``~`` allowed), or None."""
    return None if value is None else Path(value).expanduser()


def _checkpoint(root: Path, run: str) -> Path:
    return root / "runs" / run / "train"


def _run_train(step: Step, root: Path) -> float | None:
    from robustcli.train import train

    cfg, o = step.config, step.config["options"]
    folder = _checkpoint(root, step.run)
    # a train step killed midway left last.safetensors: continue it from its last finished
    # epoch (same weights as an uninterrupted run); train refuses a resume with other
    # arguments (an outdated folder), which is then trained again from scratch
    resume = (folder / "last.safetensors").is_file() and (folder / "config.json").is_file()
    try:
        res = _train_call(train, cfg, o, folder, resume=resume)
    except RobustError:
        if not resume:
            raise
        res = _train_call(train, cfg, o, folder, resume=False)
    # images trained on (the unit of the throughput that estimates the next runs' time)
    images = sum(float(h.get("epoch_images", 0)) for h in res.history)
    return images or None


def _train_call(
    train: Any, cfg: Mapping[str, Any], o: Mapping[str, Any], folder: Path, *, resume: bool
) -> Any:
    return train(
        cfg["model"],
        dataset=cfg["dataset"],
        data_dir=_path(cfg["data_dir"]),
        recipe=o.get("recipe"),
        epochs=o.get("epochs"),
        batch_size=o.get("batch_size"),
        lr=o.get("lr"),
        momentum=o.get("momentum"),
        nesterov=o.get("nesterov"),
        weight_decay=o.get("weight_decay"),
        schedule=o.get("schedule"),
        label_smoothing=o.get("label_smoothing"),
        augment=o.get("augment"),
        precision=o.get("precision", "auto"),
        model_overrides={"pp": o["pp"]} if o.get("pp") else None,
        train_limit=o.get("train_limit"),
        test_limit=o.get("test_limit"),
        out=folder,
        seed=cfg["seed"],
        device=cfg["device"],
        resume=resume,
        force=not resume,  # a stamp-less run folder is an interrupted or outdated train
        progress="none",
    )


def _run_eval_c(step: Step, root: Path) -> None:
    from robustcli.evaluate import run_eval_c, write_eval_c

    o = step.config["options"]
    doc = run_eval_c(
        _checkpoint(root, step.run),
        cifar_c_dir=_path(o["cifar_c_dir"]),
        generate=o["generate"],
        seed=o["seed"],
        corruptions=o["corruptions"],
        severities=o["severities"],
        n_examples=o["n"],
        batch_size=o["batch_size"],
        device=step.config["device"],
        data_dir=_path(step.config.get("data_dir")),
        clean=o["clean"],
        progress=False,
        per_image=o.get("per_image", False),
    )
    write_eval_c(doc, root / step.result, force=True)


def _run_attack(step: Step, root: Path, study: str) -> None:
    from robustcli.attacks.experiment import (
        load_attack_data,
        load_attack_model,
        run_experiment,
        write_experiment,
    )
    from robustcli.runtime import resolve_device

    cfg, o = step.config, step.config["options"]
    dev = resolve_device(cfg["device"])
    run_ids = [step.run] + [d.split("/", 1)[0] for d in step.deps[1:]]
    models = [load_attack_model(checkpoint=_checkpoint(root, r), device=dev) for r in run_ids]
    # as `robust attack`: without a data folder, the test images Foolbox ships (or digits')
    dataset = cfg["dataset"] if cfg["data_dir"] else None
    data = load_attack_data(
        models[0],
        dataset=dataset,
        data_dir=_path(cfg["data_dir"]),
        n_examples=o["n"],
        seed=o["seed"],
    )
    run = run_experiment(
        models,
        data,
        o["attacks"],
        params=o["params"],
        branches=o["branch"],
        epsilons=o["epsilons"],
        repeats=o["repeats"],
        batch_size=o["batch_size"],
        seed=o["seed"],
        max_seconds=o["max_seconds"],
        device=dev,
        command=["robust", "study", study, "--step", step.key],
    )
    title = f"{data.provenance['source']} (n={data.provenance['n_examples']})"
    write_experiment(run, (root / step.result).parent, force=True, title=title)


def _run_explain(step: Step, root: Path, study: str) -> None:
    from robustcli.explain import run_explain

    cfg, o = step.config, step.config["options"]
    run_explain(
        _checkpoint(root, step.run),
        data_dir=_path(cfg["data_dir"]),
        images=o["images"],
        layer=o["layer"],
        per_layer=o["per_layer"],
        localization=o["localization"],
        limit=o["limit"],
        out=(root / step.result).parent,
        force=True,
        device=cfg["device"],
        argv=["robust", "study", study, "--step", step.key],
    )


def execute_step(
    step: Step | Mapping[str, Any],
    out: str | os.PathLike[str],
    *,
    study: str = "study",
    threads: int | None = None,
) -> dict[str, Any]:
    """Run one step, write its result and then its stamp; return the stamp."""
    s = step if isinstance(step, Step) else Step.from_dict(step)
    root = Path(out)
    set_threads(threads)
    t0 = time.perf_counter()
    units: float | None = None
    if s.kind == "train":
        units = _run_train(s, root)
    elif s.kind == "eval-c":
        _run_eval_c(s, root)
    elif s.kind == "attack":
        _run_attack(s, root, study)
    elif s.kind == "explain":
        _run_explain(s, root, study)
    else:  # pragma: no cover - the schema admits no other kind
        raise ValueError(f"unknown step kind {s.kind!r}")
    seconds = time.perf_counter() - t0
    result = root / s.result
    stamp = {
        "schema": STAMP_SCHEMA,
        "schema_version": 1,
        "key": s.key,
        "hash": s.hash,
        "config": s.config,
        "deps": s.deps,
        "result": s.result,
        "result_sha256": file_sha256(result),
        "models": list(s.config.get("models") or [s.config.get("model")]),
        "units": units if units is not None else work_units(s),
        "seconds": seconds,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    atomic_write_json(root / s.stamp, stamp)
    return stamp
