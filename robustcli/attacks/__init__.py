"""Foolbox L2 attacks with paper B's protocol (Lelekas et al. 2020, Exp. 2).

Each attack is repeated (default 3; deterministic attacks run once) and each sample keeps its
smallest verified L2 perturbation; failures are at infinity, samples the time budget cut are
left out of the attack metrics (never counted as errors). From those distances come the
accuracy-loss vs L2 curve of paper B's Fig. 6, robust accuracy on an epsilon grid, the area
under the loss curve, and the per-sample worst case over several attacks. A TD network can be
attacked through one input scale only (Fig. 5).

>>> target = AttackTarget(model, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), name="td-nin")
>>> outcomes = run_attacks(target, resolve_attacks("lelekas2020"), x, y, repeats=3)
>>> summary_frame(outcomes + [worst_case(outcomes)], epsilons=[0.1, 0.5, 1.0])

Modules: ``registry`` (the attacks by name), ``methods`` (how each returns its smallest
adversarial), ``target`` (model, normalisation, branch), ``runner`` (batches, repeats,
verification, time budget), ``metrics`` (curves and table), ``results`` (JSON/CSV).
"""

from __future__ import annotations

from robustcli.attacks.methods import AttackMethod, EpsilonSearch, l2_norms
from robustcli.attacks.metrics import (
    accuracy_at,
    accuracy_loss,
    clean_accuracy,
    curves_frame,
    default_epsilons,
    loss_area,
    loss_steps,
    median_l2,
    samples_frame,
    summary_frame,
)
from robustcli.attacks.registry import (
    ATTACKS,
    GROUPS,
    AttackSpec,
    attack_params,
    build_attack,
    coerce_param,
    get_attack_spec,
    list_attacks,
    parse_param_overrides,
    register_attack,
    resolve_attacks,
)
from robustcli.attacks.results import (
    attack_document,
    check_outputs,
    output_paths,
    read_attack_result,
    write_attack_outputs,
)
from robustcli.attacks.runner import (
    AttackOutcome,
    branch_transfer,
    complete_attacks,
    run_attack,
    run_attacks,
    worst_case,
)
from robustcli.attacks.target import BRANCHES, AttackTarget, BranchInput, is_topdown

__all__ = [
    "ATTACKS",
    "BRANCHES",
    "GROUPS",
    "AttackMethod",
    "AttackOutcome",
    "AttackSpec",
    "AttackTarget",
    "BranchInput",
    "EpsilonSearch",
    "accuracy_at",
    "accuracy_loss",
    "attack_document",
    "attack_params",
    "branch_transfer",
    "build_attack",
    "check_outputs",
    "clean_accuracy",
    "coerce_param",
    "complete_attacks",
    "curves_frame",
    "default_epsilons",
    "get_attack_spec",
    "is_topdown",
    "l2_norms",
    "list_attacks",
    "loss_area",
    "loss_steps",
    "median_l2",
    "output_paths",
    "parse_param_overrides",
    "read_attack_result",
    "register_attack",
    "resolve_attacks",
    "run_attack",
    "run_attacks",
    "samples_frame",
    "summary_frame",
    "worst_case",
    "write_attack_outputs",
]
