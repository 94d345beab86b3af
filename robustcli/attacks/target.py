"""The model under attack: a module taking normalised input, its normalisation, and which input
scale of a top-down (TD) model the perturbation may reach.

Normalisation goes into Foolbox's ``preprocessing``, so attacks work on ``[0, 1]`` pixels and
every distance is in those units. A *branch* attack (paper B, Fig. 5) perturbs one of a TD
network's three inputs: ``BranchInput`` feeds the adversarial image's pyramid level of that
branch and the clean image's other two levels to ``forward_scales``. Each pyramid level is made
from the full-resolution image directly, so this is the authors' ``*_multi`` model with the
adversarial image on one input and the clean image on the other two.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import foolbox as fb
import torch
from torch import nn

from robustcli.errors import DataError, RobustError

BRANCHES = ("all", "high", "mid", "low")
_LEVEL = {"high": 0, "mid": 1, "low": 2}


def is_topdown(model: nn.Module) -> bool:
    """True for models with the TD contract: ``pyramid(x)`` and ``forward_scales(scales)``."""
    return callable(getattr(model, "pyramid", None)) and callable(
        getattr(model, "forward_scales", None)
    )


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Parameters without ``requires_grad`` for the duration: Foolbox (via eagerpy) calls
    ``loss.backward()``, which would also compute and accumulate every weight's gradient."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class AttackTimeout(Exception):
    """The time budget of an attack ran out (raised from inside the model's forward)."""


@dataclass
class Budget:
    """Deadline and bookkeeping shared by the model wrappers of one attack run."""

    deadline: float | None = None
    images: int = 0
    grad_images: int = 0
    calls: int = 0

    def check(self, n: int, grad: bool = False) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise AttackTimeout
        self.images += n
        self.grad_images += n if grad else 0
        self.calls += 1


class Guarded(nn.Module):
    """Counts images and stops the attack (``AttackTimeout``) once the deadline has passed."""

    def __init__(self, inner: nn.Module, budget: Budget) -> None:
        super().__init__()
        self.inner = inner
        self.budget = budget

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.budget.check(len(x), grad=x.requires_grad)
        return self.inner(x)


class BranchInput(nn.Module):
    """A TD model whose input ``x`` reaches one branch only; the others see ``clean``.

    ``clean`` (normalised, like ``x``) is fixed per batch: ``x`` must have the same shape, row
    ``i`` of ``x`` being a perturbation of row ``i`` of ``clean``.
    """

    def __init__(self, model: nn.Module, branch: str, clean: torch.Tensor) -> None:
        super().__init__()
        if branch not in _LEVEL:
            raise RobustError(f"unknown branch {branch!r}: use one of {', '.join(BRANCHES)}")
        self.model = model
        self.branch = branch
        self.level = _LEVEL[branch]
        self.clean = clean
        with torch.no_grad():
            self.clean_scales = [s.detach() for s in model.pyramid(clean)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape != self.clean.shape:
            raise RobustError(
                f"branch attack got a batch of shape {tuple(x.shape)} for clean images of shape "
                f"{tuple(self.clean.shape)}: this attack evaluates the model on other batches; "
                "use --branch all for it"
            )
        scales = list(self.clean_scales)
        scales[self.level] = self.model.pyramid(x)[self.level]
        return self.model.forward_scales(scales)


@dataclass
class AttackTarget:
    """One model to attack.

    Args:
        model: takes normalised input, returns class scores; put in eval mode here.
        mean, std: per-channel normalisation (``(x - mean) / std`` on ``[0, 1]`` pixels).
        name: the model's name (registry name or checkpoint stem), shown everywhere.
        branch: ``"all"`` or, for TD models, ``"high"``, ``"mid"`` or ``"low"``.
        device: where the model and the images live during the attack.
        label: legend/table label (defaults to the name, plus the branch when not "all").
    """

    model: nn.Module
    mean: Sequence[float]
    std: Sequence[float]
    name: str = "model"
    branch: str = "all"
    device: torch.device | str = "cpu"
    label: str | None = None
    topdown: bool = field(init=False)

    def __post_init__(self) -> None:
        if self.branch not in BRANCHES:
            raise RobustError(f"unknown branch {self.branch!r}: use one of {', '.join(BRANCHES)}")
        self.topdown = is_topdown(self.model)
        if self.branch != "all" and not self.topdown:
            raise RobustError(
                f"--branch {self.branch} needs a top-down model (with pyramid/forward_scales); "
                f"{self.name} has one input: use --branch all"
            )
        if len(self.mean) != len(self.std):
            raise RobustError(f"normalisation mean {self.mean} and std {self.std} differ in length")
        self.device = torch.device(self.device)
        self.model = self.model.to(self.device).eval()
        self._mean = torch.tensor(self.mean, dtype=torch.float32, device=self.device).view(-1, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32, device=self.device).view(-1, 1, 1)
        if self.label is None:
            self.label = self.name if self.branch == "all" else f"{self.name} [{self.branch}]"

    def with_branch(self, branch: str) -> AttackTarget:
        """The same model, attacked through ``branch``."""
        return AttackTarget(self.model, self.mean, self.std, self.name, branch, self.device)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self._mean) / self._std

    def module(self, clean: torch.Tensor | None = None) -> nn.Module:
        """The module Foolbox sees (normalised input); ``clean`` ([0, 1]) for branch attacks."""
        if self.branch == "all":
            return self.model
        if clean is None:
            raise RobustError("a branch attack needs the clean images of the batch")
        return BranchInput(self.model, self.branch, self.normalize(clean)).eval()

    def fmodel(self, clean: torch.Tensor | None = None, budget: Budget | None = None) -> fb.Model:
        """A Foolbox model with bounds (0, 1) and the normalisation as preprocessing."""
        module = self.module(clean)
        if budget is not None:
            module = Guarded(module, budget).eval()
        return fb.PyTorchModel(
            module,
            bounds=(0.0, 1.0),
            device=self.device,
            preprocessing=dict(mean=list(self.mean), std=list(self.std), axis=-3),
        )

    @torch.no_grad()
    def logits(
        self, x: torch.Tensor, clean: torch.Tensor | None = None, batch_size: int = 256
    ) -> torch.Tensor:
        """Class scores of ``[0, 1]`` images by a plain forward pass (no Foolbox in between);
        for a branch target, ``clean`` are the images the other inputs get (default ``x``)."""
        out = []
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].to(self.device)
            # without clean images a branch model sees x on every input: the plain model
            cb = xb if clean is None else clean[i : i + batch_size].to(self.device)
            out.append(self.module(cb)(self.normalize(xb)).float())
        return torch.cat(out) if out else torch.empty(0, device=self.device)

    def predict(
        self, x: torch.Tensor, clean: torch.Tensor | None = None, batch_size: int = 256
    ) -> torch.Tensor:
        return self.logits(x, clean, batch_size).argmax(dim=1)


