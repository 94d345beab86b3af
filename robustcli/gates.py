"""Regression gates for CI: threshold rules on the metrics of ``robustcli.results``.

A rule is ``(pattern, kind, value)``; ``pattern`` is a metric name or an fnmatch pattern over
the row names of ``metrics_frame`` (``corruption:*``), ``kind`` one of

- ``max_drop``: at most ``value`` points worse than the baseline. "Worse" follows the metric's
  direction (``robustcli.results.metric_direction``): a fall for accuracies, a rise for
  ``attack:*:auc``, ``mce``. Needs a baseline.
- ``min`` / ``max``: an absolute floor / ceiling on the value.

Rules come from the command line (``--max-drop 'corruption:*=2' --min clean_acc=80``) or a YAML
file::

    gates:
      mean_corruption_acc: {max_drop: 0.5}   # alias of corruptions_acc
      "corruption:*": max_drop 2             # "kind value" strings work too
      clean_acc: {min: 80}

A rule naming a metric robust never writes (``clean_accc``), an empty or rule-less gates file
a rule that matches no metric of the compared results and a threshold a percentage can never
meet or never miss (``min clean_acc 0.9``: a fraction) are input errors (a typo must not pass CI
silently); a metric that the baseline has and a checked model lacks is a violation.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pandas as pd

from robustcli.corruptions import CORRUPTIONS, GROUPS
from robustcli.errors import RobustError
from robustcli.results import metric_direction

RULE_KINDS = ("max_drop", "min", "max")
#: Friendlier names accepted in rules.
ALIASES = {
    "mean_corruption_acc": "corruptions_acc",
    "clean": "clean_acc",
    "test_acc": "train:test_acc",
}


@dataclass(frozen=True)
class Rule:
    pattern: str
    kind: str
    value: float

    def __str__(self) -> str:
        return f"{self.pattern}: {self.kind} {self.value:g}"


@dataclass(frozen=True)
class Violation:
    rule: Rule
    metric: str
    model: str
    value: float
    baseline: float | None
    reason: str


@dataclass
class GateReport:
    rules: list[Rule]
    checked: int = 0
    violations: list[Violation] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.violations

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def lines(self) -> list[str]:
        """One line per violation."""
        return [v.reason for v in self.violations]


#: Metric names robust writes with a fixed spelling (``robustcli.results.METRIC_NAMING``).
FIXED_METRICS = (
    "train:test_acc",
    "train:train_acc",
    "train:test_loss",
    "clean_acc",
    "corruptions_acc",
    "mean_common_15",
    "mean_all_19",
    "mce",
    "relative_mce",
)
ATTACK_METRICS = ("clean_acc", "success", "median_l2", "auc", "robust_acc@<eps>")


def _example_metrics() -> list[str]:
    """One name per metric family, to tell a pattern that can match something from a typo."""
    names = list(FIXED_METRICS)
    names += [f"group:{g}" for g in GROUPS] + [f"corruption:{c}" for c in CORRUPTIONS]
    names += [f"severity:{s}" for s in range(1, 6)]
    names += [f"attack:ddn:{m.replace('<eps>', '0.5')}" for m in ATTACK_METRICS]
    return names


def _matches(name: str, pattern: str) -> bool:
    # a literal name matches itself even when it holds glob characters: attack:ddn[high]:auc
    return name == pattern or fnmatchcase(name, pattern)


def unknown_metric(pattern: str) -> str | None:
    """None when ``pattern`` names (or can match) a metric robust writes; else why not, with a
    close spelling when there is one. Attack names are free (any registered attack, a branch
    such as ``ddn[high]``), so ``attack:<anything>:<metric>`` is checked on its metric part."""
    parts = pattern.split(":", 2)
    if parts[0] == "attack" and len(parts) == 3:
        metric = parts[2]
        known = [m.replace("<eps>", "0.5") for m in ATTACK_METRICS]
        if metric.startswith("robust_acc@") or any(_matches(m, metric) for m in known):
            return None
        hint = difflib.get_close_matches(metric, known, n=1)
        return (
            f"unknown attack metric {metric!r} in {pattern!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f": attack metrics are {', '.join(ATTACK_METRICS)}"
        )
    examples = _example_metrics()
    if any(_matches(n, pattern) for n in examples):
        return None
    if pattern.startswith("severity:") and pattern[len("severity:") :].isdigit():
        return None  # any severity an eval-c run was given
    hint = difflib.get_close_matches(pattern, [*examples, *ALIASES], n=1)
    return (
        f"unknown metric {pattern!r}: it matches no metric robust writes"
        + (f" (did you mean {hint[0]!r}?)" if hint else "")
        + "; metrics are named like clean_acc, corruptions_acc, corruption:<name>, "
        "group:<name>, attack:<attack>:auc (see docs/results-schema.md)"
    )


def _canonical(pattern: str) -> str:
    pattern = pattern.strip()
    return ALIASES.get(pattern, pattern)


def _number(text: Any, what: str) -> float:
    if isinstance(text, bool):  # YAML's `yes` / `true` is not a threshold
        raise RobustError(f"gate {what}: {text!r} is not a number, e.g. 0.5")
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise RobustError(f"gate {what}: {text!r} is not a number, e.g. 0.5") from None
    if not math.isfinite(value):
        raise RobustError(f"gate {what}: the threshold must be finite, got {text!r}")
    return value


def make_rule(pattern: str, kind: str, value: Any) -> Rule:
    """A checked rule; raises ``RobustError`` on an unknown kind, an unknown metric name or a
    bad number."""
    kind = kind.strip().lower().replace("-", "_")
    if kind not in RULE_KINDS:
        raise RobustError(
            f"unknown gate kind {kind!r} for {pattern!r}: use one of {', '.join(RULE_KINDS)}"
        )
    if not pattern.strip():
        raise RobustError(f"empty metric name in a {kind} gate: write METRIC=VALUE")
    number = _number(value, f"{pattern} {kind}")
    if kind == "max_drop" and number < 0:
        raise RobustError(f"gate {pattern} max_drop must be >= 0, got {number:g}")
    name = _canonical(pattern)
    problem = unknown_metric(name) or _percent_range_problem(name, kind, number)
    if problem:
        raise RobustError(problem)
    return Rule(name, kind, number)


#: Metrics that are not percentages in 0..100 (``METRIC_NAMING``): L2 sizes, losses, CE ratios.
_NOT_PERCENT = ("median_l2", "test_loss", "mce")


def _percent_only(pattern: str) -> bool:
    """Whether every metric ``pattern`` (a known one: ``unknown_metric`` passed it) can match is
    a percentage (0..100)."""
    parts = pattern.split(":", 2)
    if parts[0] == "attack" and len(parts) == 3:
        pattern = parts[2]
        names = [m.replace("<eps>", "0.5") for m in ATTACK_METRICS]
    else:
        names = _example_metrics()
    # no example matched: robust_acc@<another eps> or severity:<another s>, both percentages
    matched = [n for n in names if _matches(n, pattern)] or [pattern]
    return not any(n.endswith(_NOT_PERCENT) for n in matched)


def _percent_range_problem(pattern: str, kind: str, value: float) -> str | None:
    """Why a threshold on percentages can never fail (or never pass), or None: a typo of
    scale, such as RobustBench's fractions (``min clean_acc 0.9`` for 90 %), must not pass CI."""
    if not _percent_only(pattern):
        return None
    if kind in ("min", "max") and not 0 <= value <= 100:
        return f"gate {pattern} {kind} {value:g}: {pattern} is a percentage, 0 to 100"
    if kind == "max_drop" and value >= 100:
        return f"gate {pattern} max_drop {value:g} can never fail on a percentage: give points"
    if kind == "min" and 0 < value < 1 and metric_direction(pattern) == "higher":
        return (
            f"gate {pattern} min {value:g} looks like a fraction: robust writes accuracies in "
            f"percent, so write {100 * value:g} for {100 * value:g} %"
        )
    return None


