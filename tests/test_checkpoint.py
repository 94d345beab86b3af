"""Checkpoints: round trip, rebuild from metadata, corrupt files, plain state-dict import."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from robustcli.checkpoint import (
    Checkpoint,
    import_state_dict,
    load_checkpoint,
    load_training_state,
    save_checkpoint,
    save_training_state,
)
from robustcli.data import input_adapter, load_dataset
from robustcli.errors import CheckpointError
from robustcli.registry import create_model, resolve_config

NORM = {"mean": [0.30546] * 3, "std": [0.37609] * 3}


def _trained_like(name: str = "pp-resnet20", **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name, **overrides)
    with torch.no_grad():  # make BN buffers non-default so they are checked too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.num_batches_tracked.fill_(7)
    return model.eval()


def _save(path, model, name="pp-resnet20", **overrides):
    adapter = input_adapter((1, 8, 8), (3, 32, 32))
    return save_checkpoint(
        path,
        model,
        model_name=name,
        config=resolve_config(name, **overrides),
        dataset="digits",
        normalization=NORM,
        input=adapter,
        extra={"recipe": "fast", "epochs": 3, "metrics": {"test_acc": 0.97}, "seed": 0},
    )


def test_round_trip_rebuilds_from_metadata_alone(tmp_path):
    model = _trained_like(num_classes=7)
    path = _save(tmp_path / "run" / "model.safetensors", model, num_classes=7)
    ckpt = load_checkpoint(tmp_path / "run")  # a run folder works too
    assert isinstance(ckpt, Checkpoint) and not ckpt.model.training
    assert (ckpt.name, ckpt.backbone, ckpt.dataset) == ("pp-resnet20", "resnet20", "digits")
    assert ckpt.config["num_classes"] == 7 and ckpt.config["pp"]["layer"] == "pushpull"
    assert ckpt.normalization == NORM and ckpt.path == path
    assert ckpt.meta["metrics"] == {"test_acc": 0.97} and ckpt.meta["epochs"] == 3
    assert ckpt.input.target_shape == (3, 32, 32) and ckpt.adapter is ckpt.input
    ours, theirs = model.state_dict(), ckpt.model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    x, _ = load_dataset("digits", "test")
    inp = ckpt.prepare(x[:4])
    assert inp.shape == (4, 3, 32, 32) and inp.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(model(inp), ckpt.model(inp))


def test_channels_last_model_saves_plain_tensors(tmp_path):
    model = _trained_like("resnet20").to(memory_format=torch.channels_last)
    _save(tmp_path / "m.safetensors", model, name="resnet20")
    ckpt = load_checkpoint(tmp_path / "m.safetensors")
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), ckpt.model.state_dict().values(), strict=True)
    )


@pytest.fixture
def saved(tmp_path):
    return _save(tmp_path / "model.safetensors", _trained_like("resnet20"), name="resnet20")


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing.safetensors")


def test_truncated_file(saved):
    blob = saved.read_bytes()
    saved.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as err:
        load_checkpoint(saved)
    assert "\n" not in str(err.value)


def test_garbage_file(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(p)


def test_flipped_bit_in_weights_is_caught(saved):
    blob = bytearray(saved.read_bytes())
    blob[-100] ^= 0x10  # inside the last tensor's data; the header still parses
    saved.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(saved)


def test_mismatched_metadata_and_tensors(tmp_path):
    # densenet weights under resnet20 metadata: rebuild works, the shape check must fail
    model = create_model("densenet40")
    p = tmp_path / "m.safetensors"
    save_checkpoint(
        p,
        model,
        model_name="resnet20",
        config=resolve_config("resnet20"),
        dataset="cifar10",
        normalization={"mean": [0.5] * 3, "std": [0.25] * 3},
    )
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_checkpoint(p)


def test_bare_safetensors_points_to_import(tmp_path):
    p = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in create_model("resnet20").state_dict().items()}, p)
    with pytest.raises(CheckpointError, match="import_state_dict"):
        load_checkpoint(p)


def test_unknown_backbone_is_a_checkpoint_error(saved, tmp_path):
    from safetensors import safe_open

    with safe_open(str(saved), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta["backbone"] = "resnet9000"
    p = tmp_path / "other.safetensors"
    save_file(tensors, p, metadata=meta)
    with pytest.raises(CheckpointError, match="cannot rebuild"):
        load_checkpoint(p)


def test_import_plain_state_dict_with_weights_only(tmp_path):
    src = _trained_like("resnet20")
    wrapped = {"epoch": 160, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}
    pt = tmp_path / "release.pth"
    torch.save(wrapped, pt)
    ckpt = import_state_dict(pt, "resnet20", out=tmp_path / "imported.safetensors")
    assert all(torch.equal(src.state_dict()[k], v) for k, v in ckpt.model.state_dict().items())
    assert ckpt.mean == (0.49137, 0.48235, 0.44667)  # the model's dataset: cifar10
    again = load_checkpoint(tmp_path / "imported.safetensors")
    assert again.meta["imported_from"] == str(pt)


def test_import_renamed_keys_by_shape_order(tmp_path):
    src = _trained_like("resnet20")
    renamed = {
        f"net.layer{i}.{k.rsplit('.', 1)[-1]}": v
        for i, (k, v) in enumerate(src.state_dict().items())
        if not k.endswith("num_batches_tracked")
    }
    torch.save(renamed, tmp_path / "other_names.pt")
    ckpt = import_state_dict(tmp_path / "other_names.pt", "resnet20")
    for k, v in ckpt.model.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, src.state_dict()[k])


class _NotATensor:
    pass


def test_import_refuses_arbitrary_pickles(tmp_path):
    p = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "obj": _NotATensor()}, p)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        import_state_dict(p, "resnet20")


def test_import_wrong_architecture(tmp_path):
    torch.save(create_model("densenet40").state_dict(), tmp_path / "dn.pt")
    with pytest.raises(CheckpointError, match="does not match"):
        import_state_dict(tmp_path / "dn.pt", "resnet20")


def test_training_state_round_trip_and_checksum(tmp_path):
    p = tmp_path / "last.safetensors"
    tensors = {"model/w": torch.randn(3, 3), "rng/data": torch.get_rng_state()}
    save_training_state(p, tensors, {"epoch": 2, "history": [{"epoch": 1, "lr": 0.1}]})
    got, state = load_training_state(p)
    assert state["epoch"] == 2 and all(torch.equal(got[k], v) for k, v in tensors.items())
    blob = bytearray(p.read_bytes())
    blob[-3] ^= 0xFF
    p.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_training_state(p)
    assert json.loads(json.dumps(state)) == state  # plain JSON, no pickle anywhere
