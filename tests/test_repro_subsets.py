"""repro/check_paper_a_subsets.py: the 1,000 -> 10,000-image decomposition it prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robustcli.evaluate.paired import encode_per_image
from robustcli.evaluate.sources import subset_indices

SCRIPT = Path(__file__).resolve().parents[1] / "repro" / "check_paper_a_subsets.py"
CORRUPTIONS, SEVERITIES = ("gaussian_noise", "defocus_blur"), (1, 2)


def _write(folder: Path, model: str, cells: np.ndarray, clean: np.ndarray) -> None:
    n = cells.shape[2]
    doc = {
        "kind": "eval-c",
        "corruptions": list(CORRUPTIONS),
        "severities": list(SEVERITIES),
        "mean_all_19": float(cells.mean() * 100),
        "per_image": encode_per_image(CORRUPTIONS, SEVERITIES, cells, clean),
    }
    folder.mkdir(exist_ok=True)
    (folder / f"evalc-{model}-e15-n{n}-s0.json").write_text(json.dumps(doc))


def test_baseline_differences_split_image_sampling_from_the_corruption_draw(tmp_path):
    rng = np.random.default_rng(0)
    big_n, small_n = 10000, 1000  # the script pairs files by these names
    idx = subset_indices(torch.zeros(big_n, dtype=torch.long), small_n)[0].numpy()
    big, small = tmp_path / "big", tmp_path / "small"
    expected = []
    for model in ("base", "other"):
        cells = rng.random((2, 2, big_n)) < 0.6
        clean = rng.random(big_n) < 0.8
        _write(big, model, cells, clean)
        small_cells = cells[:, :, idx].copy()
        small_cells[0] = rng.random((2, small_n)) < 0.6  # the random corruption: another draw
        _write(small, model, small_cells, clean[idx])
        expected.append((small_cells.mean(), cells[:, :, idx].mean(), cells.mean()))
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(big), str(small), "--baseline", "base"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # the first table: clean and the deterministic corruption agree image for image
    assert "| evalc-other-e15-n10000-s0.json | identical | 1 of 2: defocus_blur |" in out
    row = next(line for line in out.splitlines() if line.startswith("| other | 0 |"))
    got = [float(x) for x in row.strip("|").split("|")[2:]]
    want = [100 * (o - b) for b, o in zip(expected[0], expected[1], strict=True)]
    assert got == pytest.approx(want, abs=0.0051)  # printed with 2 decimals
    assert not any(line.startswith("| base |") for line in out.splitlines())
