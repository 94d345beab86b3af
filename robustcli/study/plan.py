"""Grid expansion, step hashes and what is already done (the cache rule).

A *run* is one (model, seed, override set) of the grid; its *steps* are train, then eval-c,
attack and explain on the trained checkpoint. Each step has a resolved configuration (every
option that changes its result, with defaults filled in) and a hash of it that also covers the
hashes of the steps it depends on. A step is *done* when its stamp file
(``runs/<run>/<step>.step.json``) holds the same hash and its result file still has the
sha256 recorded in the stamp; a step whose dependency must run again runs again too.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustcli.io import file_sha256

STAMP_SCHEMA = "robustcli-study-step"
#: (train, test) split sizes, for the time estimates only.
SPLIT_SIZES = {
    "cifar10": (50000, 10000),
    "mnist": (60000, 10000),
    "fashion-mnist": (60000, 10000),
    "digits": (1433, 364),
}


@dataclass
class Run:
    id: str
    model: str
    label: str
    seed: int
    override: str
    train: dict[str, Any]

    @property
    def row(self) -> str:
        """The report row: the model's label, plus the override set when there are several."""
        return self.label if self.override == "default" else f"{self.label} [{self.override}]"


@dataclass
class Step:
    run: str
    kind: str
    config: dict[str, Any]
    hash: str
    deps: list[str] = field(default_factory=list)
    result: str = ""  # path of the result JSON, relative to the study folder
    resources: dict[str, float] = field(default_factory=dict)
    status: str = "pending"  # "done" (cached) or "pending"
    reason: str = ""  # why a pending step runs: missing, changed, dependency

    @property
    def key(self) -> str:
        return f"{self.run}/{self.kind}"

    @property
    def stamp(self) -> str:
        return f"runs/{self.run}/{self.kind}.step.json"

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "run": self.run,
            "kind": self.kind,
            "hash": self.hash,
            "deps": list(self.deps),
            "result": self.result,
            "resources": dict(self.resources),
            "config": self.config,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Step:
        return cls(
            run=d["run"],
            kind=d["kind"],
            config=dict(d["config"]),
            hash=d["hash"],
            deps=list(d["deps"]),
            result=d["result"],
            resources=dict(d["resources"]),
        )


