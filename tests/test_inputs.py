"""Bad inputs of the data layer, `robust eval-c` and `robust corrupt` (issue #12).

Each bad input must give exit code 2, one line on stderr, no traceback, and leave the output
folder byte-identical. ImageFolder cases run on tiny synthetic trees (3 classes x 4 images of
8x8) written with PIL; usage errors run through ``robustcli.cli:main`` (what ``robust`` runs).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from robustcli import data
from robustcli.checkpoint import save_checkpoint
from robustcli.cli import app, main
from robustcli.data import dataset_info, imagefolder, load_dataset
from robustcli.errors import DataError, RobustError
from robustcli.evaluate import load_clean, run_eval_c
from robustcli.registry import create_model, get_dataset_spec, resolve_config

ROBUST = Path(sys.executable).with_name("robust")
CLASSES = ("ant", "bee", "cat")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTCLI_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _pixels(cls_index: int, k: int, size: int) -> np.ndarray:
    """An RGB image whose red channel says its class (50 per training index) and green its
    number: labels can be checked against the pixels."""
    img = np.zeros((size, size, 3), dtype=np.uint8)
    img[..., 0] = 50 * (cls_index + 1)
    img[..., 1] = 10 * k
    img[..., 2] = 7
    return img


def _tree(
    root: Path,
    test_classes: tuple[str, ...] = CLASSES,
    n: int = 4,
    size: int = 8,
) -> Path:
    for split, names in (("train", CLASSES), ("test", test_classes)):
        for name in names:
            folder = root / split / name
            folder.mkdir(parents=True)
            index = CLASSES.index(name) if name in CLASSES else 4  # not a training class
            for k in range(n):
                Image.fromarray(_pixels(index, k, size)).save(folder / f"img{k}.png")
    return root


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _one_line(exc_info: pytest.ExceptionInfo) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg.strip() == msg
    return msg


def _snapshot(folder: Path) -> dict[str, bytes] | None:
    if not folder.exists():
        return None
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


# --------------------------------------------------------------------------------------------
# ImageFolder: classes and channels from the training split
# --------------------------------------------------------------------------------------------


def test_test_split_missing_a_class_keeps_training_indices(tmp_path):
    root = _tree(tmp_path / "tree", test_classes=("ant", "cat"))
    x, y = load_dataset("imagefolder", "test", root)
    assert x.shape == (8, 3, 8, 8)
    # "cat" is class 2 of training, although it is the second folder of the test split
    assert sorted(set(y.tolist())) == [0, 2]
    assert torch.equal(x[:, 0, 0, 0].long(), 50 * (y + 1))
    info = dataset_info("imagefolder", root)
    assert info.classes == CLASSES and info.num_classes == 3 and info.channels == 3


def test_test_split_with_an_unknown_class_is_refused(tmp_path):
    root = _tree(tmp_path / "tree", test_classes=("ant", "bee", "cat", "dog"))
    with pytest.raises(DataError) as err:
        load_dataset("imagefolder", "test", root)
    msg = _one_line(err)
    assert "dog" in msg and "subset of the training classes" in msg
    assert "ant, bee, cat" in msg


def test_checkpoint_classes_label_the_test_split(tmp_path):
    root = _tree(tmp_path / "tree", test_classes=("bee", "cat"))
    # a model trained on four classes: the tree's folders map to its indices
    x, y, _ = load_clean("imagefolder", root, classes=["aardvark", "ant", "bee", "cat"], channels=3)
    assert sorted(set(y.tolist())) == [2, 3]
    assert torch.equal(x[:, 0, 0, 0].long(), 50 * y)  # bee was 1 in the tree, 2 here
    with pytest.raises(DataError) as err:
        load_clean("imagefolder", root, classes=["ant", "bee"], channels=3)
    assert "cat" in _one_line(err) and "the checkpoint" in str(err.value)


def test_a_grey_image_sorting_first_does_not_make_the_dataset_grey(tmp_path):
    root = _tree(tmp_path / "tree")
    grey = np.full((8, 8), 99, dtype=np.uint8)
    for split in ("train", "test"):  # sorts before img0.png in the first class folder
        Image.fromarray(grey).save(root / split / "ant" / "0grey.png")
    for split in ("train", "test"):
        x, y = load_dataset("imagefolder", split, root)
        assert x.shape == (13, 3, 8, 8)
        first = x[0]  # the grey image, replicated to three equal channels
        assert torch.equal(first[0], first[1]) and int(first[0, 0, 0]) == 99
    assert dataset_info("imagefolder", root).input_shape == (3, 8, 8)


def test_an_all_grey_tree_stays_grey_and_the_layout_is_cached(tmp_path, monkeypatch):
    root = tmp_path / "grey"
    for split in ("train", "test"):
        for i, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(
                root / split / name / "a.png"
            )
    x, _ = load_dataset("imagefolder", "test", root)
    assert x.shape == (3, 1, 8, 8)

    def no_probe(path):
        raise AssertionError("the layout was probed again instead of read from the cache")

    monkeypatch.setattr(imagefolder, "_probe_mode", no_probe)
    assert data.imagefolder_layout(root) == (list(CLASSES), 1)


# --------------------------------------------------------------------------------------------
# ImageFolder: unreadable files
# --------------------------------------------------------------------------------------------


def test_damaged_and_hidden_files_are_skipped_with_a_warning(tmp_path, capsys):
    root = _tree(tmp_path / "tree")
    good = _jpeg(_pixels(1, 0, 8))
    (root / "test" / "bee" / "cut.jpg").write_bytes(good[:-2])  # body truncated
    (root / "test" / "bee" / "half.jpg").write_bytes(good[: len(good) // 2])  # header cut
    (root / "test" / "cat" / "._img0.jpg").write_bytes(b"\x00\x05\x16\x07Mac OS X garbage")
    (root / "test" / "cat" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "test" / "cat" / "folder.png").mkdir()  # a folder where a file is expected
    (root / "test" / "__MACOSX").mkdir()  # never a class
    x, y = load_dataset("imagefolder", "test", root)
    assert x.shape == (12, 3, 8, 8) and torch.equal(x[:, 0, 0, 0].long(), 50 * (y + 1))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: skipped 3 of 15 image files")
    assert "bee/cut.jpg" in err and "bee/half.jpg" in err and "cat/folder.png" in err
    assert "._img0" not in err and "DS_Store" not in err  # hidden files are not images
    # the cached split repeats the warning: the files are still damaged
    x2, _ = load_dataset("imagefolder", "test", root)
    assert torch.equal(x2, x)
    assert "skipped 3 of 15" in capsys.readouterr().err


def test_a_split_with_nothing_readable_names_a_file(tmp_path):
    root = _tree(tmp_path / "tree")
    for path in (root / "test").rglob("*.png"):
        path.write_bytes(b"not a png")
    with pytest.raises(DataError) as err:
        load_dataset("imagefolder", "test", root)
    msg = _one_line(err)
    assert "none of the 12 image files" in msg and "ant/img0.png" in msg
    assert "not an image" in msg


def test_unreadable_folders_and_files_are_one_line_errors(tmp_path, monkeypatch, capsys):
    root = _tree(tmp_path / "tree")
    real_iterdir = Path.iterdir
    denied_dir = root / "test" / "bee"

    def iterdir(self):
        if self == denied_dir:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    with monkeypatch.context() as m:
        m.setattr(Path, "iterdir", iterdir)
        with pytest.raises(DataError) as err:
            load_dataset("imagefolder", "test", root)
    msg = _one_line(err)
    assert str(denied_dir) in msg and "Permission denied" in msg

    real_decode = imagefolder._decode

    def decode(path, mode):
        if path.name == "img1.png":
            raise PermissionError(13, "Permission denied", str(path))
        return real_decode(path, mode)

    monkeypatch.setattr(imagefolder, "_decode", decode)
    x, _ = load_dataset("imagefolder", "test", root)
    assert x.shape[0] == 9  # one file per class skipped
    assert "img1.png (Permission denied)" in capsys.readouterr().err

    archive = tmp_path / "tree.tar.gz"
    archive.write_bytes(b"\x1f\x8b")
    with pytest.raises(DataError) as err:
        load_dataset("imagefolder", "test", archive)
    assert "is a file, not a folder" in _one_line(err)


# --------------------------------------------------------------------------------------------
# eval-c and corrupt: numeric options and selections
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A 32x32 ImageFolder tree (3 classes x 2 images) and a random resnet20 trained "on" it."""
    root = tmp_path_factory.mktemp("inputs")
    _tree(root / "tree", n=2, size=32)
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=3)
    spec = get_dataset_spec("cifar10")
    save_checkpoint(
        root / "run" / "model.safetensors",
        model,
        model_name="resnet20",
        config=resolve_config("resnet20", num_classes=3),
        dataset="imagefolder",
        normalization={"mean": list(spec.mean), "std": list(spec.std)},
        extra={"classes": list(CLASSES)},
    )
    out = root / "results"
    out.mkdir()
    (out / "keep.json").write_text('{"kept": true}')
    return root


