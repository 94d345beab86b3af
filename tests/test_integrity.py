"""Checkpoint and data-file integrity (issue #12): checksums over metadata and tensors, metadata
validation before anything is built, non-finite weights and outputs, torch files, .npy headers,
and property-based fuzzing of all of them (every outcome is a clean load or a RobustError)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from robustcli.checkpoint import (
    HASH_KEY,
    LEGACY_HASH_KEY,
    checkpoint_digest,
    import_state_dict,
    load_checkpoint,
    read_state_dict,
    save_checkpoint,
    tensor_digest,
    upgrade_checkpoint,
)
from robustcli.corruptions import load_official
from robustcli.data import input_adapter
from robustcli.errors import CheckpointError, DataError, RobustError
from robustcli.registry import create_model, resolve_config

NAME = "bu-lenetfc"  # 7.7k parameters: a 35 kB checkpoint, fast to load many times
NORM = {"mean": [0.3] * 3, "std": [0.37] * 3}
# ROBUSTCLI_FUZZ_EXAMPLES=2000 fuzzes harder (by hand, not in the default run)
FUZZ = settings(
    max_examples=int(os.environ.get("ROBUSTCLI_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(NAME, in_channels=3).eval()


def _save(path: Path) -> Path:
    """A 3-channel model fed with digits (1x8x8 replicated and resized to 3x28x28)."""
    return save_checkpoint(
        path,
        _model(),
        model_name=NAME,
        config=resolve_config(NAME, in_channels=3),
        dataset="digits",
        normalization=NORM,
        input=input_adapter((1, 8, 8), (3, 28, 28)),
        extra={"recipe": "fast", "epochs": 1, "seed": 0},
    )


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    return _save(tmp_path_factory.mktemp("integrity") / "model.safetensors")


def _contents(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())  # noqa: SIM118


def _rewrite(src: Path, dst: Path, *, resign: bool = False, tensors=None, **changes) -> Path:
    """Copy ``src`` with metadata entries changed (None deletes one); ``resign`` recomputes the
    checksum, as a careful forger (or a buggy writer) would: then the metadata checks must hold."""
    got, meta = _contents(src)
    tensors = got if tensors is None else tensors
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value if isinstance(value, str) else json.dumps(value)
    if resign:
        meta[HASH_KEY] = checkpoint_digest(tensors, meta)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def _legacy(src: Path, dst: Path) -> Path:
    """The same checkpoint as format 1 wrote it: tensor_sha256 over the tensors only."""
    tensors, meta = _contents(src)
    meta.pop(HASH_KEY)
    meta["format_version"] = "1"
    meta[LEGACY_HASH_KEY] = tensor_digest(tensors)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and text
    return text


# --------------------------------------------------------------------------------------------
# Checksum over metadata and tensors; legacy and unverified files
# --------------------------------------------------------------------------------------------


def test_new_checkpoints_are_verified_over_metadata_and_tensors(original, capsys):
    tensors, meta = _contents(original)
    assert meta["format_version"] == "2" and LEGACY_HASH_KEY not in meta
    assert meta[HASH_KEY] == checkpoint_digest(tensors, meta)
    ck = load_checkpoint(original)
    assert ck.verified and ck.integrity == "verified"
    assert ck.integrity_record() == {"verified": True, "integrity": "verified"}
    assert capsys.readouterr().err == ""  # nothing to warn about


@pytest.mark.parametrize(
    "changes",
    [
        {"model": "td-lenetfc"},  # relabels every result
        {"dataset": "mnist"},
        {"normalization": {"mean": [0.5] * 3, "std": [0.5] * 3}},
        {"recipe": '"paper"'},  # extra entries are covered too
        {"epochs": None},  # so is deleting one
        {"format_version": "1"},
    ],
)
def test_edited_metadata_fails_the_checksum(original, tmp_path, changes):
    edited = _rewrite(original, tmp_path / "m.safetensors", **changes)
    with pytest.raises(CheckpointError, match="do not match the stored checksum") as err:
        load_checkpoint(edited)
    assert _one_line(err)


def test_stripped_checksum_loads_as_a_labelled_unverified_import(original, tmp_path, capsys):
    stripped = _rewrite(original, tmp_path / "m.safetensors", **{HASH_KEY: None})
    ck = load_checkpoint(stripped)
    assert not ck.verified and ck.integrity == "unverified"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning:") and "UNVERIFIED" in err[0]
    load_checkpoint(stripped, warn=False)
    assert capsys.readouterr().err == ""


def test_legacy_format_1_loads_with_tensors_verified(original, tmp_path, capsys):
    old = _legacy(original, tmp_path / "old.safetensors")
    ck = load_checkpoint(old)
    assert ck.integrity == "legacy-tensors" and not ck.verified
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "format-1" in err[0] and "metadata" in err[0]
    # its tensors are still checked
    blob = bytearray(old.read_bytes())
    blob[-10] ^= 0x40
    old.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(old)


def test_format_2_with_only_the_legacy_checksum_is_refused(original, tmp_path):
    tensors, _ = _contents(original)
    downgraded = _rewrite(
        original,
        tmp_path / "m.safetensors",
        **{HASH_KEY: None, LEGACY_HASH_KEY: tensor_digest(tensors), "model": "td-lenetfc"},
    )
    with pytest.raises(CheckpointError, match="metadata was edited"):
        load_checkpoint(downgraded)


def test_upgrade_turns_a_legacy_file_into_a_verified_one(original, tmp_path, capsys):
    old = _legacy(original, tmp_path / "old.safetensors")
    new = upgrade_checkpoint(old, tmp_path / "new.safetensors")
    ck = load_checkpoint(new)
    assert ck.verified and ck.meta["recipe"] == "fast" and ck.name == NAME
    ref = load_checkpoint(original).model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in ck.model.state_dict().items())
    with pytest.raises(RobustError, match="already exists"):
        upgrade_checkpoint(old, new)
    capsys.readouterr()


# --------------------------------------------------------------------------------------------
# Metadata validation (checked before anything is built), on re-signed files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"format_version": "two"}, "'format_version'.*not a version number"),
        ({"format_version": "-1"}, "not a version number"),
        ({"format_version": "9"}, "newer than this robustcli"),
        ({"config": "{not json"}, "'config' is not valid JSON"),
        ({"config": [1, 2]}, "'config' must be a JSON object"),
        ({"normalization": {"mean": [0.3] * 3, "std": [0.37, 0.0, 0.37]}}, "std must be > 0"),
        ({"normalization": {"mean": [0.3] * 3, "std": [-1, 1, 1]}}, "std must be > 0"),
        ({"normalization": '{"mean": [NaN, 0, 0], "std": [1, 1, 1]}'}, "finite numbers"),
        ({"normalization": {"mean": [0.3], "std": [0.37]}}, "one per channel"),
        ({"normalization": {"mean": "abc", "std": [1]}}, "normalization.mean"),
        ({"model": ""}, "'model' must be a non-empty string"),
        ({"model": "a\nb"}, "'model' must be a printable name"),
        (
            {"input": {"source_shape": [1, 8, 8], "target_shape": [3, 99999, 28]}},
            "height and width must be 1..4096",
        ),
        (
            {"input": {"source_shape": [1, 8, 8], "target_shape": [-3, 28, 28]}},
            "channels; it must be 1..16",
        ),
        ({"input": {"source_shape": [1, 8], "target_shape": [3, 28, 28]}}, "not \\[C, H, W\\]"),
        (
            {
                "input": {
                    "source_shape": [1, 8, 8],
                    "target_shape": [3, 28, 28],
                    "resize": "x",
                    "channels": "replicate",
                }
            },
            "input.resize",
        ),
    ],
)
def test_bad_metadata_is_one_line_naming_the_field(original, tmp_path, changes, match):
    bad = _rewrite(original, tmp_path / "m.safetensors", resign=True, **changes)
    with pytest.raises(CheckpointError, match=match) as err:
        load_checkpoint(bad)
    assert _one_line(err)


@pytest.mark.parametrize(
    "config,match",
    [
        ({"num_classes": 10**9}, "num_classes.*\\[2, 100000\\]"),
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": 2.5}, "num_classes"),
        ({"num_classes": True}, "num_classes"),
        ({"in_channels": 4096}, "in_channels"),
        ({"activation": "x" * 1000}, "longer than 256"),
        ({"arrangement": "sideways"}, "cannot rebuild"),
        ({"unknown_option": 1}, "cannot rebuild"),
        # within the bounds, but not what the file holds: refused from the header's shapes,
        # before any weight of the 100k-class model is allocated
        ({"num_classes": 100_000}, "does not match the model it describes"),
    ],
)
def test_bad_config_is_refused_before_building(original, tmp_path, config, match):
    full = {**resolve_config(NAME, in_channels=3), **config}
    bad = _rewrite(original, tmp_path / "m.safetensors", resign=True, config=full)
    with pytest.raises(CheckpointError, match=match) as err:
        load_checkpoint(bad)
    assert _one_line(err)


def test_a_small_file_cannot_make_it_allocate_a_huge_model(tmp_path, monkeypatch):
    """Config asks for a ResNet-20 with 100k classes; the file holds a 10-class one. The
    shape check runs on the meta device: no real tensor is ever created for the big model."""
    from robustcli.models import registry

    model = create_model("resnet20")
    p = tmp_path / "r.safetensors"
    save_checkpoint(
        p,
        model,
        model_name="resnet20",
        config=resolve_config("resnet20"),
        dataset="cifar10",
        normalization={"mean": [0.5] * 3, "std": [0.25] * 3},
    )
    full = {**resolve_config("resnet20"), "num_classes": 100_000}
    _rewrite(p, p, resign=True, config=full)
    built = []
    real_build = registry.build_from_config

    def spy(backbone, config):
        m = real_build(backbone, config)
        built.append(next(m.parameters()).device.type)
        return m

    monkeypatch.setattr(registry, "build_from_config", spy)
    with pytest.raises(CheckpointError, match="fc.weight"):
        load_checkpoint(p)
    assert built == ["meta"]


# --------------------------------------------------------------------------------------------
# Non-finite weights and outputs
# --------------------------------------------------------------------------------------------


def test_nan_weights_are_refused_naming_the_tensor(original, tmp_path):
    tensors, _ = _contents(original)
    name = sorted(k for k, v in tensors.items() if v.is_floating_point())[3]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("inf")
    bad = _rewrite(original, tmp_path / "m.safetensors", resign=True, tensors=tensors)
    with pytest.raises(CheckpointError, match=f"tensor {name} holds NaN or infinite") as err:
        load_checkpoint(bad)
    assert _one_line(err)


def test_finite_weights_with_non_finite_outputs_are_refused(tmp_path):
    model = create_model("resnet20")
    with torch.no_grad():
        bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        bn.running_var.fill_(-1.0)  # the square root of a negative variance: NaN everywhere
    p = tmp_path / "r.safetensors"
    save_checkpoint(
        p,
        model,
        model_name="resnet20",
        config=resolve_config("resnet20"),
        dataset="cifar10",
        normalization={"mean": [0.5] * 3, "std": [0.25] * 3},
    )
    with pytest.raises(CheckpointError, match="outputs NaN or infinity") as err:
        load_checkpoint(p)
    assert _one_line(err)
    assert load_checkpoint(p, check_outputs=False).name == "resnet20"  # for inspection


def test_import_refuses_non_finite_weights(tmp_path):
    state = _model().state_dict()
    state[next(iter(state))] = torch.full_like(state[next(iter(state))], float("nan"))
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        import_state_dict(tmp_path / "w.pt", NAME, overrides={"in_channels": 3})


# --------------------------------------------------------------------------------------------
# Files of the wrong kind: torch files, random bytes, pickles
# --------------------------------------------------------------------------------------------


def test_random_bytes_are_not_called_python_objects(tmp_path):
    p = tmp_path / "random.pt"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="neither a PyTorch") as err:
        read_state_dict(p)
    assert "Python objects" not in _one_line(err)
    # a damaged pickle stream (right magic, garbage after it) is not a valid torch file either
    p.write_bytes(b"\x80\x02" + np.random.default_rng(1).bytes(4096))
    with pytest.raises(CheckpointError, match="not a valid PyTorch file") as err:
        read_state_dict(p)
    assert "Python objects" not in _one_line(err)
    p.write_bytes(b"PK\x03\x04" + bytes(200))
    with pytest.raises(CheckpointError, match="not a valid PyTorch file"):
        read_state_dict(p)


def test_a_real_pickle_of_objects_is_still_refused_as_such(tmp_path):
    p = tmp_path / "obj.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "when": Path("x")}, p)
    with pytest.raises(CheckpointError, match="Python objects beyond tensors"):
        read_state_dict(p)


def test_bare_safetensors_can_be_imported(tmp_path):
    p = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in _model().state_dict().items()}, str(p))
    ck = import_state_dict(p, NAME, overrides={"in_channels": 3})
    assert ck.integrity == "unverified" and not ck.verified


def test_torch_file_given_as_checkpoint_points_to_import(tmp_path):
    p = tmp_path / "w.pt"
    torch.save(_model().state_dict(), p)
    with pytest.raises(CheckpointError, match="import_state_dict"):
        load_checkpoint(p)
    p.write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        load_checkpoint(p)


# --------------------------------------------------------------------------------------------
# Provenance records of eval-c, attack and explain carry the integrity
# --------------------------------------------------------------------------------------------


def test_records_carry_verified(original, tmp_path, capsys):
    from robustcli.attacks.experiment import load_attack_model
    from robustcli.explain import load_explain_model

    stripped = _rewrite(original, tmp_path / "m.safetensors", **{HASH_KEY: None})
    assert load_attack_model(checkpoint=original).provenance["verified"] is True
    prov = load_attack_model(checkpoint=stripped).provenance
    assert prov["verified"] is False and prov["integrity"] == "unverified"
    assert load_explain_model(original).record()["verified"] is True
    rec = load_explain_model(stripped).record()
    assert rec["verified"] is False and rec["integrity"] == "unverified"
    capsys.readouterr()


def _eval_c(ckpt: Path, out: Path | None = None) -> list[str]:
    args = ["eval-c", str(ckpt), "--generate", "-n", "16", "-c", "brightness", "-s", "1"]
    return [*args, "--device", "cpu", *(["--out", str(out)] if out else ["--json"])]


def test_cli_eval_c_records_unverified_and_warns(original, tmp_path, monkeypatch):
    from robustcli.cli import app

    monkeypatch.setenv("ROBUSTCLI_CACHE", str(tmp_path / "cache"))
    stripped = _rewrite(original, tmp_path / "m.safetensors", **{HASH_KEY: None})
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, _eval_c(stripped, out))
    assert result.exit_code == 0, result.output
    assert [ln for ln in result.stderr.splitlines() if "UNVERIFIED" in ln]
    model = json.loads(out.read_text())["model"]
    assert model["verified"] is False and model["integrity"] == "unverified"
    result = CliRunner().invoke(app, _eval_c(original))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"]["verified"] is True


def test_cli_eval_c_bad_checkpoints_exit_2_with_one_line(original, tmp_path, monkeypatch):
    from robustcli.cli import app

    monkeypatch.setenv("ROBUSTCLI_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "res"
    out.mkdir()
    (out / "keep.json").write_text("{}")
    tensors, _ = _contents(original)
    tensors[sorted(k for k in tensors if k.endswith("weight"))[0]] *= float("nan")
    cases = {
        "std0": _rewrite(
            original,
            tmp_path / "std0.safetensors",
            resign=True,
            normalization={"mean": [0.3] * 3, "std": [0.0] * 3},
        ),
        "relabel": _rewrite(original, tmp_path / "relabel.safetensors", model="td-lenetfc"),
        "nan": _rewrite(original, tmp_path / "nan.safetensors", resign=True, tensors=tensors),
    }
    random_pt = tmp_path / "random.pt"
    random_pt.write_bytes(os.urandom(2048))
    cases["random"] = random_pt
    for label, ckpt in cases.items():
        result = CliRunner().invoke(app, _eval_c(ckpt, out / "r.json"))
        assert result.exit_code == 2, (label, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), (label, lines)
        assert "Traceback" not in result.output
    assert sorted(p.name for p in out.iterdir()) == ["keep.json"]


def test_cli_subprocess_edited_model_name(original, tmp_path):
    """The real entry point: exit 2, one stderr line, no traceback."""
    edited = _rewrite(original, tmp_path / "m.safetensors", model="td-lenetfc")
    robust = Path(sys.executable).with_name("robust")
    env = {**os.environ, "ROBUSTCLI_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(robust), *_eval_c(edited)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "checksum" in lines[0] and "Traceback" not in proc.stderr
    assert proc.stdout == ""


# --------------------------------------------------------------------------------------------
# Official-layout .npy files
# --------------------------------------------------------------------------------------------


def _official(root: Path, n: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "labels.npy", np.tile(np.arange(n, dtype=np.int64), 5))
    np.save(root / "fog.npy", np.zeros((5 * n, 4, 4, 3), np.uint8))
    return root


@pytest.mark.parametrize(
    "labels,match",
    [
        (np.tile(np.array([0, -1, 2, 3]), 5), "negative label"),
        (np.tile(np.array([0, 1, 2, 10]), 5), "label 10, but there are 10 classes"),
    ],
)
def test_labels_out_of_range(tmp_path, labels, match):
    root = _official(tmp_path / "c")
    np.save(root / "labels.npy", labels)
    with pytest.raises(DataError, match=match) as err:
        load_official(root, ["fog"], num_classes=10)
    assert "labels.npy" in _one_line(err)


def _npy_with_header(header: bytes, data: bytes = b"") -> bytes:
    header = header + b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


@pytest.mark.parametrize(
    "blob,match",
    [
        (b"\x93NUMPY\x01\x00\xff", "not a readable .npy file"),
        (_npy_with_header(b"{'descr': '<u1', 'fortran_order': False, 'shape': (5,"), "readable"),
        (_npy_with_header(b"[1, 2, 3]"), "not a readable"),
        # a shape the file cannot hold: refused from the header, nothing allocated
        (
            _npy_with_header(
                b"{'descr': '|u1', 'fortran_order': False, 'shape': (10**6, 4096, 4096, 3), }"
            ),
            "readable",
        ),
        (
            _npy_with_header(
                b"{'descr': '|u1', 'fortran_order': False, 'shape': (100000, 4096, 4096, 3), }"
            ),
            "truncated",
        ),
        (
            _npy_with_header(b"{'descr': '|O', 'fortran_order': False, 'shape': (20,), }"),
            "Python objects",
        ),
        (
            _npy_with_header(b"{'descr': '<f4', 'fortran_order': False, 'shape': (20, 4, 4, 3), }")
            + bytes(20 * 48 * 4),
            "dtype float32, expected uint8",
        ),
        (
            _npy_with_header(b"{'descr': '|u1', 'fortran_order': False, 'shape': (20, 4, 4, 3), }")
            + bytes(20 * 48 + 7),
            "longer than its header says",
        ),
        (b"PK\x03\x04" + bytes(100), "not a readable .npy file"),
    ],
)
def test_malformed_npy_files(tmp_path, blob, match):
    root = _official(tmp_path / "c")
    (root / "fog.npy").write_bytes(blob)
    with pytest.raises(DataError, match=match) as err:
        load_official(root, ["fog"])
    assert "fog.npy" in _one_line(err)


def test_allow_pickle_stays_off(tmp_path, monkeypatch):
    root = _official(tmp_path / "c")
    np.save(root / "fog.npy", np.array([{"a": 1}] * 20, dtype=object), allow_pickle=True)

    def boom(*args, **kwargs):
        raise AssertionError("unpickled")

    monkeypatch.setattr("pickle.loads", boom)
    monkeypatch.setattr("pickle.load", boom)
    with pytest.raises(DataError, match="Python objects"):
        load_official(root, ["fog"])


# --------------------------------------------------------------------------------------------
# Property-based fuzzing
# --------------------------------------------------------------------------------------------

_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
_json_value = st.recursive(
    _json_leaf,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)
_FIELDS = (
    "format",
    "format_version",
    "model",
    "backbone",
    "dataset",
    "config",
    "normalization",
    "input",
)
_CONFIG_KEYS = ("num_classes", "in_channels", "activation", "arrangement", "pyramid_method")


def _encode(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)  # NaN stays "NaN": bad JSON


def _outcome(path: Path):
    try:
        return load_checkpoint(path, warn=False)
    except RobustError as exc:
        assert "\n" not in str(exc), str(exc)
        return exc


@FUZZ
@given(
    field=st.sampled_from(_FIELDS),
    value=_json_value,
    resign=st.booleans(),
)
def test_fuzz_metadata_fields(original, tmp_path, field, value, resign):
    p = _rewrite(original, tmp_path / "fuzz.safetensors", resign=resign, **{field: _encode(value)})
    got = _outcome(p)
    _, before = _contents(original)
    if not resign and _encode(value) != before[field] and not isinstance(got, RobustError):
        raise AssertionError(f"edited {field} loaded without a checksum error: {got.integrity}")


@FUZZ
@given(key=st.sampled_from(_CONFIG_KEYS), value=_json_value)
def test_fuzz_config_values(original, tmp_path, key, value):
    config = {**resolve_config(NAME, in_channels=3), key: value}
    p = _rewrite(original, tmp_path / "fuzz.safetensors", resign=True, config=json.dumps(config))
    got = _outcome(p)
    if not isinstance(got, RobustError):
        assert got.verified and got.config[key] == value


@FUZZ
@given(
    flips=st.lists(
        st.tuples(st.booleans(), st.integers(0, 10**9), st.integers(1, 255)), min_size=1, max_size=3
    )
)
def test_fuzz_byte_flips_never_load_as_verified_changes(original, tmp_path, flips):
    blob = bytearray(original.read_bytes())
    header_end = 8 + int.from_bytes(blob[:8], "little")  # half the flips hit the JSON header
    for in_header, pos, mask in flips:
        blob[pos % (header_end if in_header else len(blob))] ^= mask
    p = tmp_path / "flipped.safetensors"
    p.write_bytes(bytes(blob))
    got = _outcome(p)
    if isinstance(got, RobustError):
        return
    if not got.verified:  # the checksum's key itself was hit: a labelled unverified import
        assert got.integrity == "unverified" and HASH_KEY not in _contents(p)[1]
        return
    # verified only if nothing that matters changed (e.g. a header space became a tab)
    ref = load_checkpoint(original)
    assert (got.name, got.config, got.mean, got.std, got.meta) == (
        ref.name,
        ref.config,
        ref.mean,
        ref.std,
        ref.meta,
    )
    ours, theirs = ref.model.state_dict(), got.model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@FUZZ
@given(
    header=st.one_of(
        st.binary(max_size=80),
        st.builds(
            lambda descr, shape, fortran: (
                f"{{'descr': {descr!r}, 'fortran_order': {fortran!r}, 'shape': {shape!r}, }}"
            ).encode(),
            st.sampled_from(["|u1", "<i8", "<f4", "|O", "|b1", "<U3", "garbage", ">u2"]),
            st.tuples(*[st.integers(-3, 40)] * 4) | st.tuples(st.integers(-3, 10**12)),
            st.booleans(),
        ),
    ),
    data=st.binary(max_size=2000),
    which=st.sampled_from(["fog.npy", "labels.npy"]),
)
def test_fuzz_npy_headers(tmp_path, header, data, which):
    root = _official(tmp_path / "fz")
    (root / which).write_bytes(_npy_with_header(header, data))
    try:
        got = load_official(root, ["fog"], num_classes=10)
    except DataError as exc:
        assert "\n" not in str(exc) and which in str(exc), str(exc)
    else:
        assert got.labels.min() >= 0 and got.labels.max() < 10
        assert got.images("fog", 1).dtype == np.uint8
