"""Atomic writes and output checks shared by every command."""

from __future__ import annotations

import json
import os
import stat

import pytest

from robustcli.errors import OutputExistsError
from robustcli.io import atomic_write, atomic_write_json, check_output


def test_atomic_write_replaces_only_on_success(tmp_path):
    path = tmp_path / "result.json"
    atomic_write_json(path, {"v": 1})
    with pytest.raises(RuntimeError), atomic_write(path) as fh:
        fh.write('{"v": 2, "trunc')
        raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temp file left


def test_atomic_write_uses_default_permissions(tmp_path):
    path = tmp_path / "out.json"
    atomic_write_json(path, [])
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_check_output_refuses_existing_without_force(tmp_path):
    path = tmp_path / "x.csv"
    assert check_output(path, force=False) == path
    path.write_text("keep me")
    with pytest.raises(OutputExistsError, match="--force"):
        check_output(path, force=False)
    assert check_output(path, force=True) == path
    assert path.read_text() == "keep me"
