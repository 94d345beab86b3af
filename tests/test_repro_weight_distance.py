"""repro/weight_distance.py: distances between checkpoints' parameter vectors, closed form."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from robustcli.checkpoint import save_checkpoint
from robustcli.registry import create_model, get_dataset_spec, resolve_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "repro"))
from weight_distance import distance, main, parameter_vector  # noqa: E402


def _run(folder: Path, name: str = "bu-lenetfc", scale: float = 1.0, seed: int = 0) -> Path:
    """A checkpoint of ``name`` (seed ``seed``'s init) with every parameter times ``scale`` and
    BatchNorm running statistics that differ from run to run (they must not count)."""
    torch.manual_seed(seed)
    model = create_model(name)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
        for b in model.buffers():
            if b.is_floating_point():
                b.add_(scale * 3.0)
    spec = get_dataset_spec("digits")
    save_checkpoint(
        folder / "model.safetensors", model, model_name=name, config=resolve_config(name),
        dataset="digits", normalization={"mean": list(spec.mean), "std": list(spec.std)},
    )  # fmt: skip
    return folder


def test_a_scaled_copy_is_its_scale_minus_one_away_with_cosine_one(tmp_path):
    a = parameter_vector(_run(tmp_path / "a"))
    b = parameter_vector(_run(tmp_path / "b", scale=3.0))
    assert a.numel() == sum(p.numel() for p in create_model("bu-lenetfc").parameters())
    rel, cos = distance(b, a)
    assert rel == pytest.approx(2 / 3) and cos == pytest.approx(1.0)
    rel, cos = distance(a, -a)
    assert rel == pytest.approx(2.0) and cos == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="compare runs of the same model"):
        distance(a, a[:-1])


def test_main_prints_each_pair_then_the_range_over_different_runs(tmp_path, monkeypatch, capsys):
    runs = [_run(tmp_path / f"s{s}", seed=s) for s in (0, 1)]
    twins = [_run(tmp_path / f"t{s}", seed=s, scale=2.0) for s in (0, 1)]
    argv = ["weight_distance.py", *map(str, runs), "--against", *map(str, twins)]
    monkeypatch.setattr(sys, "argv", argv)
    main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| s0 vs t0 | 1.000 | 1.000 |"
    assert lines[3] == "| s1 vs t1 | 1.000 | 1.000 |"
    rel, cos = distance(parameter_vector(runs[0]), parameter_vector(runs[1]))
    assert (
        lines[4]
        == f"| different runs (1 pairs) | {rel:.3f} to {rel:.3f} | {cos:.3f} to {cos:.3f} |"
    )
    assert rel > 0.5 and cos < 0.9  # two inits are far apart


def test_a_missing_run_is_one_line_and_no_traceback(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["w", str(tmp_path / "none"), "--against", str(tmp_path)])
    with pytest.raises(SystemExit, match="^error: checkpoint .* not found"):
        main()
