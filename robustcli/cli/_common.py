"""Shared CLI plumbing: one-line errors, consoles."""

from __future__ import annotations

import errno
import functools
import math
import os
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from robustcli.errors import RobustError
from robustcli.render import make_console, styled

console = make_console()
err_console = make_console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

# Environment failures while writing or reading files: what to do about each. Other OSErrors
# (and every other exception) stay tracebacks, since they point at bugs.
_OS_FIXES = {
    errno.ENOSPC: "free some disk space or write to another disk",
    errno.EDQUOT: "free some space within your quota or write to another disk",
    errno.EACCES: "fix the permissions or choose another path",
    errno.EPERM: "fix the permissions or choose another path",
    errno.EROFS: "the file system is read-only: choose a path on a writable one",
}


def os_error_line(exc: OSError) -> str | None:
    """``<path>: <reason>: <fix>`` for a disk-full or permission OSError, else ``None``."""
    fix = _OS_FIXES.get(exc.errno) if exc.errno is not None else None
    if fix is None:
        return None
    reason = exc.strerror or os.strerror(exc.errno)
    where = exc.filename if exc.filename is not None else "output"
    return f"{where}: {reason}: {fix}"


def guarded(func: F) -> F:
    """Turn a RobustError, or a disk-full / permission OSError, into one red line on stderr and
    exit code 2 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RobustError as exc:
            err_console.print(styled("error:", "bold red", str(exc)), soft_wrap=True)
            raise typer.Exit(code=2) from None
        except OSError as exc:
            line = os_error_line(exc)
            if line is None:
                raise
            err_console.print(styled("error:", "bold red", line), soft_wrap=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            err_console.print(styled("interrupted", "yellow"))
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def _num(x: float) -> str:
    """2**63 - 1 as digits, not 9.22337e+18."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def in_range(
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
) -> Callable[[Any], Any]:
    """A Typer ``callback`` that refuses a non-finite or out-of-range number (``None`` passes).

    ``typer.Option(None, "--lr", callback=in_range("--lr", 0, 10, low_open=True))`` turns
    ``--lr nan`` or ``--lr 1e30`` into a one-line usage error before any work starts.
    """

    def check(value: Any) -> Any:
        if value is None:
            return value
        v = float(value)
        bad = not math.isfinite(v)
        bad = bad or (low is not None and (v <= low if low_open else v < low))
        bad = bad or (high is not None and v > high)
        if bad:
            lo = "" if low is None else f"{'>' if low_open else '>='} {_num(low)}"
            hi = "" if high is None else f"<= {_num(high)}"
            rule = " and ".join(x for x in (lo, hi) if x) or "finite"
            raise typer.BadParameter(f"{name} {value} is out of range: give a number {rule}")
        return value

    return check


def exit_with_gate_report(report: Any) -> None:
    """Print a ``robustcli.gates`` report on stderr (one ``gate:`` line per failure, or the
    pass count) and exit with its code: what ``robust compare`` and ``robust study`` do with
    ``--gates``."""
    for line in report.lines():
        err_console.print(styled("gate:", "bold red", line), soft_wrap=True)
    if report.passed:
        err_console.print(
            f"gates passed: {len(report.rules)} rules, {report.checked} checks", highlight=False
        )
    raise typer.Exit(code=report.exit_code)
