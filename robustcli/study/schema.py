"""The study file (YAML, ``version: 1``): loading, profiles and validation.

Every problem is one line that names the file and the key path, e.g.
``studies/x.yaml: grid.seeds[2]: expected an integer >= 0, got 'a'``. ``docs/study.md`` is the
reference of the schema; ``load_study`` returns the validated, profile-merged document with every
default filled in, so the plan and the hashes never depend on how a study was spelled.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from robustcli.errors import RobustError
from robustcli.io import read_yaml as io_read_yaml

SCHEMA_VERSION = 1
STEP_KINDS = ("train", "eval-c", "attack", "explain")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

#: train options a study may set (steps.train and grid.overrides): robustcli.train.train's
#: keyword arguments, plus ``pp`` (the model's push-pull options, passed as model_overrides).
TRAIN_KEYS = (
    "recipe",
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "schedule",
    "label_smoothing",
    "augment",
    "precision",
    "train_limit",
    "test_limit",
    "pp",
)


class StudyError(RobustError):
    """A study file that cannot be used; ``path`` is the key path (``grid.seeds[2]``)."""

    def __init__(self, source: str, path: Sequence[str | int], problem: str) -> None:
        self.source = source
        self.path = tuple(path)
        self.problem = problem
        where = format_path(self.path)
        super().__init__(f"{source}: {where + ': ' if where else ''}{problem}")


def format_path(path: Sequence[str | int]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


# --------------------------------------------------------------------------------------------
# Small typed checkers: each takes (value, path) and returns the normalised value
# --------------------------------------------------------------------------------------------


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: Sequence[str | int], problem: str) -> StudyError:
        return StudyError(self.source, path, problem)

    def mapping(
        self, value: Any, path: Sequence[str | int], known: Sequence[str] | None = None
    ) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(path, f"expected a mapping (key: value), got {_show(value)}")
        for k in value:
            if not isinstance(k, str):
                raise self.fail([*path, str(k)], "keys must be text")
            if known is not None and k not in known:
                close = difflib.get_close_matches(k, known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise self.fail([*path, k], f"unknown key ({hint}known: {', '.join(known)})")
        return dict(value)

    def integer(
        self, value: Any, path: Sequence[str | int], low: int | None = None, *, null: bool = False
    ) -> int | None:
        if value is None and null:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            rule = f"an integer >= {low}" if low is not None else "an integer"
            raise self.fail(path, f"expected {rule}, got {_show(value)}")
        if low is not None and value < low:
            raise self.fail(path, f"expected an integer >= {low}, got {value}")
        return int(value)

    def number(
        self,
        value: Any,
        path: Sequence[str | int],
        low: float | None = None,
        *,
        low_open: bool = False,
        null: bool = False,
    ) -> float | None:
        if value is None and null:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(path, f"expected a number, got {_show(value)}")
        v = float(value)
        if not math.isfinite(v):
            raise self.fail(path, f"expected a finite number, got {value}")
        if low is not None and (v <= low if low_open else v < low):
            raise self.fail(
                path, f"expected a number {'>' if low_open else '>='} {low:g}, got {v:g}"
            )
        return v

    def text(self, value: Any, path: Sequence[str | int], *, null: bool = False) -> str | None:
        if value is None and null:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, f"expected text, got {_show(value)}")
        return value

    def boolean(self, value: Any, path: Sequence[str | int]) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"expected true or false, got {_show(value)}")
        return value

    def listing(
        self,
        value: Any,
        path: Sequence[str | int],
        item: Callable[[Any, list[str | int]], Any],
        *,
        nonempty: bool = True,
        scalar_ok: bool = False,
    ) -> list[Any]:
        if scalar_ok and not isinstance(value, list):
            value = [value]
        if not isinstance(value, list):
            raise self.fail(path, f"expected a list, got {_show(value)}")
        if nonempty and not value:
            raise self.fail(path, "expected at least one entry, got an empty list")
        return [item(v, [*path, i]) for i, v in enumerate(value)]


def _show(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def _model_entry(c: _Checker, value: Any, path: list[str | int]) -> dict[str, Any]:
    from robustcli.registry import get_model_spec

    if isinstance(value, str):
        value = {"model": value}
    m = c.mapping(value, path, ("model", "label"))
    if "model" not in m:
        raise c.fail(path, "expected a model name or {model: NAME, label: TEXT}")
    name = c.text(m["model"], [*path, "model"] if isinstance(value, Mapping) else path)
    try:
        get_model_spec(name)
    except RobustError:
        where = [*path, "model"] if len(m) > 1 else path
        raise c.fail(where, f"unknown model {name!r}: `robust models` lists the zoo") from None
    label = c.text(m.get("label", name), [*path, "label"])
    return {"model": name, "label": label}


def _channels(model: str) -> int:
    from robustcli.registry import get_model_spec

    return int(get_model_spec(model).input_shape[0])


def _train_options(c: _Checker, value: Any, path: list[str | int]) -> dict[str, Any]:
    m = c.mapping(value, path, TRAIN_KEYS)
    out: dict[str, Any] = {}
    for k, v in m.items():
        p = [*path, k]
        if v is None:
            continue
        if k in ("epochs", "batch_size", "train_limit", "test_limit"):
            out[k] = c.integer(v, p, 1)
        elif k == "lr":
            out[k] = c.number(v, p, 0, low_open=True)
        elif k in ("momentum", "weight_decay", "label_smoothing"):
            out[k] = c.number(v, p, 0)
        elif k == "nesterov":
            out[k] = c.boolean(v, p)
        elif k == "recipe":
            out[k] = _choice(c, v, p, _recipes())
        elif k == "precision":
            out[k] = _choice(c, v, p, ("auto", "bf16", "fp32", "fp64"))
        elif k == "pp":
            out[k] = c.mapping(v, p)
        else:
            out[k] = c.text(v, p)
    return out


def _recipes() -> tuple[str, ...]:
    from robustcli.train import RECIPES

    return tuple(RECIPES)


def _choice(c: _Checker, value: Any, path: list[str | int], choices: Sequence[str]) -> str:
    text = c.text(value, path)
    if text not in choices:
        raise c.fail(path, f"unknown value {text!r}: choose one of {', '.join(choices)}")
    return text


def _names(c: _Checker, value: Any, path: list[str | int]) -> str:
    """A comma-separated selection (``common``, ``noise,blur``) or a list of names."""
    if isinstance(value, list):
        items = c.listing(value, path, lambda v, p: c.text(v, p))
        return ",".join(items)
    return c.text(value, path)


def _eval_c(c: _Checker, value: Any, path: list[str | int]) -> dict[str, Any]:
    from robustcli.evaluate import parse_severities, select_corruptions

    m = c.mapping(
        value,
        path,
        (
            "corruptions",
            "severities",
            "n",
            "generate",
            "cifar_c_dir",
            "batch_size",
            "seed",
            "clean",
            "per_image",
        ),
    )
    out: dict[str, Any] = {
        "corruptions": _names(c, m.get("corruptions", "common"), [*path, "corruptions"]),
        "severities": m.get("severities", "1-5"),
        "n": c.integer(m.get("n"), [*path, "n"], 1, null=True),
        "generate": c.boolean(m.get("generate", "cifar_c_dir" not in m), [*path, "generate"]),
        "cifar_c_dir": c.text(m.get("cifar_c_dir"), [*path, "cifar_c_dir"], null=True),
        "batch_size": c.integer(m.get("batch_size"), [*path, "batch_size"], 1, null=True),
        "seed": c.integer(m.get("seed", 0), [*path, "seed"], 0),
        "clean": c.boolean(m.get("clean", True), [*path, "clean"]),
    }
    # only when asked: a key absent by default keeps earlier steps' config (and results) valid
    if c.boolean(m.get("per_image", False), [*path, "per_image"]):
        out["per_image"] = True
    try:
        out["corruptions"] = ",".join(select_corruptions(out["corruptions"]))
    except RobustError as exc:
        raise c.fail([*path, "corruptions"], str(exc)) from None
    sev = out["severities"]
    if isinstance(sev, list):
        sev = ",".join(str(s) for s in sev)
    try:
        out["severities"] = ",".join(str(s) for s in parse_severities(str(sev)))
    except RobustError as exc:
        raise c.fail([*path, "severities"], str(exc)) from None
    if out["generate"] == (out["cifar_c_dir"] is not None):
        raise c.fail(path, "choose the corrupted data: generate: true or cifar_c_dir: DIR")
    return out


def _attack(
    c: _Checker, value: Any, path: list[str | int], models: Sequence[str]
) -> dict[str, Any]:
    from robustcli.attacks import parse_param_overrides, resolve_attacks

    m = c.mapping(
        value,
        path,
        (
            "attacks",
            "n",
            "repeats",
            "params",
            "epsilons",
            "vs",
            "batch_size",
            "max_seconds",
            "branch",
            "seed",
        ),
    )
    attacks = _names(c, m.get("attacks", "lelekas2020"), [*path, "attacks"])
    try:
        names = resolve_attacks(attacks)
    except RobustError as exc:
        raise c.fail([*path, "attacks"], str(exc)) from None
    params_in = c.mapping(m.get("params"), [*path, "params"], names)
    items = []
    for a, kv in params_in.items():
        for k, v in c.mapping(kv, [*path, "params", a]).items():
            items.append(f"{a}.{k}={_yaml_scalar(v)}")
    try:
        params = parse_param_overrides(items)
    except RobustError as exc:
        raise c.fail([*path, "params"], str(exc)) from None
    vs = c.mapping(m.get("vs"), [*path, "vs"])
    for k, v in vs.items():
        if k not in models:
            raise c.fail([*path, "vs", k], f"{k!r} is not a model of grid.models")
        partner = c.text(v, [*path, "vs", k])
        if partner not in models:
            raise c.fail([*path, "vs", k], f"partner {partner!r} is not a model of grid.models")
        if partner == k:
            raise c.fail([*path, "vs", k], "a model cannot be its own partner")
    eps = m.get("epsilons")
    return {
        "attacks": names,
        "n": c.integer(m.get("n"), [*path, "n"], 1, null=True),
        "repeats": c.integer(m.get("repeats", 3), [*path, "repeats"], 1),
        "params": params,
        "epsilons": None
        if eps is None
        else sorted(
            set(c.listing(eps, [*path, "epsilons"], lambda v, p: c.number(v, p, 0, low_open=True)))
        ),
        "vs": dict(sorted(vs.items())),
        "batch_size": c.integer(m.get("batch_size", 128), [*path, "batch_size"], 1),
        "max_seconds": c.number(
            m.get("max_seconds"), [*path, "max_seconds"], 0, low_open=True, null=True
        ),
        "branch": _names(c, m.get("branch", "all"), [*path, "branch"]).split(","),
        "seed": c.integer(m.get("seed", 0), [*path, "seed"], 0),
    }


def _yaml_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _explain(c: _Checker, value: Any, path: list[str | int]) -> dict[str, Any]:
    m = c.mapping(value, path, ("images", "layer", "localization", "limit", "per_layer"))
    return {
        "images": c.integer(m.get("images", 8), [*path, "images"], 1),
        "layer": c.text(m.get("layer"), [*path, "layer"], null=True),
        "localization": c.boolean(m.get("localization", False), [*path, "localization"]),
        "limit": c.integer(m.get("limit"), [*path, "limit"], 1, null=True),
        "per_layer": c.boolean(m.get("per_layer", False), [*path, "per_layer"]),
    }


def _resources(c: _Checker, value: Any, path: list[str | int]) -> dict[str, dict[str, float]]:
    m = c.mapping(value, path, ("default", *STEP_KINDS))
    out: dict[str, dict[str, float]] = {}
    for k, v in m.items():
        r = c.mapping(v, [*path, k], ("cpus", "gpus"))
        out[k] = {
            "cpus": c.number(r.get("cpus", 1), [*path, k, "cpus"], 0, low_open=True),
            "gpus": c.number(r.get("gpus", 0), [*path, k, "gpus"], 0),
        }
    return out


def _paper(c: _Checker, value: Any, path: list[str | int], labels: Sequence[str]) -> dict[str, Any]:
    if value is None:
        return {}
    m = c.mapping(value, path, ("source", "note", "values"))
    source = c.text(m.get("source"), [*path, "source"])
    values = c.mapping(m.get("values"), [*path, "values"])
    out: dict[str, dict[str, float]] = {}
    for label, metrics in values.items():
        mm = c.mapping(metrics, [*path, "values", label])
        out[label] = {k: float(c.number(v, [*path, "values", label, k])) for k, v in mm.items()}
    return {
        "source": source,
        "note": c.text(m.get("note"), [*path, "note"], null=True),
        "values": out,
    }


def _report(c: _Checker, value: Any, path: list[str | int]) -> dict[str, Any]:
    m = c.mapping(value, path, ("metrics", "derived", "baseline", "floatfmt"))
    derived = c.mapping(m.get("derived"), [*path, "derived"])
    return {
        "metrics": c.listing(
            m.get("metrics", list(DEFAULT_METRICS)), [*path, "metrics"], lambda v, p: c.text(v, p)
        ),
        "derived": {
            k: c.listing(v, [*path, "derived", k], lambda x, p: c.text(x, p))
            for k, v in derived.items()
        },
        "baseline": c.text(m.get("baseline"), [*path, "baseline"], null=True),
    }


DEFAULT_METRICS = (
    "train:test_acc",
    "clean_acc",
    "corruptions_acc",
    "group:*",
    "attack:*:median_l2",
    "attack:*:auc",
)

TOP_KEYS = (
    "version",
    "name",
    "description",
    "dataset",
    "data_dir",
    "device",
    "grid",
    "steps",
    "resources",
    "profiles",
    "paper",
    "report",
)
PROFILE_KEYS = tuple(k for k in TOP_KEYS if k not in ("version", "name", "profiles"))


def validate(doc: Any, source: str) -> dict[str, Any]:
    """The validated study with every default filled in (profiles are not applied here)."""
    from robustcli.data import dataset_names

    c = _Checker(source)
    m = c.mapping(doc, [], TOP_KEYS)
    if "version" not in m:
        raise c.fail(["version"], f"missing: add `version: {SCHEMA_VERSION}` (the schema version)")
    version = c.integer(m["version"], ["version"], 1)
    if version != SCHEMA_VERSION:
        raise c.fail(
            ["version"],
            f"version {version} is not supported: this robustcli reads version {SCHEMA_VERSION}",
        )
    if "name" not in m:
        raise c.fail(["name"], "missing: give the study a name (letters, digits, . _ -)")
    name = c.text(m["name"], ["name"])
    if not NAME_RE.match(name):
        raise c.fail(["name"], f"{name!r}: use letters, digits, '.', '_' and '-' only")
    if "dataset" not in m:
        raise c.fail(["dataset"], f"missing: one of {', '.join(dataset_names())}")
    dataset = _choice(c, m["dataset"], ["dataset"], dataset_names())
    if "grid" not in m:
        raise c.fail(["grid"], "missing: a grid with models (and seeds, overrides)")
    g = c.mapping(m["grid"], ["grid"], ("models", "seeds", "overrides"))
    if "models" not in g:
        raise c.fail(["grid", "models"], "missing: list the zoo models to run")
    models = c.listing(g["models"], ["grid", "models"], lambda v, p: _model_entry(c, v, p))
    seen: set[str] = set()
    for i, e in enumerate(models):
        if e["model"] in seen:
            raise c.fail(["grid", "models", i], f"{e['model']!r} is listed twice")
        seen.add(e["model"])
    seeds = c.listing(g.get("seeds", [0]), ["grid", "seeds"], lambda v, p: c.integer(v, p, 0))
    if len(set(seeds)) != len(seeds):
        raise c.fail(["grid", "seeds"], "a seed is listed twice")
    ov = c.mapping(g.get("overrides"), ["grid", "overrides"])
    overrides: dict[str, dict[str, Any]] = {}
    for k, v in ov.items():
        if not NAME_RE.match(k):
            raise c.fail(["grid", "overrides", k], "override names: letters, digits, . _ - only")
        overrides[k] = _train_options(c, v, ["grid", "overrides", k])
    if not overrides:
        overrides = {"default": {}}
    s = c.mapping(m.get("steps"), ["steps"], STEP_KINDS)
    names = [e["model"] for e in models]
    steps: dict[str, Any] = {"train": _train_options(c, s.get("train"), ["steps", "train"])}
    if "eval-c" in s:
        steps["eval-c"] = _eval_c(c, s["eval-c"], ["steps", "eval-c"])
        gray = [n for n in (e["model"] for e in models) if _channels(n) != 3]
        if gray:
            raise c.fail(
                ["steps", "eval-c"],
                f"CIFAR-10-C corruptions need RGB models; {', '.join(gray)} take grey input: "
                "drop eval-c or those models",
            )
    if "attack" in s:
        steps["attack"] = _attack(c, s["attack"], ["steps", "attack"], names)
    if "explain" in s:
        steps["explain"] = _explain(c, s["explain"], ["steps", "explain"])
    labels = [e["label"] for e in models]
    report = _report(c, m.get("report"), ["report"])
    if report["baseline"] is not None and report["baseline"] not in labels + names:
        raise c.fail(["report", "baseline"], f"{report['baseline']!r} is not a model of the grid")
    return {
        "version": version,
        "name": name,
        "description": c.text(m.get("description"), ["description"], null=True),
        "dataset": dataset,
        "data_dir": c.text(m.get("data_dir"), ["data_dir"], null=True),
        "device": c.text(m.get("device", "auto"), ["device"]),
        "grid": {"models": models, "seeds": seeds, "overrides": overrides},
        "steps": steps,
        "resources": _resources(c, m.get("resources"), ["resources"]),
        "paper": _paper(c, m.get("paper"), ["paper"], labels),
        "report": report,
    }


#: Mappings a profile replaces whole instead of merging into (their keys name grid models or
#: override sets, which a profile usually changes).
REPLACED = {("steps", "attack", "vs"), ("grid", "overrides")}


def merge(base: Any, over: Any, path: tuple[str, ...] = ()) -> Any:
    """``over`` deep-merged onto ``base``: mappings merge key by key (except ``REPLACED``),
    anything else (lists included) replaces."""
    if isinstance(base, Mapping) and isinstance(over, Mapping) and path not in REPLACED:
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base[k], v, (*path, k)) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def _within(doc: Any, path: Sequence[str | int]) -> bool:
    """Whether ``path`` (or a prefix of it that holds a scalar) is spelled out in ``doc``."""
    for p in path:
        in_map = isinstance(doc, Mapping) and p in doc
        in_list = isinstance(doc, list) and isinstance(p, int) and 0 <= p < len(doc)
        if not (in_map or in_list):
            return False
        doc = doc[p]
    return True


def read_yaml(path: str | os.PathLike[str]) -> Any:
    return io_read_yaml(path, "study file", "pass a study file (YAML)")


def load_study(
    path: str | os.PathLike[str] | Mapping[str, Any],
    profile: str | None = None,
    *,
    source: str | None = None,
) -> dict[str, Any]:
    """Read, validate and resolve a study: the base document, every profile checked (a typo in
    an unused profile is an error too), then ``profile`` merged on top. The result carries
    ``profile`` (or None) and the names of all ``profiles``."""
    doc = dict(path) if isinstance(path, Mapping) else read_yaml(path)
    src = source or (str(path) if not isinstance(path, Mapping) else "study")
    c = _Checker(src)
    top = c.mapping(doc, [], TOP_KEYS)
    profiles = c.mapping(top.pop("profiles", None), ["profiles"])
    resolved = validate(top, src)
    for pname, pdoc in profiles.items():
        p = ["profiles", pname]
        if not NAME_RE.match(pname):
            raise c.fail(p, "profile names: letters, digits, . _ - only")
        pm = c.mapping(pdoc, p, PROFILE_KEYS)
        try:
            merged = validate(merge(top, pm), src)
        except StudyError as exc:
            where = [*p, *exc.path] if _within(pm, exc.path) else list(exc.path)
            raise StudyError(src, where, exc.problem) from None
        if pname == profile:
            resolved = merged
    if profile is not None and profile not in profiles:
        known = ", ".join(profiles) or "none"
        raise RobustError(f"{src}: no profile {profile!r} (profiles: {known})")
    resolved["profile"] = profile
    resolved["profiles"] = list(profiles)
    return resolved
