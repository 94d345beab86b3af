"""How far apart trained models lie in weight space: one seed at two lengths, different seeds.

Each RUN is a run folder (or a ``model.safetensors``) of ``robust train``; ``--against`` gives one
run per RUN, paired in order (say, the same seeds trained for 12 instead of 30 epochs). Per pair
it prints the relative L2 distance ``||a - b|| / ||a||`` and the cosine of the two parameter
vectors (every learned parameter; BatchNorm running statistics are buffers, not parameters, and
are left out), then the same over every pair of different RUNs (different seeds at one length),
as a Markdown table. A pair much closer than two different seeds means the longer training kept
the solution its seed started, which is what paper B's rule 6 saw in the attacks.

    python repro/weight_distance.py docs/data/repro-b-e30/td-lenetfc-mnist-e30-s16 \
        docs/data/repro-b-e30/td-lenetfc-mnist-e30-s17 \
        --against docs/data/repro-b/td-lenetfc-mnist-e12-s16 \
        docs/data/repro-b/td-lenetfc-mnist-e12-s17
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch

from robustcli.checkpoint import load_checkpoint
from robustcli.errors import RobustError


def parameter_vector(run: str | Path) -> torch.Tensor:
    """Every learned parameter of a checkpoint (a run folder or its file), flattened in the
    model's own order, as one float64 vector."""
    model = load_checkpoint(run, warn=False).model  # a run folder resolves to its model file
    return torch.cat([v.detach().double().flatten() for _, v in model.named_parameters()])


def distance(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """``||a - b|| / ||a||`` and the cosine of ``a`` and ``b``; vectors of different sizes (models
    of different architectures) are refused."""
    if a.shape != b.shape:
        raise ValueError(f"parameter vectors of {a.numel()} and {b.numel()} values: compare runs "
                         "of the same model")  # fmt: skip
    rel = float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(a))
    return rel, float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def table(runs: list[str], against: list[str]) -> list[str]:
    """The Markdown rows: one per pair, then the range over pairs of different RUNs."""
    vecs = [parameter_vector(r) for r in runs]
    lines = ["| runs | relative L2 distance | cosine |", "|---|---|---|"]
    for run, other, v in zip(runs, against, vecs, strict=True):
        rel, cos = distance(v, parameter_vector(other))
        lines.append(f"| {Path(run).name} vs {Path(other).name} | {rel:.3f} | {cos:.3f} |")
    if len(vecs) > 1:
        cross = [distance(a, b) for a, b in itertools.combinations(vecs, 2)]
        rels, coss = [c[0] for c in cross], [c[1] for c in cross]
        lines.append(
            f"| different runs ({len(cross)} pairs) | {min(rels):.3f} to {max(rels):.3f} | "
            f"{min(coss):.3f} to {max(coss):.3f} |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders (or model.safetensors files)")
    ap.add_argument("--against", nargs="+", required=True, help="one run per RUN, in order")
    args = ap.parse_args()
    if len(args.against) != len(args.runs):
        ap.error(f"--against needs one run per RUN ({len(args.runs)}), got {len(args.against)}")
    try:
        print("\n".join(table(args.runs, args.against)))
    except (RobustError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
