"""Shared fixtures: child Python processes and two-rank ``torchrun`` jobs on the CPU.

``child_env`` is the environment of a child process: one OpenMP thread (the tests compare runs
bit for bit, and the CPU is shared) and none of torchrun's variables, so that a test suite that
itself runs under torchrun does not make its children join that job. ``torchrun`` runs a script
under ``python -m torch.distributed.run --standalone`` (gloo on the CPU) and returns the
finished process; the tests assert on its return code and output themselves.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

#: torchrun's variables: a child that inherits them would try to join the parent's job.
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _keep_warning_format(monkeypatch: pytest.MonkeyPatch) -> None:
    """``robust``'s entry point makes warnings one line (``warnings.formatwarning``); tests that
    call it in-process get Python's format back afterwards."""
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)


@pytest.fixture
def child_env() -> dict[str, str]:
    """``os.environ`` for a child process: one thread, no torchrun variables."""
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in TORCHRUN_VARS:
        env.pop(var, None)
    return env


@pytest.fixture
def torchrun(
    tmp_path: Path, child_env: dict[str, str]
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``torchrun(source, *args, name=..., nproc=2, timeout=240)``: write ``source`` (dedented)
    to ``tmp_path/name`` and run it on ``nproc`` CPU ranks with ``args``."""

    def run(
        source: str,
        *args: str | Path,
        name: str = "ddp_script.py",
        nproc: int = 2,
        timeout: float = 240,
    ) -> subprocess.CompletedProcess[str]:
        script = tmp_path / name
        script.write_text(textwrap.dedent(source))
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(nproc),
            str(script),
            *map(str, args),
        ]
        return subprocess.run(cmd, env=child_env, capture_output=True, text=True, timeout=timeout)

    return run
