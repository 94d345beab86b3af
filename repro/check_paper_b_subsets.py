"""Paper B: were 1,000 images per seed enough? Each seed's TD - BU median L2 on a bigger draw
(the whole test set) against the 1,000-image run's 95 % bootstrap interval over images.

SMALL and ``--whole`` give one attack folder per seed each, in the same order: the same seed's
two runs, with the same two models (their recorded sha256 must agree) and the small run's
images among the big run's (by the indices each attack.json records). Per seed and attack it
prints the small run's TD - BU median L2 with its image interval (``summarize_paper_b``'s
per-seed column: the same function, the same numbers), the big run's TD - BU on the small run's
images alone (the same images, another draw of the attack's noise: what the attack's own
randomness moves), on all its images, and whether that lies inside the small run's interval.
A seed misses if any of its attacks lies outside (rule 9 of docs/reproduction.md counts them).

    python repro/check_paper_b_subsets.py SMALL_S16 SMALL_S17 --whole BIG_S16 BIG_S17 \
        --attacks gaussian,uniform --out docs/figures/NAME.md
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from summarize_paper_b import median_diff_ci, median_l2, recorded_indices

from robustcli.attacks.results import read_attack_result
from robustcli.attacks.runner import AttackOutcome
from robustcli.io import atomic_write


@dataclass(frozen=True)
class Row:
    """One seed and attack: the small run's TD - BU with its image interval, the big run's on
    the same images and on all of its images, and each model's clean accuracy (%) there."""

    seed: str
    attack: str
    n_small: int
    small: float
    lo: float
    hi: float
    same_images: float
    n_big: int
    whole: float
    td_clean: float
    bu_clean: float

    @property
    def inside(self) -> bool:
        return self.lo <= self.whole <= self.hi


def difference(td: AttackOutcome, bu: AttackOutcome) -> float:
    """TD - BU median L2, each over the images it classifies correctly (``median_l2``)."""
    return median_l2(td.distances, td.clean_correct) - median_l2(bu.distances, bu.clean_correct)


def pair(
    outcomes: list[AttackOutcome], attack: str, source: Path
) -> tuple[AttackOutcome, AttackOutcome]:
    """The TD and the BU outcome of ``attack`` (whole-network perturbations)."""
    found = {o.topdown: o for o in outcomes if o.attack == attack and o.branch == "all"}
    if set(found) != {True, False}:
        raise SystemExit(f"{source}: no TD and BU outcome of {attack}: name attacks it ran")
    return found[True], found[False]


def model_hashes(doc: dict) -> list:
    """The sha256 of each attacked model, as the attack.json records them."""
    return [m.get("sha256") for m in (doc.get("provenance") or {}).get("models", [])]


def compare_seed(small: Path, big: Path, attacks: list[str]) -> list[Row]:
    """The rows of one seed: ``small`` and ``big`` are its two attack folders."""
    small_doc, small_outs = read_attack_result(small)
    big_doc, big_outs = read_attack_result(big)
    if model_hashes(small_doc) != model_hashes(big_doc):
        raise SystemExit(f"{small} and {big} attacked different models: pair one seed's runs")
    small_idx, big_idx = recorded_indices(small_doc), recorded_indices(big_doc)
    if small_idx is None or big_idx is None:
        raise SystemExit(f"{small} or {big} records no image indices: re-run the attack")
    if not set(small_idx) <= set(big_idx):
        raise SystemExit(f"the images of {small} are not all among {big}'s: same --seed, larger -n")
    keep = np.isin(big_idx, small_idx)
    rows = []
    for attack in attacks:
        td, bu = pair(small_outs, attack, small)
        big_td, big_bu = pair(big_outs, attack, big)
        lo, hi = median_diff_ci(td.distances, td.clean_correct, bu.distances, bu.clean_correct)
        rows.append(
            Row(
                seed=small.name,
                attack=attack,
                n_small=td.n,
                small=difference(td, bu),
                lo=lo,
                hi=hi,
                same_images=difference(big_td.select(keep), big_bu.select(keep)),
                n_big=big_td.n,
                whole=difference(big_td, big_bu),
                td_clean=100.0 * float(big_td.clean_correct.mean()),
                bu_clean=100.0 * float(big_bu.clean_correct.mean()),
            )
        )
    return rows


def render(rows: list[Row]) -> str:
    """The Markdown table, then how many seeds miss and the largest shift."""
    lines = [
        "| seed (small run) | attack | small run: TD - BU [95 % bootstrap CI over images] (n) "
        "| big run, the same images | big run, all images (n) | inside | big - small "
        "| TD / BU clean % (big run) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.seed} | {r.attack} | {r.small:+.2f} [{r.lo:+.2f}, {r.hi:+.2f}] ({r.n_small}) "
            f"| {r.same_images:+.2f} | {r.whole:+.2f} ({r.n_big}) | {'yes' if r.inside else 'NO'} "
            f"| {r.whole - r.small:+.2f} | {r.td_clean:.2f} / {r.bu_clean:.2f} |"
        )
    seeds = list(dict.fromkeys(r.seed for r in rows))
    missing = [s for s in seeds if not all(r.inside for r in rows if r.seed == s)]
    shift = max((abs(r.whole - r.small) for r in rows), default=math.nan)
    noise = max((abs(r.same_images - r.small) for r in rows), default=math.nan)
    lines += [
        "",
        f"Seeds missing (a big-run value outside the small run's interval): {len(missing)} of "
        f"{len(seeds)}{': ' + ', '.join(missing) if missing else ''}. Largest |big - small|: "
        f"{shift:.2f} L2 (all images), {noise:.2f} L2 (the same images).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("small", nargs="+", type=Path, help="attack folders, one per seed")
    ap.add_argument(
        "--whole",
        nargs="+",
        type=Path,
        required=True,
        help="the same seeds' attack folders on more images (the whole test set), same order",
    )
    ap.add_argument("--attacks", default="gaussian,uniform", help="comma-separated attacks")
    ap.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = ap.parse_args()
    if len(args.whole) != len(args.small):
        ap.error(f"{len(args.small)} small folders but {len(args.whole)} --whole: one per seed")
    attacks = args.attacks.split(",")
    rows = [
        r for s, b in zip(args.small, args.whole, strict=True) for r in compare_seed(s, b, attacks)
    ]
    text = render(rows)
    print(text, end="")
    if args.out:
        with atomic_write(args.out) as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
