"""One model reference everywhere (issue #13): ``robustcli.models.load_model`` reads a
checkpoint file, a run folder, a registry name (stored weights, or random ones when asked) and a
user's own ``package.module:factory``, for eval-c, attack and explain alike."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from robustcli.cli import app
from robustcli.cli import options as opt
from robustcli.errors import CheckpointError, RobustError
from robustcli.io import file_sha256
from robustcli.models import LoadedModel, load_model, resolve_reference

ROBUST = Path(sys.executable).parent / "robust"

NETS = """
from torch import nn


def build(num_classes=10, in_channels=3):
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
    )


def five_classes():
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(5))


NOT_A_FACTORY = 3


def not_a_module():
    return "a network, honestly"
"""

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck")  # fmt: skip


@pytest.fixture(scope="module")
def mypkg(tmp_path_factory):
    """``mypkg.nets`` (the user's own models) importable from a temporary folder."""
    root = tmp_path_factory.mktemp("user")
    (root / "mypkg").mkdir()
    (root / "mypkg" / "__init__.py").write_text("")
    (root / "mypkg" / "nets.py").write_text(NETS)
    (root / "mypkg" / "broken.py").write_text("import nosuchdep_h12\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        yield root / "mypkg" / "nets.py"
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        del sys.modules[name]


def _save(path: Path, name: str, dataset: str) -> Path:
    from robustcli.checkpoint import save_checkpoint
    from robustcli.models.registry import create_model, get_dataset_spec, resolve_config

    torch.manual_seed(0)
    spec = get_dataset_spec(dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(
        path,
        create_model(name),
        model_name=name,
        config=resolve_config(name),
        dataset=dataset,
        normalization={"mean": list(spec.mean), "std": list(spec.std)},
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A bu-lenetfc digits run folder, a resnet20 cifar10 ``checkpoint.safetensors`` and a clean
    CIFAR-10-shaped ImageFolder tree (one random 32x32 image per class and split)."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("models")
    lenet = _save(root / "lenet" / "model.safetensors", "bu-lenetfc", "digits")
    r20 = _save(root / "checkpoint.safetensors", "resnet20", "cifar10")
    rng = np.random.default_rng(0)
    for c in CIFAR_CLASSES:
        for split in ("train", "test"):
            (root / "clean" / split / c).mkdir(parents=True)
            img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / "clean" / split / c / "0.png")
    return {"lenet": lenet, "r20": r20, "clean": root / "clean"}


# --------------------------------------------------------------------------------------------
# The grammar
# --------------------------------------------------------------------------------------------


def test_reference_grammar(files, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTCLI_CHECKPOINTS", str(tmp_path / "store"))
    assert resolve_reference(files["lenet"]).kind == "checkpoint"
    folder = resolve_reference(str(files["lenet"].parent))
    assert folder.kind == "checkpoint" and folder.path == files["lenet"].parent
    user = resolve_reference("mypkg.nets:build")
    assert (user.kind, user.module, user.factory) == ("user", "mypkg.nets", "build")
    rand = resolve_reference("bu-lenetfc", untrained=True)
    assert (rand.kind, rand.name, rand.untrained) == ("registry", "bu-lenetfc", True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="without model.safetensors"):
        resolve_reference(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="nosuch/model.safetensors not found"):
        resolve_reference("nosuch/model.safetensors")
    with pytest.raises(CheckpointError, match="did you mean resnet20"):
        resolve_reference("resnet2O")


def test_a_registry_name_finds_its_stored_weights_or_says_how_to_get_them(files, tmp_path):
    store = tmp_path / "store"
    with pytest.raises(CheckpointError) as err:
        resolve_reference("td-nin", checkpoint_dir=store)
    msg = str(err.value)
    assert "\n" not in msg and str(store / "td-nin" / "model.safetensors") in msg
    assert "robust train -m td-nin -d cifar10" in msg and "--untrained" in msg
    stored = store / "bu-lenetfc" / "model.safetensors"
    stored.parent.mkdir(parents=True)
    shutil.copy(files["lenet"], stored)
    ref = resolve_reference("bu-lenetfc", checkpoint_dir=store)
    assert (ref.kind, ref.path, ref.name) == ("checkpoint", stored, "bu-lenetfc")
    lm = load_model("bu-lenetfc", checkpoint_dir=store)
    assert lm.kind == "checkpoint" and lm.verified and lm.path == stored


# --------------------------------------------------------------------------------------------
# What load_model returns
# --------------------------------------------------------------------------------------------


def test_a_checkpoint_and_its_run_folder_load_alike(files):
    from robustcli.checkpoint import load_checkpoint

    a = load_model(files["lenet"])
    b = load_model(files["lenet"].parent)
    assert isinstance(a, LoadedModel) and a.kind == "checkpoint" and not a.model.training
    rec = a.record()
    assert rec == b.record()
    assert rec["checkpoint"] == str(files["lenet"].resolve())
    assert rec["sha256"] == file_sha256(files["lenet"])
    assert (rec["verified"], rec["integrity"], rec["untrained"]) == (True, "verified", False)
    assert rec["name"] == "bu-lenetfc" and rec["input_shape"] == [1, 28, 28]
    json.dumps(rec)  # the record goes into result documents as it is
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    ck = load_checkpoint(files["lenet"])
    assert torch.equal(a.to_input(images), ck.prepare(images))
    assert a.prepare("cpu") is a


def test_untrained_weights_are_seeded_and_recorded():
    a = load_model("bu-lenetfc", untrained=True)
    b = load_model("bu-lenetfc", untrained=True)
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    rec = a.record()
    assert (rec["kind"], rec["untrained"], rec["sha256"], rec["init_seed"]) == (
        "untrained",
        True,
        "untrained",
        0,
    )
    assert rec["verified"] is False and a.label == "bu-lenetfc (untrained)"


def test_a_user_factory_gets_the_dataset_shape_and_is_recorded_as_user_code(mypkg):
    lm = load_model("mypkg.nets:build", dataset="digits")
    assert lm.kind == "user" and lm.input_shape == (1, 8, 8) and lm.dataset == "digits"
    rec = lm.record()
    assert (rec["verified"], rec["integrity"], rec["checkpoint"]) == (False, "unverified", None)
    assert rec["user_code"]["file"] == str(mypkg.resolve())
    assert rec["sha256"] == rec["user_code"]["sha256"] == file_sha256(mypkg)
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    assert lm.model(lm.to_input(images)).shape == (3, 10)


@pytest.mark.parametrize(
    ("ref", "dataset", "match"),
    [
        ("mypkg.nets:build", None, "give --dataset"),
        ("mypkg.nets:five_classes", "digits", r"not \(1, 10\) logits"),
        ("mypkg.nets:NOT_A_FACTORY", "digits", "not a callable"),
        ("mypkg.nets:not_a_module", "digits", "not a torch.nn.Module"),
        ("mypkg.nets:missing", "digits", "has no 'missing'"),
        ("nosuchpkg_h12.nets:build", "digits", "cannot import nosuchpkg_h12.nets"),
        ("mypkg.broken:build", "digits", "importing mypkg.broken failed.*install what it needs"),
    ],
)
def test_a_bad_user_factory_is_one_line(mypkg, ref, dataset, match):
    with pytest.raises(RobustError, match=match) as err:
        load_model(ref, dataset=dataset)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------
# The commands
# --------------------------------------------------------------------------------------------

EVAL = ["--generate", "-n", "4", "-c", "gaussian_noise", "-s", "1", "--device", "cpu"]


def test_eval_c_takes_a_safetensors_file(files):
    args = ["eval-c", str(files["r20"]), *EVAL, "--data-dir", str(files["clean"]), "-f", "json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["model"]["kind"] == "checkpoint" and doc["model"]["verified"] is True
    assert doc["model"]["checkpoint"] == str(files["r20"].resolve())


def test_eval_c_takes_a_user_module(mypkg, files):
    """The issue's `robust eval-c mypkg.nets:build --dataset cifar10 --generate -n 200`, on a
    CIFAR-10-shaped ImageFolder tree and n=4."""
    data = [*EVAL, "--data-dir", str(files["clean"]), "-f", "json"]
    result = CliRunner().invoke(app, ["eval-c", "mypkg.nets:build", "--dataset", "cifar10", *data])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["model"]["kind"] == "user" and doc["model"]["verified"] is False
    assert doc["model"]["user_code"]["factory"] == "build" and doc["n_examples"] == 4
    mixed = CliRunner().invoke(app, ["eval-c", str(files["r20"]), "--dataset", "cifar10", *data])
    assert mixed.exit_code == 2 and "drop --dataset" in mixed.output


@pytest.mark.parametrize(
    "argv",
    [["attack", "--model", "td-nin"], ["eval-c", "td-nin", "--generate"], ["explain", "td-nin"]],
)
def test_a_bare_registry_name_without_weights_is_one_line(argv, tmp_path):
    env = {**os.environ, "ROBUSTCLI_CHECKPOINTS": str(tmp_path)}
    proc = subprocess.run(
        [str(ROBUST), *argv], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "robust train -m td-nin -d cifar10" in proc.stderr and "--untrained" in proc.stderr


ATTACK = ["-a", "contrast", "-n", "4", "-p", "contrast.binary_search_steps=2", "--device", "cpu",
          "--progress", "none", "-f", "json"]  # fmt: skip


def test_attack_runs_an_untrained_registry_name_when_asked(tmp_path):
    out = tmp_path / "a"
    args = ["attack", "--model", "td-lenetfc", "--untrained", *ATTACK, "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (model,) = json.loads((out / "attack.json").read_text())["provenance"]["models"]
    assert (model["name"], model["untrained"], model["sha256"]) == ("td-lenetfc", True, "untrained")


def test_attack_stored_name_repeated_vs_and_the_old_spelling(files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "store" / "bu-lenetfc" / "model.safetensors"
    store.parent.mkdir(parents=True)
    shutil.copy(files["lenet"], store)
    runner = CliRunner()
    vs = ["--vs", str(files["lenet"]), "--vs", str(files["lenet"].parent)]
    result = runner.invoke(
        app, ["attack", "bu-lenetfc", "--checkpoint-dir", str(tmp_path / "store"), *vs, *ATTACK]
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "attack-bu-lenetfc-vs-bu-lenetfc-vs-bu-lenetfc"
    models = json.loads((out / "attack.json").read_text())["provenance"]["models"]
    assert [m["checkpoint"] for m in models] == [str(store.resolve())] + [
        str(files["lenet"].resolve())
    ] * 2
    old = ["attack", "-m", "bu-lenetfc", "-c", str(files["lenet"]), *ATTACK, "-o", "old"]
    assert runner.invoke(app, old).exit_code == 0
    wrong = runner.invoke(app, ["attack", "-m", "td-lenetfc", "-c", str(files["lenet"]), *ATTACK])
    assert wrong.exit_code == 2 and "holds 'bu-lenetfc', not 'td-lenetfc'" in wrong.output


def test_attack_and_explain_take_a_user_module(mypkg, tmp_path):
    runner = CliRunner()
    out = tmp_path / "a"
    args = ["attack", "mypkg.nets:build", "-d", "digits", *ATTACK, "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (model,) = json.loads((out / "attack.json").read_text())["provenance"]["models"]
    assert model["kind"] == "user" and model["input_shape"] == [1, 8, 8]
    vs = ["--vs", "mypkg.nets:build", "--vs", "mypkg.nets:build"]
    args = ["explain", "mypkg.nets:build", "-d", "digits", *vs, "-n", "2", "--no-per-layer"]
    result = runner.invoke(app, [*args, "--device", "cpu", "-o", str(tmp_path / "e"), "-f", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [m["role"] for m in doc["models"]] == ["model", "vs", "vs"]
    assert {m["kind"] for m in doc["models"]} == {"user"}


def test_the_model_options_are_spelled_once():
    import typer

    commands = typer.main.get_command(app).commands
    for name in ("eval-c", "attack", "explain"):
        params = {p.name: p for p in commands[name].params}
        model = next(p for p in params.values() if p.param_type_name == "argument")
        assert model.metavar == "MODEL" and model.help.startswith(opt.HELP["model"]), name
        for key in ("untrained", "checkpoint_dir"):
            assert params[key].help.startswith(opt.HELP[key]), (name, key)
            assert params[key].opts == [f"--{key.replace('_', '-')}"], (name, key)
    for name in ("attack", "explain"):
        vs = next(p for p in commands[name].params if p.name == "vs")
        assert vs.multiple and vs.help.startswith(opt.HELP["vs"]), name
    hidden = next(p for p in commands["attack"].params if p.name == "checkpoint")
    assert hidden.hidden and hidden.opts == ["--checkpoint", "-c"]


def test_the_registry_moved_into_models_and_the_old_paths_still_import():
    import robustcli.models.registry as new
    import robustcli.models.zoo as new_zoo
    import robustcli.registry as old
    import robustcli.zoo as old_zoo

    assert old.create_model is new.create_model and old.BACKBONES is new.BACKBONES
    assert old_zoo.models_table is new_zoo.models_table
    assert new.zoo_path().is_file() and "td-nin" in new.list_models("td-*")