def check_images(x: torch.Tensor, y: torch.Tensor) -> None:
    """Foolbox asserts bounds with a bare AssertionError; say what is wrong instead."""
    if x.ndim != 4:
        raise DataError(f"images must be a batch N x C x H x W, got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise DataError(f"images must be float in [0, 1], got {x.dtype}: divide uint8 by 255")
    if len(y) != len(x):
        raise DataError(f"{len(x)} images but {len(y)} labels")
    if len(x) and (x.min() < 0 or x.max() > 1):
        raise DataError(
            f"images must lie in [0, 1] (Foolbox bounds), got [{x.min().item():.3g}, "
            f"{x.max().item():.3g}]: pass unnormalised pixels; the normalisation goes to the model"
        )
    if not torch.isfinite(x).all():
        raise DataError("images contain NaN or infinity")


class BatchContext:
    """``AttackContext`` of one batch: Foolbox models bound to (a subset of) its clean rows."""

    def __init__(self, target: AttackTarget, x: torch.Tensor, budget: Budget) -> None:
        self.target = target
        self.x = x
        self.budget = budget

    def _clean(self, rows: torch.Tensor | None) -> torch.Tensor | None:
        if self.target.branch == "all":
            return None
        return self.x if rows is None else self.x[rows]

    def fmodel(self, rows: torch.Tensor | None = None) -> fb.Model:
        return self.target.fmodel(self._clean(rows), self.budget)

    @torch.no_grad()
    def is_adversarial(
        self, x_adv: torch.Tensor, y: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        self.budget.check(len(x_adv))
        module = self.target.module(self._clean(rows))
        return module(self.target.normalize(x_adv)).argmax(dim=1) != y
