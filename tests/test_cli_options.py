"""One set of options (issue #13): every command spells a shared option the same way.

The walk reads the Click command objects behind ``robust`` (what ``--help`` prints) and compares
each shared option with its one definition in ``robustcli.cli.options``: names, short flag,
default, and help text (a command may add a sentence after the shared one). The rest: start-up
stays light (no torch, pandas or Foolbox before a command runs), ``--format`` takes the same
values everywhere with ``--json`` as its alias, ``--progress none`` works, and the registries
refuse a name given twice.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from robustcli.cli import app
from robustcli.cli import options as opt
from robustcli.errors import RobustError

HEAVY = ("torch", "pandas", "foolbox")

# The shared options, by parameter name, as robustcli.cli.options defines them.
SHARED = {
    "device": opt.device_option,
    "data_dir": opt.data_dir_option,
    "dataset": opt.dataset_option,
    "out": opt.out_option,
    "force": opt.force_option,
    "seed": opt.seed_option,
    "batch_size": opt.batch_size_option,
    "n_examples": opt.n_examples_option,
    "precision": opt.precision_option,
    "progress": opt.progress_option,
    "no_progress": opt.no_progress_option,
    "fmt": opt.format_option,
    "as_json": opt.json_option,
}

# Which commands have which shared option (study: robustcli/cli/study.py, checked when it has
# adopted the shared definitions).
EXPECTED = {
    "quickstart": {"out", "force", "fmt", "as_json"},
    "train": {"device", "data_dir", "dataset", "out", "force", "seed", "batch_size",
              "precision", "progress"},
    "eval-c": {"device", "data_dir", "out", "force", "seed", "batch_size", "n_examples",
               "precision", "progress", "no_progress", "fmt", "as_json"},
    "corrupt": {"device", "data_dir", "dataset", "out", "force", "seed", "n_examples",
                "progress", "no_progress"},
    "attack": {"device", "data_dir", "dataset", "out", "force", "seed", "batch_size",
               "n_examples", "precision", "progress", "no_progress", "fmt", "as_json"},
    "explain": {"device", "data_dir", "dataset", "out", "force", "batch_size", "n_examples",
                "precision", "fmt", "as_json"},
    "compare": {"force", "fmt", "as_json"},
    "models": {"fmt", "as_json"},
}  # fmt: skip

# Names the shared options must never be given a different meaning under.
SHORT = {"-d": "dataset", "-o": "out", "-b": "batch_size", "-n": "n_examples", "-f": "fmt"}


def _commands() -> dict:
    group = typer.main.get_command(app)
    return dict(group.commands)


def _value_type(param) -> object:
    """What the option parses its value into: the annotation (Typer >= 0.29 keeps it on the
    parameter) or the Click type and its choices (Typer <= 0.28)."""
    if hasattr(param, "type_descriptor"):
        return param.type_descriptor.annotation
    return type(param.type).__name__, getattr(param.type, "choices", None)


def _canonical() -> dict:
    """The Click parameters of a command made of every shared option, as defined once."""
    probe = typer.Typer()

    def probe_command(**kwargs):  # pragma: no cover - never run
        pass

    import inspect

    probe_command.__signature__ = inspect.Signature(
        [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=make(), annotation=ann)
            for name, make in SHARED.items()
            for ann in [
                {
                    "force": bool,
                    "no_progress": bool,
                    "as_json": bool,
                    "seed": int | None,
                    "batch_size": int | None,
                    "n_examples": int | None,
                    "data_dir": Path | None,
                    "out": Path | None,
                    "dataset": str | None,
                }.get(name, str)
            ]
        ]
    )
    probe.command()(probe_command)
    probe.command("other")(lambda: None)
    cmd = typer.main.get_command(probe).commands["probe-command"]
    return {p.name: p for p in cmd.params}


CANONICAL = _canonical()


def test_every_command_is_registered_in_order():
    assert list(_commands()) == [
        "quickstart", "train", "eval-c", "corrupt", "attack", "explain", "compare", "study",
        "models",
    ]  # fmt: skip


@pytest.mark.parametrize("command", sorted(_commands()))
def test_command_summary_is_one_line(command):
    """`robust --help` lists each command with its docstring's first paragraph, keeping its line
    breaks: a summary wrapped in the source showed as a broken line in the list."""
    summary = _commands()[command].help.strip().split("\n\n")[0]
    assert "\n" not in summary, f"{command}: {summary!r}"
    assert len(summary) <= 100, f"{command}: summary of {len(summary)} characters"


@pytest.mark.parametrize("command", sorted(_commands()))
def test_help_prose_reaches_the_formatter_unwrapped(command):
    """Typer's rich formatter keeps a paragraph's line breaks, then wraps it to the terminal:
    a prose paragraph wrapped in the source showed as ragged lines. Only example blocks
    (indented lines) may keep theirs."""
    for para in _commands()[command].help.split("\n\n"):
        lines = para.split("\n")
        assert len(lines) == 1 or all(line[:1].isspace() for line in lines[1:]), (
            f"{command}: {para!r}"
        )
        assert "\b" not in para, f"{command}: Click's \\b marker shows as a blank line"


@pytest.mark.parametrize("command", ["train", "attack", "eval-c", "compare", "study"])
def test_help_shows_no_value_type_beside_a_flag(command):
    """A flag takes no value, so --help must not print one beside it (Typer 0.29.0-0.29.2 print
    ``<bool>`` beside every flag, --help included; pyproject.toml excludes them)."""
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    flags = [line for line in result.output.splitlines() if re.search(r"--(help|force)\b", line)]
    assert flags, result.output
    assert "<bool>" not in result.output, flags
    assert "<int>" in result.output or "<str>" in result.output or "INTEGER" in result.output


def test_help_renders_a_wrapped_docstring_paragraph_as_one():
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "feeds the model: robustcli.checkpoint.load_checkpoint), metrics.csv" in result.output


@pytest.mark.parametrize("command", sorted(EXPECTED))
def test_shared_options_have_one_spelling(command):
    params = {p.name: p for p in _commands()[command].params}
    assert EXPECTED[command] <= set(params), f"{command} lacks {EXPECTED[command] - set(params)}"
    _check_shared(command, params)


def test_study_uses_the_shared_options():
    params = {p.name: p for p in _commands()["study"].params}
    adopted = all(
        params[n].help.startswith(opt.HELP["format" if n == "fmt" else n])
        for n in ("fmt", "data_dir", "out")
        if n in params
    )
    if not adopted:
        pytest.xfail("robustcli/cli/study.py does not use robustcli.cli.options yet")
    _check_shared("study", params)


def _check_shared(command: str, params: dict) -> None:
    for name, param in params.items():
        if name not in CANONICAL:
            # a command's own option must not take a shared option's name or short flag
            taken = set(param.opts) & ({o for p in CANONICAL.values() for o in p.opts})
            assert not taken, f"{command} --{name} uses the shared {taken}"
            continue
        ref = CANONICAL[name]
        assert param.opts == ref.opts, (command, name, param.opts, ref.opts)
        assert param.secondary_opts == ref.secondary_opts, (command, name)
        assert param.default == ref.default, (command, name, param.default, ref.default)
        assert param.hidden == ref.hidden, (command, name)
        assert param.help.startswith(ref.help), (command, name, param.help)
        assert _value_type(param) == _value_type(ref), (command, name, _value_type(param))
    for short, name in SHORT.items():
        owners = [n for n, p in params.items() if short in p.opts]
        assert owners in ([], [name]), f"{command}: {short} is {owners}, not --{name}"


def test_shared_short_flags_and_defaults_are_the_documented_ones():
    assert CANONICAL["batch_size"].opts == ["--batch-size", "-b"]
    assert CANONICAL["n_examples"].opts == ["--n-examples", "-n"]
    assert CANONICAL["dataset"].opts == ["--dataset", "-d"]
    assert CANONICAL["out"].opts == ["--out", "-o"]
    assert CANONICAL["fmt"].opts == ["--format", "-f"]
    assert CANONICAL["device"].default == "auto" and CANONICAL["precision"].default == "auto"
    assert CANONICAL["progress"].default == "auto" and CANONICAL["fmt"].default == "table"


def test_help_name_lists_match_the_library():
    from robustcli.data import dataset_names
    from robustcli.render import FORMATS

    assert opt.FORMATS == FORMATS
    listed = set(re.sub(r" \([^)]*\)", "", opt.DATASETS_HELP).split(", "))
    assert listed == set(dataset_names())


def test_recipe_help_names_every_recipe():
    from robustcli.cli.train import RECIPE_HELP
    from robustcli.train import RECIPES

    for name in RECIPES:
        assert name in RECIPE_HELP, name


# --------------------------------------------------------------------------- start-up


_PROBE = """
import json, sys
sys.argv = {argv!r}
from robustcli.cli import main
try:
    main()
