"""The attacks `robust attack` knows, by name, with their defaults and how each one's per-sample
minimal L2 distance is obtained.

``list_attacks(group)``, ``get_attack_spec(name)``, ``build_attack(name, **params)`` and
``resolve_attacks("lelekas2020,pgd")`` are the public surface; ``register_attack`` adds one.
Groups: ``lelekas2020`` (the attacks of paper B's Fig. 6, Lelekas et al. 2020; ``paper-b`` is
its old name, kept as an alias for one release), ``noise-fb2`` (paper B's additive-noise
attacks with Foolbox 2's search, ``robustcli.attacks.fb2noise``), ``gradient`` (DDN, DeepFool,
C&W, FMN, PGD), ``all``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import foolbox as fb

from robustcli.attacks.methods import (
    AttackMethod,
    BlendedNoiseSearch,
    EpsilonSearch,
    FoolboxMinimization,
    GaussianBlurSearch,
    L2PGDPerSample,
    MinimalSpatial,
    PointwiseSearch,
    SaltAndPepperSearch,
    check_params,
)
from robustcli.errors import RobustError

GROUPS = ("lelekas2020", "noise-fb2", "gradient", "all")
#: Old group names, accepted for one release.
GROUP_ALIASES = {"paper-b": "lelekas2020"}


@dataclass(frozen=True)
class AttackSpec:
    """One named attack.

    ``build(**params)`` returns an ``AttackMethod``; ``defaults`` lists every parameter it takes
    (``--param NAME.KEY=VALUE`` overrides them); ``minimal_l2`` says in one sentence how the
    per-sample minimal L2 is obtained (shown by ``robust attack --list`` and in docs/attack.md).
    """

    name: str
    title: str
    group: str
    kind: str
    stochastic: bool
    minimal_l2: str
    build: Callable[..., AttackMethod]
    defaults: Mapping[str, Any] = field(default_factory=dict)


ATTACKS: dict[str, AttackSpec] = {}


def register_attack(spec: AttackSpec) -> AttackSpec:
    """Add an attack by name; a name already taken is refused (no silent replacement)."""
    if spec.name in ATTACKS:
        raise RobustError(f"attack {spec.name!r} is already registered: choose another name")
    ATTACKS[spec.name] = spec
    return spec


def list_attacks(group: str = "all") -> list[str]:
    """Names of the attacks of ``group`` (one of ``GROUPS`` or an old name in
    ``GROUP_ALIASES``), in table order."""
    group = GROUP_ALIASES.get(group, group)
    if group not in GROUPS:
        raise RobustError(f"unknown attack group {group!r}: use one of {', '.join(GROUPS)}")
    return [n for n, s in ATTACKS.items() if group == "all" or s.group == group]


def get_attack_spec(name: str) -> AttackSpec:
    if name not in ATTACKS:
        hint = difflib.get_close_matches(name, list(ATTACKS), n=3, cutoff=0.4)
        did = f"did you mean {', '.join(hint)}? " if hint else ""
        raise RobustError(
            f"unknown attack {name!r}: {did}choose from {', '.join(ATTACKS)} "
            f"or a group ({', '.join(GROUPS)})"
        )
    return ATTACKS[name]


def resolve_attacks(names: str | list[str]) -> list[str]:
    """``"lelekas2020,pgd"`` -> attack names, groups expanded, duplicates dropped, order kept."""
    items = names.split(",") if isinstance(names, str) else list(names)
    out: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        is_group = item in GROUPS or item in GROUP_ALIASES
        for name in list_attacks(item) if is_group else [get_attack_spec(item).name]:
            if name not in out:
                out.append(name)
    if not out:
        raise RobustError(
            "no attack selected: pass e.g. --attacks lelekas2020 or --attacks ddn,pgd"
        )
    return out


#: Allowed range per parameter name: (low, high, low_open); ints and floats alike must be finite.
PARAM_LIMITS: dict[str, tuple[float | None, float | None, bool]] = {
    "steps": (1, None, False),
    "binary_search_steps": (1, None, False),
    "init_steps": (1, None, False),
    "directions": (1, None, False),
    "candidates": (2, None, False),
    "num_translations": (1, None, False),
    "num_rotations": (1, None, False),
    "refine": (0, None, False),
    "start": (0, None, True),
    "ratio": (1, None, True),
    "rel_stepsize": (0, None, True),
    "init_epsilon": (0, None, True),
    "gamma": (0, 1, True),
    "stepsize": (0, None, True),
    "initial_const": (0, None, True),
    "max_stepsize": (0, None, True),
    "overshoot": (0, None, False),
    "max_translation": (0, None, False),
    "max_rotation": (0, None, False),
}


def _expected(default: Any, key: str) -> str:
    low, high, low_open = PARAM_LIMITS.get(key, (None, None, False))
    kind = (
        "true or false"
        if isinstance(default, bool)
        else "an integer"
        if isinstance(default, int)
        else "a number"
        if isinstance(default, float)
        else f"a {type(default).__name__}"
    )
    rule = []
    if low is not None and not isinstance(default, bool):
        rule.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None and not isinstance(default, bool):
        rule.append(f"<= {high:g}")
    return kind + (" " + " and ".join(rule) if rule else "")


def coerce_param(attack: str, key: str, value: Any) -> Any:
    """``value`` as the type of the default of ``attack``'s parameter ``key``, within its range;
    else a one-line ``RobustError`` naming the parameter, the expected type and the default.

    ``"200"`` / ``200.0`` -> ``200`` for an integer, ``"1e-3"`` -> ``0.001`` for a number; a bool
    is never a number and a number never a bool."""
    spec = get_attack_spec(attack)
    default = spec.defaults[key]
    bad = RobustError(
        f"bad value {value!r} for attack parameter {attack}.{key}: expected "
        f"{_expected(default, key)} (default {default!r}), e.g. -p {attack}.{key}={default}"
    )
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise bad
    if isinstance(default, int | float):
        if isinstance(value, bool):
            raise bad
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise bad from None
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise bad
        if isinstance(default, int):
            if float(value) != int(value):
                raise bad
            value = int(value)
        else:
            value = float(value)
        low, high, low_open = PARAM_LIMITS.get(key, (None, None, False))
        if low is not None and (value <= low if low_open else value < low):
            raise bad
        if high is not None and value > high:
            raise bad
        return value
    if not isinstance(value, type(default)):
        raise bad
    return value


def attack_params(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The defaults of ``name`` with ``overrides`` applied: unknown keys, values of the wrong
    type (``ddn.steps="abc"``) and out-of-range values are one-line ``RobustError``s."""
    spec = get_attack_spec(name)
    overrides = dict(overrides or {})
    check_params(name, overrides, list(spec.defaults))
    return {**spec.defaults, **{k: coerce_param(name, k, v) for k, v in overrides.items()}}


