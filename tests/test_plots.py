"""`robustcli.plots.save_figure`: the one figure saver (atomic, reproducible, closes it)."""

from __future__ import annotations

import pytest
from matplotlib.figure import Figure
from PIL import Image

from robustcli.errors import OutputExistsError
from robustcli.plots import save_figure


def _figure() -> Figure:
    fig = Figure(figsize=(2, 1.5))
    ax = fig.subplots()
    ax.plot([0, 1, 2], [1, 0, 2], marker="o")
    ax.set_title("curve")
    return fig


def test_stem_gets_one_file_per_format_and_bytes_repeat(tmp_path):
    a = save_figure(_figure(), tmp_path / "a" / "fig", formats=("png", "svg"))
    b = save_figure(_figure(), tmp_path / "b" / "fig", formats=("png", "svg"))
    assert [p.name for p in a] == ["fig.png", "fig.svg"]
    with Image.open(a[0]) as im:
        assert im.format == "PNG" and im.size == (300, 225)  # 2 x 1.5 in at the default 150 dpi
    svg = a[1].read_text()
    assert svg.lstrip().startswith("<?xml") and "<dc:date>" not in svg
    # no date and a fixed id salt: the same figure gives the same bytes
    for x, y in zip(a, b, strict=True):
        assert x.read_bytes() == y.read_bytes()
    assert not list(tmp_path.rglob("*.tmp*"))  # atomic writes leave no temporary file


def test_single_path_takes_the_format_of_its_suffix_png_without_one(tmp_path):
    (pdf,) = save_figure(_figure(), tmp_path / "fig.pdf")
    (bare,) = save_figure(_figure(), tmp_path / "fig", dpi=100)
    assert pdf.read_bytes()[:5] == b"%PDF-" and b"CreationDate" not in pdf.read_bytes()
    assert bare == tmp_path / "fig" and bare.read_bytes()[:4] == b"\x89PNG"
    with Image.open(bare) as im:
        assert im.size == (200, 150)


def test_an_existing_file_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "fig.svg").write_text("old")
    with pytest.raises(OutputExistsError, match="--force"):
        save_figure(_figure(), tmp_path / "fig", formats=("png", "svg"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.svg"]  # no PNG either
    assert (tmp_path / "fig.svg").read_text() == "old"
    save_figure(_figure(), tmp_path / "fig", formats=("png", "svg"), force=True)
    assert (tmp_path / "fig.svg").read_text() != "old"


def test_a_pyplot_figure_is_closed_after_saving(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    save_figure(fig, tmp_path / "fig.png")
    assert not plt.fignum_exists(fig.number)