@dataclass
class Plan:
    study: dict[str, Any]
    out: Path
    runs: list[Run]
    steps: list[Step]  # in dependency order

    @property
    def pending(self) -> list[Step]:
        return [s for s in self.steps if s.status != "done"]

    def step(self, key: str) -> Step:
        return next(s for s in self.steps if s.key == key)


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 (16 hex digits) of the canonical JSON of ``config``, without ``data_dir``: where
    the data lies is not what it is, so moving a dataset does not rerun a study."""
    config = {k: v for k, v in config.items() if k != "data_dir"}
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_id(model: str, seed: int, override: str) -> str:
    return f"{model}{'' if override == 'default' else '-' + override}-s{seed}"


def expand_grid(study: Mapping[str, Any]) -> list[Run]:
    """models x override sets x seeds, in that order; the override set is merged over
    ``steps.train`` (its ``pp`` options over the step's)."""
    grid = study["grid"]
    base = dict(study["steps"]["train"])
    runs = []
    for entry in grid["models"]:
        for oname, ov in grid["overrides"].items():
            opts = dict(base)
            for k, v in ov.items():
                opts[k] = {**opts.get(k, {}), **v} if k == "pp" else v
            for seed in grid["seeds"]:
                runs.append(
                    Run(
                        id=run_id(entry["model"], seed, oname),
                        model=entry["model"],
                        label=entry["label"],
                        seed=seed,
                        override=oname,
                        train=dict(sorted(opts.items())),
                    )
                )
    return runs


def _resources(study: Mapping[str, Any], kind: str) -> dict[str, float]:
    res = study.get("resources") or {}
    return dict(res.get(kind) or res.get("default") or {"cpus": 1.0, "gpus": 0.0})


def build_plan(study: Mapping[str, Any], out: str | os.PathLike[str]) -> Plan:
    """Every run and step of ``study`` with its hash, and which are done in ``out``."""
    root = Path(out)
    runs = expand_grid(study)
    by_key = {(r.model, r.seed, r.override): r for r in runs}
    steps: list[Step] = []
    train_hash: dict[str, str] = {}
    common = {"dataset": study["dataset"], "data_dir": study["data_dir"]}
    device = study["device"]
    for r in runs:
        cfg = {
            "kind": "train",
            "model": r.model,
            "seed": r.seed,
            **common,
            "device": device,
            "options": r.train,
        }
        h = config_hash(cfg)
        train_hash[r.id] = h
        steps.append(
            Step(
                r.id,
                "train",
                cfg,
                h,
                [],
                f"runs/{r.id}/train/result.json",
                _resources(study, "train"),
            )
        )
    st = study["steps"]
    partners_of = set(st.get("attack", {}).get("vs", {}).values())
    for r in runs:
        train_key = f"{r.id}/train"
        if "eval-c" in st:
            cfg = {"kind": "eval-c", "models": [r.model], "dataset": common["dataset"]}
            cfg["device"] = device
            cfg["options"] = st["eval-c"]
            cfg["deps"] = {"train": train_hash[r.id]}
            steps.append(
                Step(
                    r.id,
                    "eval-c",
                    cfg,
                    config_hash(cfg),
                    [train_key],
                    f"runs/{r.id}/eval-c.json",
                    _resources(study, "eval-c"),
                )
            )
        if "attack" in st:
            a = st["attack"]
            partner = a["vs"].get(r.model)
            # a model that is some other model's partner is attacked beside it, not alone
            if partner is not None or r.model not in partners_of:
                deps = [train_key]
                dep_hashes = {"train": train_hash[r.id]}
                models = [r.model]
                if partner is not None:
                    p = by_key[(partner, r.seed, r.override)]
                    deps.append(f"{p.id}/train")
                    dep_hashes["vs"] = train_hash[p.id]
                    models.append(partner)
                options = {k: v for k, v in a.items() if k != "vs"}
                cfg = {
                    "kind": "attack",
                    "models": models,
                    "dataset": common["dataset"],
                    "data_dir": common["data_dir"],
                    "device": device,
                    "options": options,
                    "deps": dep_hashes,
                }
                steps.append(
                    Step(
                        r.id,
                        "attack",
                        cfg,
                        config_hash(cfg),
                        deps,
                        f"runs/{r.id}/attack/attack.json",
                        _resources(study, "attack"),
                    )
                )
        if "explain" in st:
            cfg = {
                "kind": "explain",
                "models": [r.model],
                "dataset": common["dataset"],
                "data_dir": common["data_dir"],
                "device": device,
                "options": st["explain"],
                "deps": {"train": train_hash[r.id]},
            }
            steps.append(
                Step(
                    r.id,
                    "explain",
                    cfg,
                    config_hash(cfg),
                    [train_key],
                    f"runs/{r.id}/explain/explain.json",
                    _resources(study, "explain"),
                )
            )
    plan = Plan(dict(study), root, runs, steps)
    refresh_status(plan)
    return plan


def read_stamp(root: Path, step: Step) -> dict[str, Any] | None:
    try:
        doc = json.loads((root / step.stamp).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("schema") == STAMP_SCHEMA else None


def refresh_status(plan: Plan) -> None:
    """Mark each step done or pending (and why), propagating "pending" to dependants."""
    status: dict[str, str] = {}
    for s in plan.steps:
        stamp = read_stamp(plan.out, s)
        result = plan.out / s.result
        if stamp is None or not result.is_file():
            s.status, s.reason = "pending", "not run yet" if stamp is None else "result missing"
        elif stamp.get("hash") != s.hash:
            s.status, s.reason = "pending", "configuration changed"
        elif stamp.get("result_sha256") != file_sha256(result):
            s.status, s.reason = "pending", "result changed on disk"
        elif any(status.get(d) != "done" for d in s.deps):
            s.status, s.reason = "pending", "a step it depends on runs again"
        else:
            s.status, s.reason = "done", ""
        status[s.key] = s.status


# --------------------------------------------------------------------------------------------
# Time estimates: measured throughput (work units per second) of earlier steps
# --------------------------------------------------------------------------------------------


def work_units(step: Step) -> float | None:
    """How much work a step is, in images processed (the unit its throughput is measured in)."""
    cfg = step.config
    sizes = SPLIT_SIZES.get(str(cfg.get("dataset")))
    o = cfg["options"]
    if step.kind == "train":
        n = o.get("train_limit") or (sizes[0] if sizes else None)
        epochs = o.get("epochs")
        if epochs is None:
            from robustcli.train import get_recipe

            try:
                epochs = get_recipe(o.get("recipe") or "fast", cfg.get("dataset")).epochs
            except Exception:
                epochs = None
        if n is None or epochs is None:
            return None
        return float(n * epochs)
    if step.kind == "eval-c":
        n = o.get("n") or 10000
        conditions = len(o["corruptions"].split(",")) * len(o["severities"].split(","))
        return float(n * (conditions + (1 if o.get("clean") else 0)))
    if step.kind == "attack":
        n = o.get("n") or 20
        return float(n * len(o["attacks"]) * len(cfg["models"]))
    if step.kind == "explain":
        return float(o.get("images", 8))
    return None


def _measure_key(step: Step) -> tuple[str, ...]:
    cfg = step.config
    models = cfg.get("models") or [cfg["model"]]
    return (step.kind, ",".join(models), str(cfg.get("dataset")))


def _stamp_rates(paths: Iterable[Path]) -> dict[tuple[str, ...], float]:
    rates: dict[tuple[str, ...], list[float]] = {}
    for path in paths:
        try:
            stamp = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(stamp, dict) or stamp.get("schema") != STAMP_SCHEMA:
            continue
        units, secs = stamp.get("units"), stamp.get("seconds")
        kind = str(stamp.get("key", "")).rsplit("/", 1)[-1]
        dataset = str((stamp.get("config") or {}).get("dataset"))
        if units and secs and secs > 0:
            key = (kind, ",".join(stamp.get("models") or []), dataset)
            rates.setdefault(key, []).append(float(units) / float(secs))
    return {k: sum(v) / len(v) for k, v in rates.items()}


def measured_throughputs(plan: Plan) -> dict[tuple[str, ...], float]:
    """Units (images) per second of finished steps, by step kind, model(s) and dataset: those of
    this study folder (any hash: the first seed's runs estimate the others), else those of the
    other study folders beside it (e.g. a `cpu` profile's runs estimate the `full` one)."""
    rates = _stamp_rates(plan.out.glob("runs/*/*.step.json"))
    if plan.out.parent.is_dir():
        siblings = _stamp_rates(
            p
            for p in plan.out.parent.glob("*/runs/*/*.step.json")
            if p.parents[2].resolve() != plan.out.resolve()
        )
        rates = {**siblings, **rates}
    return rates


def estimate_seconds(step: Step, rates: Mapping[tuple[str, ...], float]) -> float | None:
    units = work_units(step)
    rate = rates.get(_measure_key(step))
    if units is None or rate is None or rate <= 0:
        return None
    return units / rate


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