def parse_rule(text: str, kind: str) -> Rule:
    """``METRIC=VALUE`` (e.g. ``corruption:*=2``) for a command-line option of ``kind``."""
    name, sep, value = text.rpartition("=")
    option = f"--{kind.replace('_', '-')}"
    if not sep:
        raise RobustError(f"bad {option} {text!r}: write METRIC=VALUE, e.g. clean_acc=80")
    try:
        return make_rule(name, kind, value)
    except RobustError as exc:
        raise RobustError(f"bad {option} {text!r}: {exc}") from None


def rules_from_mapping(spec: Any, source: str = "gates") -> list[Rule]:
    """Rules from the parsed YAML (``{gates: {metric: {kind: value} | "kind value"}}``).

    No rules at all (an empty file, an empty ``gates:``) is an error: a gate step that checks
    nothing must not pass CI. Every error names ``source``."""
    if isinstance(spec, Mapping) and "gates" in spec:
        extra = [str(k) for k in spec if k != "gates"]
        if extra:
            raise RobustError(
                f"{source}: unknown top-level key {extra[0]!r}: put every rule under 'gates:'"
            )
        spec = spec["gates"]
    if spec is None or (isinstance(spec, Mapping) and not spec):
        raise RobustError(
            f"{source} holds no gate rules: add e.g. 'gates: {{clean_acc: {{min: 80}}}}', "
            "or drop --gates"
        )
    if not isinstance(spec, Mapping):
        raise RobustError(
            f"{source} must map metrics to rules, e.g. 'clean_acc: {{min: 80}}' under 'gates:'"
        )
    try:
        return _rules(spec, source)
    except RobustError as exc:
        msg = str(exc)
        raise RobustError(msg if msg.startswith(source) else f"{source}: {msg}") from None


def _rules(spec: Mapping[Any, Any], source: str) -> list[Rule]:
    rules: list[Rule] = []
    for metric, body in spec.items():
        if isinstance(body, str):
            parts = body.split()
            if len(parts) != 2:
                raise RobustError(
                    f"{source}: rule {metric}: {body!r} is not 'KIND VALUE' (e.g. 'max_drop 0.5')"
                )
            rules.append(make_rule(str(metric), parts[0], parts[1]))
        elif isinstance(body, Mapping):
            if not body:
                raise RobustError(f"{source}: rule {metric} is empty: give e.g. {{max_drop: 2}}")
            rules += [make_rule(str(metric), str(k), v) for k, v in body.items()]
        else:
            raise RobustError(
                f"{source}: rule {metric}: use a mapping {{max_drop: 2}} or 'max_drop 2', "
                f"got {body!r}"
            )
    return rules


