"""Run attacks on a model: batches on the device, repeats, verification, time budget.

Protocol (paper B, Exp. 2): each attack runs ``repeats`` times (stochastic attacks only; a
deterministic attack gives the same result every time and runs once) and each sample keeps its
smallest successful L2. Whatever an attack returns is clipped to ``[0, 1]``, classified again by a
plain forward pass of the model and re-measured (``||x_adv - x||_2`` over C, H, W, float64):
only verified misclassifications count, the others are failures (infinite distance).

Per-sample status: ``misclassified`` (clean image already wrong: distance 0, not attacked),
``adversarial`` (finite distance), ``failed`` (attacked, never fooled: infinity), ``cut`` (never
attacked because the time budget ran out) and ``partial`` (attacked in fewer repeats than asked
before the budget ran out). ``cut`` and ``partial`` samples have distance NaN and are left out
of the attack metrics: their outcome under the protocol is unknown (the repeats that did run
stay in ``repeat_distances``). Batches are attacked one after the other with all their repeats,
so a cut leaves at most one batch ``partial``.
"""

from __future__ import annotations

import math
import time
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from robustcli.attacks.methods import AttackMethod, l2_norms
from robustcli.attacks.registry import attack_params, build_attack, get_attack_spec
from robustcli.attacks.target import (
    AttackTarget,
    AttackTimeout,
    BatchContext,
    Budget,
    check_images,
    frozen_parameters,
)

STATUSES = ("misclassified", "adversarial", "failed", "cut", "partial")
#: statuses of samples whose protocol outcome is unknown (left out of the attack metrics)
LEFT_OUT = ("cut", "partial")

# progress(event, attack_key, n): event "start" (n = total samples x repeats), "advance", "end"
ProgressHook = Callable[[str, str, int], None]


@dataclass
class AttackOutcome:
    """Per-sample result of one attack on one model (and branch).

    ``distances``: the kept L2 per sample (0 misclassified, inf failed, NaN cut or partial);
    ``repeat_distances``: the same per repeat (rows = repeats run; NaN where a repeat did not
    reach the sample); ``best_repeat``: the repeat whose adversarial was kept (-1 if none);
    ``adversarials``: the kept images (the clean image where none), or None;
    ``model_images``: images the attack passed through the model (batches that finished),
    ``model_grad_images`` of them with an input gradient;
    ``seconds``: wall time, ``finished_seconds``: up to the last batch that finished.
    For a ``worst_case`` outcome, ``best_repeat`` is the index (in ``params["of"]``) of the
    attack that gave the kept distance, and ``params["left_out"]`` lists the attacks left out
    because they were cut (``params["partial"]`` is then true).
    """

    model: str
    label: str
    attack: str
    branch: str
    topdown: bool
    labels: np.ndarray
    clean_pred: np.ndarray
    distances: np.ndarray
    status: np.ndarray
    repeat_distances: np.ndarray
    best_repeat: np.ndarray
    repeats: int
    seconds: float
    model_images: int
    model_grad_images: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    adversarials: torch.Tensor | None = None
    finished_seconds: float | None = None

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def clean_correct(self) -> np.ndarray:
        return self.clean_pred == self.labels

    @property
    def evaluated(self) -> np.ndarray:
        """Samples whose outcome is known (all but ``cut`` and ``partial``)."""
        return ~np.isin(self.status, LEFT_OUT)

    @property
    def attacked(self) -> np.ndarray:
        """Correctly classified samples attacked in every repeat (the attack metrics' base)."""
        return np.isin(self.status, ("adversarial", "failed"))

    @property
    def n_attacked(self) -> int:
        return int(self.attacked.sum())

    @property
    def n_cut(self) -> int:
        """Samples left out of the metrics: never attacked, or in fewer repeats than asked."""
        return int(np.isin(self.status, LEFT_OUT).sum())

    @property
    def n_partial(self) -> int:
        """Samples attacked in fewer repeats than asked (counted in ``n_cut``)."""
        return int((self.status == "partial").sum())

    @property
    def fully_cut(self) -> bool:
        """Correctly classified samples exist but none was attacked: no attack metric exists."""
        return bool(self.clean_correct.any()) and self.n_attacked == 0

    @property
    def cut_by_repeat(self) -> list[int]:
        """Per repeat: correctly classified samples that repeat did not reach."""
        rd = self.repeat_distances[:, self.clean_correct]
        return [int(v) for v in np.isnan(rd).sum(axis=1)]

    @property
    def attacked_images(self) -> int:
        """Sample-repeats attacked (for throughput)."""
        return int((~np.isnan(self.repeat_distances[:, self.clean_correct])).sum())

    @property
    def images_per_second(self) -> float:
        """Attacked sample-repeats per second, over the batches that finished."""
        t = self.seconds if self.finished_seconds is None else self.finished_seconds
        return self.attacked_images / t if t > 0 else math.nan

    def select(self, keep: np.ndarray) -> AttackOutcome:
        """The same outcome restricted to some samples (a boolean mask or indices, in order):
        e.g. the images two runs with different ``-n`` have in common. Times and model-image
        counts stay those of the whole run."""
        keep = np.asarray(keep)
        if keep.dtype == bool and keep.shape != (self.n,):
            raise ValueError(f"a mask over {self.n} samples is needed, got shape {keep.shape}")
        return replace(
            self,
            labels=self.labels[keep],
            clean_pred=self.clean_pred[keep],
            distances=self.distances[keep],
            status=self.status[keep],
            repeat_distances=self.repeat_distances[:, keep],
            best_repeat=self.best_repeat[keep],
            adversarials=None if self.adversarials is None else self.adversarials[keep],
        )


