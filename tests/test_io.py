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


def test_read_json_object_words_each_problem_in_one_line_with_the_fix(tmp_path):
    import gzip

    from robustcli.errors import DataError
    from robustcli.io import read_json_object

    def error(path) -> str:
        with pytest.raises(DataError) as info:
            read_json_object(path, what="thing", fix="do X")
        message = str(info.value)
        assert "\n" not in message and message.endswith(": do X")
        return message

    plain = tmp_path / "a.json"
    plain.write_text('{"v": 1}')
    gz = tmp_path / "a.json.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    assert read_json_object(plain, what="thing", fix="do X") == {"v": 1}
    assert read_json_object(gz, what="thing", fix="do X") == {"v": 1}

    assert error(tmp_path / "missing.json") == f"thing {tmp_path / 'missing.json'} not found: do X"
    (tmp_path / "bad.json").write_text('{"v": ')
    assert error(tmp_path / "bad.json").startswith(f"thing {tmp_path / 'bad.json'} is not readable")
    (tmp_path / "latin.json").write_bytes(b'{"v": "\xff"}')
    assert "not readable JSON" in error(tmp_path / "latin.json")
    gz.write_bytes(gzip.compress(plain.read_bytes())[:-5])
    assert "not readable JSON" in error(gz)
    (tmp_path / "list.json").write_text("[1, 2]")
    assert error(tmp_path / "list.json").endswith("list.json is not a JSON object: do X")
