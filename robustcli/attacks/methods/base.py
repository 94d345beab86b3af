"""What every attack method shares: the ``AttackMethod`` interface, the ``AttackContext`` it talks
to the model through, Foolbox's minimization attacks as they are, and the small helpers of the
searches (per-sample L2, the geometric epsilon grid, several search steps per model call)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol

import foolbox as fb
import torch


class AttackContext(Protocol):
    """What a method may ask of the model under attack (implemented by ``BatchContext``)."""

    def fmodel(self, rows: torch.Tensor | None = None) -> fb.PyTorchModel:
        """A Foolbox model of the batch rows ``rows`` (all rows if None), bounds (0, 1)."""
        ...

    def is_adversarial(
        self, x_adv: torch.Tensor, y: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Boolean mask: the model misclassifies ``x_adv`` (rows ``rows`` of the batch)."""
        ...


def l2_norms(delta: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm over C, H, W (float64)."""
    return delta.flatten(1).double().norm(dim=1)


def raw_tensor(t: Any) -> torch.Tensor:
    """The torch tensor inside an eagerpy tensor (Foolbox's return type), or ``t`` itself."""
    return t.raw if hasattr(t, "raw") else t


class AttackMethod(ABC):
    """One attack. ``stochastic`` methods are worth repeating (paper B keeps the best of 3)."""

    stochastic: bool = False

    @abstractmethod
    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Candidates, one per row of ``x`` (``x`` itself where nothing was found)."""


class FoolboxMinimization(AttackMethod):
    """A Foolbox ``MinimizationAttack``, run once on the whole batch (its unclipped result)."""

    def __init__(self, attack: fb.attacks.base.MinimizationAttack, *, stochastic: bool) -> None:
        self.attack = attack
        self.stochastic = stochastic

    def run(self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        crit = fb.criteria.Misclassification(y)
        return raw_tensor(self.attack.run(ctx.fmodel(), x, crit))

    def __repr__(self) -> str:
        return f"FoolboxMinimization({self.attack!r})"


def geometric_grid(start: float, stop: float, ratio: float) -> list[float]:
    """``start, start * ratio, ...`` up to the first value ``>= stop``."""
    if start <= 0 or ratio <= 1 or stop < start:
        raise ValueError(f"need 0 < start <= stop and ratio > 1, got {start}, {stop}, {ratio}")
    n = math.ceil(math.log(stop / start) / math.log(ratio) - 1e-9)
    return [start * ratio**k for k in range(n + 1)]


def steps_per_call(todo: int, batch: int, done: int, left: int) -> int:
    """How many consecutive steps of a linear search to evaluate in one model call for ``todo``
    images: enough to fill a call of ``batch`` images, at most the ``done`` steps taken so far
    (so a search never evaluates more than about twice the steps it needs) and the ``left``."""
    return max(1, min(batch // max(todo, 1), max(done, 1), left))


def first_success(ok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``ok`` (K x T, step-major): per column, whether any step succeeded and the first one."""
    k = torch.arange(ok.shape[0], 0, -1, device=ok.device).unsqueeze(1)
    return ok.any(dim=0), (ok * k).argmax(dim=0)


def check_params(name: str, params: dict[str, Any], allowed: Sequence[str]) -> None:
    """Raise a one-line ``RobustError`` naming any of ``params`` that attack ``name`` lacks."""
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        from robustcli.errors import RobustError

        raise RobustError(
            f"attack {name!r} has no parameter {', '.join(unknown)}: "
            f"it takes {', '.join(sorted(allowed)) or 'none'}"
        )