def build_attack(name: str, **overrides: Any) -> AttackMethod:
    """The ``AttackMethod`` of ``name`` with its defaults and ``overrides`` (checked)."""
    spec = get_attack_spec(name)
    params = attack_params(name, overrides)
    try:
        return spec.build(**params)
    except (TypeError, ValueError) as exc:
        raise RobustError(f"invalid parameters for attack {name!r}: {exc}") from None


def parse_param_overrides(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``["cw.steps=200", "pgd.refine=2"]`` -> ``{"cw": {"steps": 200}, "pgd": {"refine": 2}}``.

    Values are read as YAML scalars (``200`` int, ``0.5`` float, ``false`` bool) and must match
    the type and range of the parameter's default (``attack_params``): ``ddn.steps=abc`` is a
    one-line ``RobustError`` naming the parameter and the expected type.
    """
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        attack, dot, param = key.strip().partition(".")
        if not sep or not dot or not attack or not param or not value.strip():
            raise RobustError(f"bad --param {item!r}: write ATTACK.KEY=VALUE, e.g. cw.steps=200")
        get_attack_spec(attack)
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        out.setdefault(attack, {})[param.strip()] = parsed
    return {
        attack: {k: attack_params(attack, params)[k] for k in params}
        for attack, params in out.items()
    }


# --------------------------------------------------------------------------- builders


def _noise_search(cls: type) -> Callable[..., AttackMethod]:
    def build(start: float, ratio: float, refine: int) -> AttackMethod:
        return EpsilonSearch(cls(), start=start, ratio=ratio, refine=refine, stochastic=True)

    return build


def _foolbox(cls: type, *, stochastic: bool = False, **fixed: Any) -> Callable[..., AttackMethod]:
    """A Foolbox minimization attack built with its registered parameters (plus ``fixed``)."""

    def build(**params: Any) -> AttackMethod:
        return FoolboxMinimization(cls(**fixed, **params), stochastic=stochastic)

    return build


def _pgd(steps: int, rel_stepsize: float, start: float, ratio: float, refine: int) -> AttackMethod:
    attack = L2PGDPerSample(steps=steps, rel_stepsize=rel_stepsize, random_start=True)
    return EpsilonSearch(attack, start=start, ratio=ratio, refine=refine, stochastic=True)


_NOISE = {"start": 0.05, "ratio": 1.1, "refine": 2}
_NOISE_HOW = (
    "{what} of L2 size eps (then clipped to [0,1]), eps on a geometric grid from 0.05 "
    "(x1.1 per step, fresh noise each step) up to sqrt(C*H*W), then 2 bisection steps of the "
    "bracket: the smallest measured L2 that fools"
)

register_attack(
    AttackSpec(
        "gaussian",
        "Additive Gaussian noise",
        "lelekas2020",
        "noise",
        True,
        _NOISE_HOW.format(what="Gaussian noise (foolbox L2AdditiveGaussianNoiseAttack)"),
        _noise_search(fb.attacks.L2AdditiveGaussianNoiseAttack),
        _NOISE,
    )
)
register_attack(
    AttackSpec(
        "uniform",
        "Additive uniform noise",
        "lelekas2020",
        "noise",
        True,
        _NOISE_HOW.format(what="Uniform noise (foolbox L2AdditiveUniformNoiseAttack)"),
        _noise_search(fb.attacks.L2AdditiveUniformNoiseAttack),
        _NOISE,
    )
)
register_attack(
    AttackSpec(
        "salt-pepper",
        "Salt-and-pepper noise",
        "lelekas2020",
        "decision",
        True,
        "foolbox SaltAndPepperNoiseAttack's algorithm (minimization: raises the noise "
        "probability over `steps` steps and narrows it around the best hit; in torch, the same "
        "images as Foolbox's given the seed, the pointwise start too): the L2 of its result",
        lambda steps: SaltAndPepperSearch(steps=steps),
        {"steps": 1000},
    )
)
register_attack(
    AttackSpec(
        "pointwise",
        "Pointwise",
        "lelekas2020",
        "decision",
        True,
        "foolbox PointwiseAttack's algorithm from a salt-and-pepper start (images the start "
        "cannot fool are failures): resets values to the clean ones while still adversarial, "
        "then a binary search per value, each image classified only while it changes; the L2 of "
        "its result",
        lambda init_steps, l2_binary_search: PointwiseSearch(
            init_steps=init_steps, l2_binary_search=l2_binary_search
        ),
        {"init_steps": 1000, "l2_binary_search": True},
    )
)
register_attack(
    AttackSpec(
        "blur",
        "Gaussian blur",
        "lelekas2020",
        "decision",
        False,
        "foolbox GaussianBlurAttack's search (linear in sigma up to max(H, W), `steps` steps, "
        "first fooling sigma), each image evaluated only until fooled; the L2 of the blurred image",
        lambda steps: GaussianBlurSearch(steps=steps),
        {"steps": 1000},
    )
)
register_attack(
    AttackSpec(
        "contrast",
        "Contrast reduction",
        "lelekas2020",
        "decision",
        False,
        "foolbox BinarySearchContrastReductionAttack (distance=l2): binary search (15 steps) of "
        "the blend towards mid-grey; the L2 of the result",
        _foolbox(fb.attacks.BinarySearchContrastReductionAttack, distance=fb.distances.l2),
        {"binary_search_steps": 15},
    )
)
register_attack(
    AttackSpec(
        "blended",
        "Blended uniform noise",
        "lelekas2020",
        "decision",
        True,
        "foolbox LinearSearchBlendedUniformNoiseAttack's search: draws uniform-noise images "
        "until one is misclassified, then a linear search (`steps`) of the blend, each image "
        "evaluated only until done; the L2 of the result",
        lambda directions, steps: BlendedNoiseSearch(directions=directions, steps=steps),
        {"directions": 1000, "steps": 1000},
    )
)
register_attack(
    AttackSpec(
        "spatial",
        "Spatial (rotation + shift)",
        "lelekas2020",
        "spatial",
        False,
        "not an L2 attack: foolbox's SpatialAttack grid (rotations +-30 deg x 5, shifts +-3 px "
        "x 5 x 5), every transform tried; the smallest L2 induced by a fooling transform",
        lambda **kw: MinimalSpatial(**kw),
        {"max_translation": 3.0, "max_rotation": 30.0, "num_translations": 5, "num_rotations": 5},
    )
)
register_attack(
    AttackSpec(
        "ddn",
        "DDN",
        "gradient",
        "gradient",
        False,
        "foolbox DDNAttack (decoupled direction and norm, `steps` steps): the L2 of its result",
        _foolbox(fb.attacks.DDNAttack),
        {"steps": 100, "init_epsilon": 1.0, "gamma": 0.05},
    )
)
register_attack(
    AttackSpec(
        "deepfool",
        "DeepFool",
        "gradient",
        "gradient",
        False,
        "foolbox L2DeepFoolAttack (linearised boundary steps, overshoot 0.02, 10 candidate "
        "classes): the L2 of its result",
        _foolbox(fb.attacks.L2DeepFoolAttack),
        {"steps": 50, "candidates": 10, "overshoot": 0.02},
    )
)
register_attack(
    AttackSpec(
        "cw",
        "Carlini-Wagner L2",
        "gradient",
        "gradient",
        False,
        "foolbox L2CarliniWagnerAttack with 5 binary-search steps of the constant x 100 Adam "
        "steps (foolbox: 9 x 10000, hours on a CPU): the L2 of its best result",
        _foolbox(fb.attacks.L2CarliniWagnerAttack),
        {"binary_search_steps": 5, "steps": 100, "stepsize": 0.01, "initial_const": 0.001},
    )
)
register_attack(
    AttackSpec(
        "fmn",
        "FMN",
        "gradient",
        "gradient",
        False,
        "foolbox L2FMNAttack (fast minimum-norm, `steps` steps): the L2 of its result",
        _foolbox(fb.attacks.L2FMNAttack),
        {"steps": 100, "max_stepsize": 1.0, "gamma": 0.05},
    )
)
register_attack(
    AttackSpec(
        "pgd",
        "PGD L2",
        "gradient",
        "gradient",
        True,
        "foolbox L2PGD (50 steps, random start) at eps on a geometric grid from 1/32 (x2 per "
        "step) up to sqrt(C*H*W), then 3 bisection steps of the bracket (resolution x1.09): "
        "the smallest measured L2 that fools",
        _pgd,
        {"steps": 50, "rel_stepsize": 0.025, "start": 1 / 32, "ratio": 2.0, "refine": 3},
    )
)


def _foolbox2_noise(noise: str) -> Callable[..., AttackMethod]:
    from robustcli.attacks.fb2noise import Foolbox2AdditiveNoise

    return lambda levels: Foolbox2AdditiveNoise(noise, levels=levels)


_FB2_HOW = (
    "Foolbox 2's {what} as paper B ran it (foolbox 2.2.1): linear search over `levels` levels "
    "eps = 1/levels .. 1, a fresh noise image per level with per-pixel scale eps multiplied by "
    "eps again (scale eps**2), clipped to [0,1]; the L2 of the first fooling image"
)
for _noise, _what in (
    ("gaussian", "AdditiveGaussianNoiseAttack"),
    ("uniform", "AdditiveUniformNoiseAttack"),
):
    register_attack(
        AttackSpec(
            f"{_noise}-fb2",
            f"Additive {_noise} noise (Foolbox 2)",
            "noise-fb2",
            "noise",
            True,
            _FB2_HOW.format(what=_what),
            _foolbox2_noise(_noise),
            {"levels": 1000},
        )
    )