def _seed(*parts: Any) -> None:
    s = zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF
    torch.manual_seed(s)
    np.random.seed(s)


def _batches(rows: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]


def run_attack(
    target: AttackTarget,
    attack: str | AttackMethod,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    params: Mapping[str, Any] | None = None,
    repeats: int = 3,
    batch_size: int = 128,
    seed: int = 0,
    max_seconds: float | None = None,
    progress: ProgressHook | None = None,
    keep_adversarials: bool = True,
    name: str | None = None,
) -> AttackOutcome:
    """Attack ``target`` on ``x`` (``[0, 1]`` pixels, N x C x H x W) with labels ``y``.

    Args:
        attack: a registered attack name (``robustcli.attacks.list_attacks()``) or an
            ``AttackMethod`` (then ``name`` labels it).
        params: overrides of the attack's defaults (registered attacks only).
        repeats: runs of a stochastic attack; each sample keeps its smallest verified L2.
        batch_size: images per attack call (the device executes whole batches).
        seed: base seed; repeat ``r`` of batch ``b`` is seeded from (seed, attack, r, b).
        max_seconds: time budget of this attack. Batches run one after the other, each with
            all its repeats; when the budget runs out (checked at every model call) the running
            repeat of the batch is dropped and what was not attacked is reported (status
            ``cut``, or ``partial`` for samples attacked in fewer repeats; ``notes``).
        progress: optional hook, see ``ProgressHook``.
        keep_adversarials: keep the kept adversarial images (``outcome.adversarials``, CPU).
    """
    if isinstance(attack, str):
        spec = get_attack_spec(attack)
        full_params = attack_params(attack, params)
        method = build_attack(attack, **(params or {}))
        attack_name = name or spec.name
    else:
        method, full_params, attack_name = attack, dict(params or {}), name or type(attack).__name__
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_seconds is not None and not (math.isfinite(max_seconds) and max_seconds > 0):
        raise ValueError(f"max_seconds must be a positive number, got {max_seconds}")
    check_images(x, y)
    device = target.device
    x = x.to(device=device, dtype=torch.float32)
    y = y.to(device=device, dtype=torch.long)
    n = len(x)

    clean_pred = target.predict(x)
    correct = (clean_pred == y).cpu().numpy()
    todo = np.flatnonzero(correct)
    runs = repeats if method.stochastic else 1

    distances = np.where(correct, math.nan, 0.0)
    best = torch.full((n,), math.inf, dtype=torch.float64)
    best[~torch.from_numpy(correct)] = 0.0
    repeat_distances = np.full((runs, n), math.nan)
    repeat_distances[:, ~correct] = 0.0
    best_repeat = np.full(n, -1)
    adversarials = x.detach().cpu().clone() if keep_adversarials else None
    budget = Budget(None if max_seconds is None else time.monotonic() + max_seconds)
    key = f"{target.label}/{attack_name}"
    notes: list[str] = []
    cut_at: tuple[int, int] | None = None
    if progress:
        progress("start", key, len(todo) * runs)

    t0 = time.perf_counter()
    # counters up to the last finished batch (the work of a cut batch is dropped)
    done_images, done_grad, done_seconds = 0, 0, 0.0
    with warnings.catch_warnings(record=True) as caught, frozen_parameters(target.model):
        warnings.simplefilter("always")
        # batch-major: a cut leaves whole batches unattacked rather than every sample with
        # fewer repeats (a sample short of repeats is left out of the metrics, see ``partial``)
        for b, rows in enumerate(_batches(todo, batch_size)):
            idx = torch.from_numpy(rows).to(device)
            xb, yb = x[idx], y[idx]
            for r in range(runs):
                _seed(seed, attack_name, r, b)
                try:
                    x_adv = method.run(BatchContext(target, xb, budget), xb, yb)
                except AttackTimeout:
                    cut_at = (r, b)
                    break
                x_adv = x_adv.detach().to(device=device, dtype=torch.float32).clamp(0.0, 1.0)
                fooled = target.predict(x_adv, clean=xb) != yb
                d = l2_norms(x_adv - xb).cpu()
                d[~fooled.cpu()] = math.inf
                repeat_distances[r, rows] = d.numpy()
                better = d < best[rows]
                better_rows = rows[better.numpy()]
                best[better_rows] = d[better]
                best_repeat[better_rows] = r
                if adversarials is not None:
                    adversarials[better_rows] = x_adv[better.to(device)].cpu()
                done_images, done_grad = budget.images, budget.grad_images
                done_seconds = time.perf_counter() - t0
                if progress:
                    progress("advance", key, len(rows))
            if cut_at is not None:
                break
    seconds = time.perf_counter() - t0

    reached = ~np.isnan(repeat_distances)
    distances[todo] = best.numpy()[todo]
    never = correct & ~reached.any(axis=0)
    fewer = correct & reached.any(axis=0) & ~reached.all(axis=0)
    distances[never | fewer] = math.nan
    best_repeat[never | fewer] = -1
    status = np.where(
        ~correct,
        "misclassified",
        np.where(
            never,
            "cut",
            np.where(fewer, "partial", np.where(np.isfinite(distances), "adversarial", "failed")),
        ),
    )
    if cut_at is not None:
        r, b = cut_at
        n_batches = len(_batches(todo, batch_size))
        msg = (
            f"{target.label} / {attack_name}: time budget {max_seconds:g} s reached in batch "
            f"{b + 1}/{n_batches}, repeat "
            f"{r + 1}/{runs}: {int(never.sum())} of {len(todo)} samples not attacked"
        )
        if fewer.any():
            msg += f", {int(fewer.sum())} attacked in fewer than {runs} repeats"
        msg += " (left out of the metrics)"
        notes.append(msg)
    for w in caught:
        text = f"{w.category.__name__}: {w.message}"
        if "meshgrid" not in text and text not in notes:
            notes.append(text)
    if progress:
        progress("end", key, 0)
    if adversarials is not None and (never | fewer).any():
        gone = torch.from_numpy(never | fewer)
        adversarials[gone] = x[gone.to(device)].cpu()

    return AttackOutcome(
        model=target.name,
        label=str(target.label),
        attack=attack_name,
        branch=target.branch,
        topdown=target.topdown,
        labels=y.cpu().numpy(),
        clean_pred=clean_pred.cpu().numpy(),
        distances=distances,
        status=status,
        repeat_distances=repeat_distances,
        best_repeat=best_repeat,
        repeats=runs,
        seconds=seconds,
        model_images=done_images,
        model_grad_images=done_grad,
        params=full_params,
        notes=notes,
        adversarials=adversarials,
        finished_seconds=done_seconds if cut_at is not None else seconds,
    )


