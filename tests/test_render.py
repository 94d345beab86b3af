"""Terminal output prints user text as it is: model labels, paths and module references are
neither Rich markup nor emoji codes (``td-lenetfc [high]`` lost its ``[high]``, a cell
``acc[/]`` raised MarkupError, ``package.module:factory:`` became a factory emoji)."""

from __future__ import annotations

import io

import pandas as pd
from rich.console import Console

from robustcli.progress import progress_bar
from robustcli.render import make_console, print_table, render, to_markdown, to_rich_table

LITERAL = ["td-lenetfc (untrained) [high]", "acc[/]", "x[bold]y", "pkg.mod:factory:"]


def _printed(renderable) -> str:
    # a console with Rich's defaults (markup and emoji on): the table itself must be literal
    buf = io.StringIO()
    Console(file=buf, width=200).print(renderable)
    return buf.getvalue()


def test_table_cells_headers_and_title_print_literally():
    df = pd.DataFrame({"model [x]": LITERAL, "v": [1.0, 2.0, 3.0, 4.0]})
    out = _printed(to_rich_table(df, title="robust attack: run[1] :fire:"))
    for text in [*LITERAL, "model [x]", "run[1] :fire:"]:
        assert text in out, text
    assert "1.00" in out and "4.00" in out


def test_table_markup_when_asked_and_render_default_console(capsys):
    # robust compare marks the best value with markup; its names are escaped by the caller
    df = pd.DataFrame({"metric": ["clean"], "a": ["[bold]91.20[/]"]})
    out = _printed(to_rich_table(df, markup=True))
    assert "91.20" in out and "[bold]" not in out
    render(pd.DataFrame({"model": LITERAL}), "table", title="t[1]")
    printed = capsys.readouterr().out
    assert all(text in printed for text in LITERAL) and "t[1]" in printed


def test_make_console_prints_text_as_it_is():
    buf = io.StringIO()
    console = make_console()
    console.file = buf
    console.print("nor package.module:factory: run[/]x", highlight=False)
    console.print("[bold]styled[/] run[1]", markup=True)
    assert buf.getvalue().splitlines() == ["nor package.module:factory: run[/]x", "styled run[1]"]


def test_progress_descriptions_and_stats_print_literally():
    bar = progress_bar(stats_field="stats", console=Console(file=io.StringIO()))
    bar.add_task("td-nin [high]/gaussian run[/]x :fire:", total=4, stats="acc[/] 99%")
    out = _printed(bar.make_tasks_table(bar.tasks))
    assert "td-nin [high]/gaussian run[/]x :fire:" in out and "acc[/] 99%" in out


def test_a_table_wider_than_the_console_is_printed_whole():
    label = "td-nin-light-cifar10-e3-s0 (checkpoint) [high]"
    df = pd.DataFrame({"model": [label], "median L2": [0.123456], "img/s": [1234.5]})
    for c in "abcdefgh":
        df[f"acc@{c}"] = [99.123]
    buf = io.StringIO()
    print_table(to_rich_table(df, floatfmt=".3g"), Console(file=buf, width=60))
    out = buf.getvalue()
    assert label in out and "0.123" in out and "1.23e+03" in out and "…" not in out
    assert max(len(line) for line in out.splitlines()) > 60
    # fits once its text wraps: printed within the console, the label's words whole
    narrow = io.StringIO()
    print_table(to_rich_table(df.iloc[:, :4], floatfmt=".3g"), Console(file=narrow, width=60))
    lines = narrow.getvalue().splitlines()
    assert max(map(len, lines)) <= 60 and "…" not in narrow.getvalue()
    cells = [line.split("│")[1] for line in lines if line.startswith("│")]
    assert len(cells) > 1 and "".join(cells).replace(" ", "") == label.replace(" ", "")
    assert "1.23e+03" in lines[3]


def test_on_a_terminal_long_words_fold_within_their_cells_numbers_stay_whole():
    label = "td-nin-light-cifar10-e3-s0 (checkpoint) [high]"
    df = pd.DataFrame({"model": [label], "median L2": [0.123456], "img/s": [1234.5]})
    df["acc@a"], df["acc@b"] = [99.123], [98.0]

    def shown(frame: pd.DataFrame) -> list[str]:
        buf = io.StringIO()
        console = Console(file=buf, width=60, force_terminal=True, color_system=None)
        print_table(to_rich_table(frame, floatfmt=".3g"), console)
        return buf.getvalue().splitlines()

    lines = shown(df)  # numbers need 44 columns of 60: the label folds into the other 16
    cells = [line.split("│")[1] for line in lines if line.startswith("│")]
    assert max(map(len, lines)) <= 60 and "".join(cells).replace(" ", "") == label.replace(" ", "")
    assert "1.23e+03" in lines[3] and "…" not in "".join(lines)
    for c in "cdefgh":  # too many numbers: the label would get under 8 columns
        df[f"acc@{c}"] = [97.0]
    lines = shown(df)
    assert label in "".join(lines) and max(map(len, lines)) > 60


def test_columns_of_formatted_numbers_never_wrap():
    # robust compare's cells are marked-up text; Rich narrows the widest wrapping columns first,
    # which split "1234567.8901 / 2345" over two lines before
    df = pd.DataFrame({"metric": ["abcdefghijkl"], "td [high]": ["[bold]1234567.89012345[/]"]})
    df["note"] = ["aaaa bbbb cccc dddd eeee ffff"]
    df.loc[1] = ["x", "-", "cut"]
    buf = io.StringIO()
    print_table(to_rich_table(df, markup=True), Console(file=buf, width=45))
    out = buf.getvalue()
    assert "1234567.89012345" in out and "[bold]" not in out and "td [high]" in out
    assert max(map(len, out.splitlines())) <= 45


def test_attack_table_names_each_branch(tmp_path):
    from typer.testing import CliRunner

    from robustcli.cli import app

    args = ["attack", "td-lenetfc", "--untrained", "--branch", "high,mid", "-n", "4"]
    args += ["-a", "contrast", "--no-progress", "-o", str(tmp_path / "a")]
    result = CliRunner().invoke(app, args)  # not a terminal: Rich lays out 80 columns
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows] == [
        "td-lenetfc (untrained) [high]",
        "td-lenetfc (untrained) [mid]",
    ]


def test_markdown_cells_cannot_break_the_table():
    import re

    md = to_markdown(pd.DataFrame({"model|name": ["a|b", "x\ny"], "v": [1.0, 2.0]}))
    lines = md.splitlines()
    assert len(lines) == 4  # header, rule, two rows
    assert all(len(re.findall(r"(?<!\\)\|", line)) == 3 for line in lines)
    assert "a\\|b" in md and "| x y |" in md and "model\\|name" in md
