"""The line display of long jobs (``--progress plain``): what a log file shows."""

import io

import pytest

from robustcli import progress
from robustcli.errors import RobustError
from robustcli.progress import ProgressLines, work_progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(progress.time, "monotonic", c)
    return c


def test_a_line_per_part_then_every_minute_within_one_then_done(clock):
    out = io.StringIO()
    with ProgressLines("eval-c", stream=out, every=60) as bar:
        task = bar.add_task("eval-c", total=400)
        clock.now += 10
        bar.update(task, description="fog s1", advance=100)  # new part: fog
        clock.now += 10
        bar.update(task, description="fog s2", advance=100)  # same part, 10 s later: quiet
        clock.now += 70
        bar.update(task, description="fog s3", advance=100)  # same part, 70 s later: a line
        clock.now += 30
        bar.update(task, description="snow s1", advance=50)  # new part
        bar.advance(task, 50)
    assert out.getvalue().splitlines() == [
        "eval-c: fog, 0/400 (0.0 %), 0:00:10 elapsed",
        "eval-c: fog, 200/400 (50.0 %), 0:01:30 elapsed, ~0:01:30 left",
        "eval-c: snow, 300/400 (75.0 %), 0:02:00 elapsed, ~0:00:40 left",
        "eval-c: done, 400/400 (100.0 %), 0:02:00 elapsed",
    ]


def test_no_done_line_after_an_error_or_no_work(clock):
    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt), ProgressLines("corrupt", stream=out) as bar:
        bar.add_task("fog s1", total=2)
        bar.advance(0, 1)
        raise KeyboardInterrupt
    with ProgressLines("corrupt", stream=out) as bar:
        bar.add_task("fog", total=0)
    assert out.getvalue() == ""


@pytest.mark.parametrize(
    ("mode", "kind", "shown"),
    [
        ("plain", ProgressLines, True),
        ("rich", None, True),
        (True, None, True),
        ("none", None, False),
        (False, None, False),
    ],
)
def test_work_progress_picks_the_display_of_each_mode(mode, kind, shown):
    display = work_progress(mode, "eval-c", "{task.description}")
    if kind is not None:
        assert isinstance(display, kind)
    else:  # a Rich bar, disabled for none / False
        assert display.disable is (not shown)


def test_work_progress_auto_follows_the_terminal_and_unknown_modes_are_refused(monkeypatch):
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False, raising=False)
    assert isinstance(work_progress("auto", "eval-c", "x"), ProgressLines)
    with pytest.raises(RobustError, match="unknown progress mode 'bars'"):
        work_progress("bars", "eval-c", "x")