except SystemExit:
    pass
print(json.dumps([m for m in {heavy!r} if m in sys.modules]), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "argv",
    [
        None,
        ["robust", "--version"],
        ["robust", "--help"],
        ["robust", "eval-c", "--help"],
        ["robust", "attack", "--seed", "-1"],  # a usage error
    ],
)
def test_start_up_does_not_load_torch_pandas_or_foolbox(argv):
    code = (
        f"import json, sys, robustcli.cli\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]), file=sys.stderr)"
        if argv is None
        else _PROBE.format(argv=argv, heavy=HEAVY)
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == [], proc.stderr


# --------------------------------------------------------------------------- --format / --json


def _format_error_args(command: str, fmt: str) -> list[str]:
    first = {"eval-c": ["x"], "explain": ["x"], "compare": ["x.json"], "study": ["x.yaml"]}
    return [command, *first.get(command, []), "-f", fmt]


@pytest.mark.parametrize("command", ["eval-c", "attack", "explain", "compare", "models",
                                     "quickstart", "study"])  # fmt: skip
def test_format_takes_the_same_values_everywhere(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, _format_error_args(command, "xml"))
    assert result.exit_code == 2
    assert "unknown --format 'xml': choose one of table, json, csv, markdown" in result.output


def test_json_is_an_alias_of_format_json():
    runner = CliRunner()
    a = runner.invoke(app, ["models", "bu-lenetfc", "--json", "--no-macs"])
    b = runner.invoke(app, ["models", "bu-lenetfc", "-f", "json", "--no-macs"])
    assert a.exit_code == 0 and a.output == b.output
    assert json.loads(a.output)[0]["name"] == "bu-lenetfc"
    clash = runner.invoke(app, ["models", "bu-lenetfc", "--json", "-f", "csv", "--no-macs"])
    assert clash.exit_code == 2 and "--json and --format csv" in clash.output


@pytest.fixture(scope="module")
def lenet(tmp_path_factory) -> Path:
    """An untrained bu-lenetfc checkpoint on the embedded digits."""
    return _checkpoint(tmp_path_factory.mktemp("ck") / "lenet", "bu-lenetfc", "digits")


def _checkpoint(folder: Path, name: str, dataset: str) -> Path:
    import torch

    from robustcli.checkpoint import save_checkpoint
    from robustcli.registry import create_model, get_dataset_spec, resolve_config

    torch.manual_seed(0)
    spec = get_dataset_spec(dataset)
    return save_checkpoint(
        folder / "model.safetensors",
        create_model(name),
        model_name=name,
        config=resolve_config(name),
        dataset=dataset,
        normalization={"mean": list(spec.mean), "std": list(spec.std)},
    )


CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck")  # fmt: skip


@pytest.fixture(scope="module")
def rgb(tmp_path_factory) -> tuple[Path, Path]:
    """A resnet20 checkpoint (cifar10) and a clean ImageFolder tree of 10 random 32x32 images."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("rgb")
    rng = np.random.default_rng(0)
    for c in CIFAR_CLASSES:
        for split in ("train", "test"):
            (root / "clean" / split / c).mkdir(parents=True)
            img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / "clean" / split / c / "0.png")
    return _checkpoint(root / "r20", "resnet20", "cifar10"), root / "clean"


EVAL = ["--generate", "-n", "4", "-c", "gaussian_noise", "-s", "1", "--device", "cpu"]


def test_eval_c_formats_and_progress_none(rgb, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTCLI_CACHE", str(tmp_path / "cache"))
    ck, clean = rgb
    base = ["eval-c", str(ck), *EVAL, "--data-dir", str(clean), "--no-clean"]
    runner = CliRunner()
    as_json = runner.invoke(app, [*base, "--json", "--progress", "none"])
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.output)
    fmt_json = runner.invoke(app, [*base, "-f", "json", "--no-progress"])
    again = json.loads(fmt_json.stdout)
    assert again["accuracy"] == doc["accuracy"] and again["n_examples"] == 4
    csv = runner.invoke(app, [*base, "-f", "csv", "--progress", "plain"])
    assert csv.exit_code == 0, csv.output
    # plain: log lines on stderr (the part being evaluated, images done, time), none on stdout
    log = csv.stderr.splitlines()
    assert log[0].startswith("eval-c: gaussian_noise, 0/4 (0.0 %), 0:00:")
    assert log[-1].startswith("eval-c: done, 4/4 (100.0 %), 0:00:") and len(log) == 2
    assert as_json.stderr == ""  # --progress none: silent
    lines = csv.stdout.splitlines()
    assert lines[0].startswith(",gaussian_noise") and lines[2].startswith("resnet20,")
    acc = doc["accuracy"]["gaussian_noise"]["1"] / 100
    assert float(lines[2].split(",")[1]) == pytest.approx(acc)


def test_progress_rejects_unknown_modes_in_one_line():
    robust = Path(sys.executable).with_name("robust")
    proc = subprocess.run(
        [str(robust), "corrupt", "x", "--progress", "bars"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "auto, rich, plain, none" in proc.stderr


@pytest.mark.parametrize(
    ("progress", "lines"), [(["--progress", "none"], 0), (["--no-progress"], 2)]
)
def test_corrupt_progress_none_and_default_folder(progress, lines, rgb, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = ["-d", "imagefolder", "--data-dir", str(rgb[1])]
    args = ["corrupt", *data, "-n", "4", "-c", "fog", "-s", "1", "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, *progress, "--seed", "3"])
    assert result.exit_code == 0, result.output
    log = [x for x in result.stderr.splitlines() if x.startswith("corrupt: ")]
    assert len(log) == lines  # --no-progress is plain: "corrupt: fog, ..." and "corrupt: done"
    assert all(x.startswith(("corrupt: fog, 0/1 ", "corrupt: done, 1/1 ")) for x in log)
    folder = tmp_path / "runs" / "corrupt-imagefolder-s3"
    assert sorted(p.name for p in folder.iterdir()) == ["fog.npy", "generation.json", "labels.npy"]
    clash = CliRunner().invoke(app, [*args, "a", "-o", "b"])
    assert clash.exit_code == 2 and "two output folders" in clash.output


def test_attack_positional_reference_and_fp32_only(lenet, tmp_path):
    runner = CliRunner()
    bf16 = runner.invoke(app, ["attack", str(lenet), "--precision", "bf16"])
    assert bf16.exit_code == 2 and "computes in fp32" in bf16.output
    both = runner.invoke(app, ["attack", str(lenet), "-c", str(lenet)])
    assert both.exit_code == 2 and "two checkpoints" in both.output
    out = tmp_path / "a"
    args = ["attack", str(lenet), "-a", "contrast", "-n", "4", "-p",
            "contrast.binary_search_steps=2", "--device", "cpu", "-o", str(out),
            "--progress", "none", "-f", "csv"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout == (out / "attack_summary.csv").read_text()
    assert "done " not in result.output  # none: not even the per-run lines


# --------------------------------------------------------------------------- registries


def test_registries_refuse_duplicate_names():
    from robustcli.attacks import ATTACKS, register_attack
    from robustcli.registry import _load_unique, register_backbone

    with pytest.raises(RobustError, match="'resnet20' is already registered"):
        register_backbone("resnet20")(lambda **kw: None)
    with pytest.raises(RobustError, match="'ddn' is already registered"):
        register_attack(ATTACKS["ddn"])
    zoo = "models:\n  a: {x: 1}\n  b: {x: 2}\n  a: {x: 3}\n"
    with pytest.raises(RobustError, match=r"zoo.yaml: 'a' is given twice \(line 4\)"):
        _load_unique(zoo, "zoo.yaml")
    assert _load_unique("models:\n  a: 1\n  b: 2\n", "z") == {"models": {"a": 1, "b": 2}}


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["nosuch"], "error: No such command 'nosuch'. (robust --help)"),
        (["--nosuch"], "error: No such option: --nosuch (robust --help)"),
        (["attack", "--nosuch"], "(robust attack --help)"),
    ],
)
def test_usage_errors_point_to_the_help_of_their_command(argv, line, monkeypatch, capsys):
    from robustcli.cli import main

    monkeypatch.setattr(sys, "argv", ["robust", *argv])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1
    assert err[0].endswith(line) and "robust robust" not in err[0]


_BF16_PROBE = """
import sys
import robustcli.runtime
robustcli.runtime.cpu_has_native_bf16 = lambda: False  # as on an AVX2 CPU
from robustcli.cli import main
sys.argv = {argv!r}
main()
"""


def test_a_warning_is_one_line_on_stderr(tmp_path, child_env):
    argv = ["robust", "train", "-m", "bu-lenetfc", "-d", "digits", "-e", "1", "--precision"]
    argv += ["bf16", "-o", str(tmp_path / "run"), "--progress", "plain"]
    code = _BF16_PROBE.format(argv=argv)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env, timeout=240
    )
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "emulated" in line]
    assert warned == [
        "warning: --precision bf16 on a CPU without AVX512-BF16 or AMX: bf16 is emulated there, "
        "many times slower than fp32; --precision auto picks fp32 on this CPU"
    ]
    assert "RuntimeWarning" not in done.stderr and "resolve_precision(" not in done.stderr
    assert (tmp_path / "run" / "model.safetensors").is_file()