def run_attacks(
    target: AttackTarget,
    attacks: Sequence[str],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    **kwargs: Any,
) -> list[AttackOutcome]:
    """``run_attack`` for each name in ``attacks`` (``params[name]`` overrides its defaults)."""
    params = params or {}
    return [run_attack(target, a, x, y, params=params.get(a), **kwargs) for a in attacks]


def complete_attacks(groups: Sequence[Sequence[AttackOutcome]]) -> list[str]:
    """The attacks that left no sample out (nothing ``cut`` or ``partial``) in every group (a
    group: the outcomes of one model and branch), in the order of the first group. A worst case
    compared across models is built from these, so that every model's worst case combines the
    same attacks on the same images."""
    if not groups:
        return []
    names = [o.attack for o in groups[0]]
    complete = []
    for name in names:
        ok = True
        for g in groups:
            mine = [o for o in g if o.attack == name]
            ok = ok and bool(mine) and all(o.n_cut == 0 for o in mine)
        if ok:
            complete.append(name)
    return complete


def worst_case(
    outcomes: Sequence[AttackOutcome],
    name: str = "worst-case",
    *,
    include: Sequence[str] | None = None,
    reasons: Mapping[str, str] | None = None,
) -> AttackOutcome:
    """Several attacks on the same model, branch and samples combined per sample: the smallest
    distance any of them found.

    Only complete attacks are combined: those named in ``include`` (default: the outcomes that
    left no sample out). A partly cut attack would make the per-sample minimum run over
    different attacks for different samples, so it is left out whole: the result is then marked
    partial (``params["partial"]``, ``params["left_out"]``, a note; ``reasons`` may say why per
    attack). With no complete attack at all, every correctly classified sample is ``cut``.
    """
    if not outcomes:
        raise ValueError("worst_case needs at least one outcome")
    first = outcomes[0]
    for o in outcomes[1:]:
        if (o.model, o.branch, o.n) != (first.model, first.branch, first.n) or not np.array_equal(
            o.labels, first.labels
        ):
            raise ValueError("worst_case combines outcomes of one model, branch and sample set")
    if include is None:
        used = [o for o in outcomes if o.n_cut == 0]
    else:
        wanted = set(include)
        used = [o for o in outcomes if o.attack in wanted and o.n_cut == 0]
    used_ids = {id(o) for o in used}
    left_out = [o.attack for o in outcomes if id(o) not in used_ids]
    correct = first.clean_correct
    n = first.n
    if used:
        d = np.stack([o.distances for o in used])
        best = d.min(axis=0)
        which = d.argmin(axis=0)
    else:
        best = np.where(correct, math.nan, 0.0)
        which = np.full(n, -1)
    status = np.where(
        ~correct,
        "misclassified",
        np.where(np.isnan(best), "cut", np.where(np.isfinite(best), "adversarial", "failed")),
    )
    adversarials = None
    if used and all(o.adversarials is not None for o in used):
        stacked = torch.stack([o.adversarials for o in used])  # type: ignore[misc]
        pick = torch.from_numpy(np.maximum(which, 0))
        adversarials = stacked[pick, torch.arange(n)]
    elif not used and first.adversarials is not None:
        # nothing combined: the branch transfer still gets an outcome to report as cut (it
        # reads no image of a fully cut outcome) instead of silently dropping the row
        adversarials = first.adversarials.clone()
    notes: list[str] = []
    if left_out:
        why = reasons or {}
        parts = [f"{a} ({why[a]})" if a in why else a for a in left_out]
        if used:
            notes.append(
                f"{name} of {first.label} is partial: over {', '.join(o.attack for o in used)} "
                f"only; left out (cut): {', '.join(parts)}"
            )
        else:
            notes.append(
                f"{name} of {first.label} not computed: every attack was cut ({', '.join(parts)})"
            )
    kept = np.isfinite(best) & correct
    return AttackOutcome(
        model=first.model,
        label=first.label,
        attack=name,
        branch=first.branch,
        topdown=first.topdown,
        labels=first.labels,
        clean_pred=first.clean_pred,
        distances=best,
        status=status,
        repeat_distances=best[None, :],
        best_repeat=np.where(kept, which, -1),
        repeats=1,
        seconds=float(sum(o.seconds for o in used)),
        model_images=int(sum(o.model_images for o in used)),
        model_grad_images=int(sum(o.model_grad_images for o in used)),
        params={
            "of": [o.attack for o in used],
            "left_out": left_out,
            "partial": bool(left_out),
            "source": [
                used[i].attack if k else None for i, k in zip(which.tolist(), kept, strict=True)
            ],
        },
        notes=notes,
        adversarials=adversarials,
    )