def load_gates(path: str | os.PathLike[str]) -> list[Rule]:
    """Rules from a YAML file."""
    from robustcli.io import read_yaml

    p = Path(path).expanduser()
    spec = read_yaml(p, "gates file", "pass a YAML file to --gates")
    return rules_from_mapping(spec, f"gates file {p}")


def collect_rules(
    *,
    max_drop: Iterable[str] = (),
    minimum: Iterable[str] = (),
    maximum: Iterable[str] = (),
    gates_file: str | os.PathLike[str] | None = None,
) -> list[Rule]:
    """The rules of a ``robust compare`` call: the file's first, then the options'."""
    rules = load_gates(gates_file) if gates_file is not None else []
    rules += [parse_rule(t, "max_drop") for t in max_drop]
    rules += [parse_rule(t, "min") for t in minimum]
    rules += [parse_rule(t, "max") for t in maximum]
    return rules


def _fmt(v: float) -> str:
    return "missing" if math.isnan(v) else f"{v:.2f}"


def evaluate_gates(
    frame: pd.DataFrame,
    rules: Sequence[Rule],
    *,
    baseline: str | None = None,
    models: Sequence[str] | None = None,
) -> GateReport:
    """Check ``models`` (default: every column but ``baseline``) of a ``metrics_frame``."""
    report = GateReport(list(rules))
    cols = list(models) if models is not None else [c for c in frame.columns if c != baseline]
    if baseline is not None and baseline not in frame.columns:
        raise RobustError(f"baseline column {baseline!r} is not in the comparison")
    for rule in rules:
        metrics = [m for m in frame.index if _matches(str(m), rule.pattern)]
        if not metrics:
            raise RobustError(
                f"gate {rule} matches no metric of these results: metrics are named like "
                "clean_acc, corruptions_acc, corruption:<name>, group:<name>, "
                "attack:<attack>:auc (see docs/results-schema.md)"
            )
        if rule.kind == "max_drop" and baseline is None:
            raise RobustError(f"gate {rule} compares with a baseline: pass --baseline RESULT")
        for metric in metrics:
            lower = metric_direction(str(metric)) == "lower"
            base = float(frame.at[metric, baseline]) if baseline is not None else math.nan
            if rule.kind == "max_drop" and math.isnan(base):
                continue  # the baseline did not measure it: nothing to regress from
            for col in cols:
                value = float(frame.at[metric, col])
                report.checked += 1
                reason = _check(rule, str(metric), str(col), value, base, baseline, lower)
                if reason:
                    report.violations.append(
                        Violation(
                            rule,
                            str(metric),
                            str(col),
                            value,
                            None if math.isnan(base) else base,
                            reason,
                        )
                    )
    return report


def _check(
    rule: Rule,
    metric: str,
    model: str,
    value: float,
    base: float,
    baseline: str | None,
    lower: bool,
) -> str | None:
    """The one-line reason ``rule`` fails for (metric, model), or None."""
    where = f"{metric} of {model}"
    if math.isnan(value):
        return f"{where} is missing ({rule})"
    if rule.kind == "min" and value < rule.value:
        return f"{where} is {_fmt(value)}, below the minimum {rule.value:g} ({rule})"
    if rule.kind == "max" and value > rule.value:
        return f"{where} is {_fmt(value)}, above the maximum {rule.value:g} ({rule})"
    if rule.kind == "max_drop":
        drop = (value - base) if lower else (base - value)
        if drop > rule.value + 1e-9:
            verb = "rose" if lower else "dropped"
            return (
                f"{where} {verb} {drop:.2f} points vs baseline {baseline} "
                f"({_fmt(base)} -> {_fmt(value)}; allowed {rule.value:g}) ({rule})"
            )
    return None


def markdown_summary(
    table_markdown: str, report: GateReport | None, title: str, note: str | None = None
) -> str:
    """The pull-request comment / step summary: heading, ``note`` (e.g. the comparison is across
    mismatched inputs) in bold, verdict, violations, the table."""
    lines = [f"## {title}", ""]
    if note:
        lines += [f"**{note}**", ""]
    if report is not None and report.rules:
        if report.passed:
            lines.append(
                f"**Gates passed**: {len(report.rules)} rules, {report.checked} checks, "
                "no violation."
            )
        else:
            lines.append(
                f"**Gates failed**: {len(report.violations)} violation(s) of "
                f"{len(report.rules)} rules ({report.checked} checks):"
            )
            lines.append("")
            lines += [f"- {v.reason}" for v in report.violations]
        lines.append("")
        lines.append("Rules: " + "; ".join(f"`{r}`" for r in report.rules))
        lines.append("")
    lines.append(table_markdown.rstrip("\n"))
    lines.append("")
    return "\n".join(lines)