def _robust(monkeypatch, capsys, args: list[str]) -> tuple[int, str, str]:
    """``robust ARGS`` in this process, through the same entry point as the installed script."""
    monkeypatch.setattr(sys, "argv", ["robust", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    out, err = capsys.readouterr()
    return int(exit_.value.code or 0), out, err


def _assert_refused(code: int, out: str, err: str, message: str) -> None:
    assert code == 2, err
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert message in lines[0]


EVAL_C_CASES = [
    (["-n", "0"], "--n-examples 0 is out of range"),
    (["-n", "-5"], "--n-examples -5 is out of range"),
    (["-n", "ten"], "Invalid value for '--n-examples'"),
    (["--seed", "-1"], "--seed -1 is out of range"),
    (["-b", "0"], "--batch-size 0 is out of range"),
    (["-s", "0"], "severity 0 is out of range"),
    (["-s", "6"], "severity 6 is out of range"),
    (["-s", "1-9"], "severity 6 (in '1-9') is out of range"),
    (["-s", "5-1"], "empty severity range"),
    (["-s", "x"], "invalid severities"),
    (["-c", "fogg"], "did you mean fog"),
    (["-c", ","], "no corruptions selected"),
]


@pytest.mark.parametrize("args,message", EVAL_C_CASES, ids=[" ".join(a) for a, _ in EVAL_C_CASES])
def test_eval_c_bad_numbers_and_selections(workspace, monkeypatch, capsys, args, message):
    out = workspace / "results"
    before = _snapshot(out)
    code, stdout, err = _robust(
        monkeypatch,
        capsys,
        [
            "eval-c",
            str(workspace / "run"),
            "--generate",
            "--data-dir",
            str(workspace / "tree"),
            "--device",
            "cpu",
            "-o",
            str(out / "r.json"),
            *args,
        ],
    )
    _assert_refused(code, stdout, err, message)
    assert _snapshot(out) == before


CORRUPT_CASES = [
    (["-n", "0"], "--n-examples 0 is out of range"),
    (["-n", "-5"], "--n-examples -5 is out of range"),
    (["--seed", "-1"], "--seed -1 is out of range"),
    (["-s", "7"], "severity 7 is out of range"),
    (["-c", "nope"], "unknown corruption selection 'nope'"),
]


@pytest.mark.parametrize("args,message", CORRUPT_CASES, ids=[" ".join(a) for a, _ in CORRUPT_CASES])
def test_corrupt_bad_numbers_and_selections(
    workspace, tmp_path, monkeypatch, capsys, args, message
):
    out = tmp_path / "c10c"
    code, stdout, err = _robust(
        monkeypatch,
        capsys,
        ["corrupt", str(out), "-d", "imagefolder", "--data-dir", str(workspace / "tree"), *args],
    )
    _assert_refused(code, stdout, err, message)
    assert not out.exists()


def test_the_installed_robust_gives_one_line_usage_errors(workspace):
    """One real subprocess of ``.venv/bin/robust`` (the in-process cases above share its code)."""
    if not ROBUST.is_file():
        pytest.skip(f"no installed robust script next to {sys.executable}")
    out = workspace / "results"
    before = _snapshot(out)
    proc = subprocess.run(
        [
            str(ROBUST),
            "eval-c",
            str(workspace / "run"),
            "--generate",
            "-n",
            "0",
            "-o",
            str(out / "r.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: Invalid value for '--n-examples' / '-n': --n-examples 0 is out of range: give a "
        "number >= 1 (robust eval-c --help)"
    ]
    assert _snapshot(out) == before


def test_library_entry_points_check_numbers_first(workspace, tmp_path):
    kw = {"generate": True, "data_dir": workspace / "tree", "device": "cpu"}
    for bad, message in (
        ({"n_examples": 0}, "--n-examples must be a whole number of at least 1"),
        ({"batch_size": -2}, "--batch-size must be a whole number of at least 1"),
        ({"seed": -1}, "--seed must be a whole number of at least 0"),
        ({"n_examples": True}, "--n-examples must be"),
    ):
        # a checkpoint that does not exist: the numbers are refused before it is looked for
        with pytest.raises(RobustError, match=message):
            run_eval_c(tmp_path / "missing", **{**kw, **bad})
    from robustcli.corruptions import generate_dataset

    images = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    with pytest.raises(RobustError, match="seed must be a whole number of at least 0"):
        generate_dataset(images, [0, 1], tmp_path / "never", ["brightness"], [1], seed=-1)
    assert not (tmp_path / "never").exists()


def test_n_examples_above_the_data_is_said_and_recorded(workspace, tmp_path):
    out = tmp_path / "r.json"
    result = CliRunner().invoke(
        app,
        [
            "eval-c",
            str(workspace / "run"),
            "--generate",
            "-n",
            "1000",
            "-c",
            "brightness",
            "-s",
            "1",
            "--data-dir",
            str(workspace / "tree"),
            "--device",
            "cpu",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "note: --n-examples 1000 is more than the 6 images per severity: using all 6" in (
        result.output
    )
    doc = json.loads(out.read_text())
    assert doc["n_examples"] == 6 and doc["provenance"]["n_examples_requested"] == 1000
    assert doc["counts"]["clean"][1] == 6


def test_corrupt_says_when_n_examples_is_above_the_data(workspace, tmp_path):
    folder = tmp_path / "c10c"
    result = CliRunner().invoke(
        app,
        [
            "corrupt",
            str(folder),
            "-d",
            "imagefolder",
            "--data-dir",
            str(workspace / "tree"),
            "-c",
            "brightness",
            "-s",
            "1",
            "-n",
            "50",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "note: --n-examples 50 is more than the 6 test images: using all 6" in result.output
    assert json.loads((folder / "generation.json").read_text())["n_images"] == 6
    auto = "cuda" if torch.cuda.is_available() else "cpu"  # --device auto is the default
    assert json.loads((folder / "generation.json").read_text())["device"].startswith(auto)


def test_n_examples_above_official_files_is_said_and_recorded(workspace, tmp_path):
    from robustcli.corruptions import generate_dataset

    x, y = load_dataset("imagefolder", "test", workspace / "tree")
    folder = generate_dataset(x, y.numpy(), tmp_path / "c10c", ["brightness"], [1], progress=False)
    result = CliRunner().invoke(
        app,
        [
            "eval-c",
            str(workspace / "run"),
            "--cifar-c-dir",
            str(folder),
            "-c",
            "brightness",
            "-s",
            "1",
            "-n",
            "7",
            "--data-dir",
            str(workspace / "tree"),
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "note: --n-examples 7 is more than the 6 images per severity" in result.output
    doc = json.loads(result.output[result.output.index("{") :])
    assert doc["n_examples"] == 6 and doc["provenance"]["n_examples_requested"] == 7


def test_corrupt_on_a_tree_with_an_unknown_test_class(tmp_path):
    root = _tree(tmp_path / "tree", test_classes=("ant", "dog"))
    out = tmp_path / "c10c"
    result = CliRunner().invoke(
        app, ["corrupt", str(out), "-d", "imagefolder", "--data-dir", str(root), "-c", "fog"]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "dog" in lines[0] and "subset of the training classes" in lines[0]
    assert not out.exists()