@torch.no_grad()
def branch_transfer(
    target: AttackTarget, outcome: AttackOutcome, x: torch.Tensor
) -> dict[str, float | None]:
    """Paper B's Fig. 5 protocol: the adversarials found on the whole TD model, fed to one input
    (high, mid or low) while the other two get the clean image; accuracy (%) per branch, plus
    ``clean`` and ``all`` (the adversarials on every input).

    As in the attack metrics, accuracy = clean accuracy (all images) x the share of the attacked
    images still classified correctly, so samples cut by the time budget neither count as
    errors nor inflate the misclassified share; ``attacked`` and ``cut`` give the counts. A fully
    cut outcome has no branch accuracy (None)."""
    if not target.topdown or outcome.adversarials is None:
        return {}
    attacked = torch.from_numpy(outcome.attacked)
    y = torch.from_numpy(outcome.labels)
    clean = 100.0 * float(outcome.clean_correct.mean()) if outcome.n else math.nan
    out: dict[str, float | None] = {
        "clean": clean,
        "attacked": outcome.n_attacked,
        "cut": outcome.n_cut,
    }
    if outcome.fully_cut:
        return out | {"all": None, "high": None, "mid": None, "low": None}
    if not attacked.any():  # nothing correctly classified: nothing to keep
        return out | {"all": 0.0, "high": 0.0, "mid": 0.0, "low": 0.0}
    dev = target.device
    xa = x[attacked].to(dev)
    adv = outcome.adversarials[attacked].to(dev)
    ya = y[attacked].to(dev)

    def acc(pred: torch.Tensor) -> float:
        return clean * int((pred == ya).sum()) / len(ya)  # counted: no float32 mean

    out["all"] = acc(target.predict(adv))
    for branch in ("high", "mid", "low"):
        out[branch] = acc(target.with_branch(branch).predict(adv, clean=xa))
    return out
