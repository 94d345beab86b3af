"""Per-image eval-c results (``--per-image``) and paired bootstrap comparisons.

A model that reads its answer from the top-left pixel makes every image's correctness known in
advance: the recorded bits must be exactly those images, at their positions, whatever the
batching, the chunks spanning severities and the CPU workers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustcli.errors import DataError
from robustcli.evaluate import OfficialSource, eval_c_document, evaluate_corruptions
from robustcli.evaluate.paired import (
    encode_per_image,
    paired_bootstrap,
    per_image_metrics,
    per_image_results,
)
from robustcli.results import document_metrics

MEAN, STD = (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)  # normalised input = pixel value
N = 23  # images per severity: not a multiple of the batch sizes below
NAMES = ["gaussian_noise", "fog", "contrast"]


class PixelReader(nn.Module):
    """Predicts the class written in the top-left red pixel (0..9)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(x[:, 0, 0, 0].round().long().clamp(0, 9), 10).float()


def _images(labels: np.ndarray, right: np.ndarray) -> np.ndarray:
    x = np.zeros((len(labels), 32, 32, 3), dtype=np.uint8)
    x[:, 0, 0, 0] = np.where(right, labels, (labels + 1) % 10)
    return x


def _known(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random right / wrong patterns: (corruptions, 5 severities, N) and clean (N,)."""
    rng = np.random.default_rng(seed)
    return rng.random((len(NAMES), 5, N)) < 0.6, rng.random(N) < 0.8


def _dataset(root, seed: int):
    """A CIFAR-10-C folder whose images the PixelReader gets right exactly where ``_known``."""
    cells, clean = _known(seed)
    labels = np.arange(N, dtype=np.uint8) % 10
    np.save(root / "labels.npy", np.tile(labels, 5))
    for i, name in enumerate(NAMES):
        np.save(root / f"{name}.npy", np.concatenate([_images(labels, r) for r in cells[i]]))
    x = torch.from_numpy(_images(labels, clean)).permute(0, 3, 1, 2).contiguous()
    return (x, torch.from_numpy(labels).long()), cells, clean


def _document(root, seed: int, severities=(1, 2, 3, 4, 5), **kw) -> dict:
    clean_data, _, _ = _dataset(root, seed)
    tally = evaluate_corruptions(
        PixelReader(),
        OfficialSource(root, NAMES),
        mean=MEAN,
        std=STD,
        corruptions=NAMES,
        severities=severities,
        clean=clean_data,
        per_image=True,
        **kw,
    )
    prov = {"corrupted_data": {"source": "official"}, "clean_data": {"dataset": "cifar10"}}
    doc = eval_c_document(tally, model={"name": f"reader-{seed}"}, provenance=prov)
    return {**doc, "_source": f"doc{seed}.json"}


@pytest.mark.parametrize("batch_size,workers", [(1000, 1), (7, 1), (5, 2)])
def test_bits_are_the_known_images(tmp_path, batch_size, workers):
    _, cells, clean = _dataset(tmp_path, 0)
    tally = evaluate_corruptions(
        PixelReader(),
        OfficialSource(tmp_path, NAMES),
        mean=MEAN,
        std=STD,
        corruptions=NAMES,
        clean=_dataset(tmp_path, 0)[0],
        batch_size=batch_size,
        workers=workers,
        per_image=True,
    )
    assert tally.hits is not None and tally.clean_hits is not None
    assert (tally.hits == cells).all() and (tally.clean_hits == clean).all()
    assert (tally.hits.sum(axis=2) == tally.correct).all()  # the counts are the bits' sums


def test_bits_follow_a_severity_subset_and_first_n(tmp_path):
    _, cells, clean = _dataset(tmp_path, 1)
    tally = evaluate_corruptions(
        PixelReader(),
        OfficialSource(tmp_path, NAMES),
        mean=MEAN,
        std=STD,
        corruptions=NAMES[1:],
        severities=[2, 5],
        n_examples=11,
        batch_size=4,
        per_image=True,
    )
    assert tally.hits is not None and tally.hits.shape == (2, 2, 11)
    assert (tally.hits == cells[1:, [1, 4], :11]).all()
    assert tally.clean_hits is None  # evaluated without clean images
    off = evaluate_corruptions(
        PixelReader(), OfficialSource(tmp_path, NAMES), mean=MEAN, std=STD, corruptions=NAMES
    )
    assert off.hits is None and off.clean_hits is None  # nothing recorded unless asked


def test_document_round_trip_and_per_image_metrics_average_to_the_document(tmp_path):
    doc = _document(tmp_path, 2)
    cells, clean = _known(2)
    p = per_image_results(doc)
    assert p.n == N and p.corruptions == tuple(NAMES) and p.severities == (1, 2, 3, 4, 5)
    assert (p.cells == cells).all() and (p.clean == clean).all()
    frame = per_image_metrics(doc)
    assert frame.shape[0] == N
    metrics = document_metrics(doc)["reader-2"]
    assert set(frame.columns) == set(metrics)
    for name, value in metrics.items():
        assert frame[name].mean() == pytest.approx(value, abs=1e-9), name
    # one image by hand: its fog column is the mean of its 5 fog severities
    assert frame.at[4, "corruption:fog"] == pytest.approx(100.0 * cells[1, :, 4].mean())
    assert frame.at[4, "clean_acc"] == (100.0 if clean[4] else 0.0)


def test_paired_bootstrap_closed_forms(tmp_path):
    a = _document(tmp_path, 3)
    same = paired_bootstrap(a, a, n_boot=200)
    assert (same["delta"] == 0).all() and (same["ci_low"] == 0).all()
    assert (same["ci_high"] == 0).all()
    assert same.loc["clean_acc", "a"] == pytest.approx(a["clean_acc"])

    # every image right in one and wrong in the other: the difference is 100 on any resample
    p = per_image_results(a)
    ones = np.ones(N, dtype=bool)
    right = {
        **a,
        "per_image": encode_per_image(p.corruptions, p.severities, np.ones_like(p.cells), ones),
    }
    wrong = {
        **a,
        "per_image": encode_per_image(p.corruptions, p.severities, np.zeros_like(p.cells), ~ones),
        "_source": "wrong.json",
    }
    r = paired_bootstrap(right, wrong, n_boot=100)
    assert np.allclose(r["delta"], 100.0) and np.allclose(r[["ci_low", "ci_high"]], 100.0)
    assert np.allclose(paired_bootstrap(wrong, right, n_boot=100)["ci_high"], -100.0)


def test_paired_bootstrap_interval_matches_the_binomial_standard_error(tmp_path):
    """a right on every image, b on every other one: the per-image difference is 0 / 100 with
    p = 1/2, so the 95 % interval's half-width is close to 1.96 * 100 * sqrt(p (1 - p) / n)."""
    doc = _document(tmp_path, 4)
    big = 4000
    b_bits = np.zeros((1, 1, big), dtype=bool)
    b_bits[..., ::2] = True
    base = {k: v for k, v in doc.items() if k != "per_image"}
    base.update(corruptions=["fog"], severities=[3], n_examples=big)
    a = {**base, "per_image": encode_per_image(("fog",), (3,), np.ones_like(b_bits), None)}
    b = {**base, "per_image": encode_per_image(("fog",), (3,), b_bits, None), "_source": "b"}
    r = paired_bootstrap(a, b, n_boot=2000, seed=1).loc["corruption:fog"]
    assert r["delta"] == pytest.approx(50.0)
    half = 1.96 * 100.0 * math.sqrt(0.25 / big)  # 1.55 points
    assert (r["ci_high"] - r["ci_low"]) / 2 == pytest.approx(half, rel=0.15)
    assert r["ci_low"] < 50.0 < r["ci_high"]


def test_paired_comparison_refuses_other_images(tmp_path):
    a = _document(tmp_path, 5)
    plain = {k: v for k, v in a.items() if k != "per_image"}
    with pytest.raises(DataError, match="has no per-image results: evaluate with .*--per-image"):
        paired_bootstrap(a, plain)
    other = {
        **a,
        "provenance": {**a["provenance"], "corrupted_data": {"source": "generated", "seed": 1}},
    }
    with pytest.raises(DataError, match="not the same images"):
        paired_bootstrap(a, other)
    fewer = _document(tmp_path, 5, n_examples=10)
    with pytest.raises(DataError, match="10"):
        paired_bootstrap(a, fewer)
    broken = {**a, "per_image": {**a["per_image"], "clean": "%%%"}}
    with pytest.raises(DataError, match="not base64"):
        per_image_results(broken)
    short = {**a, "per_image": {**a["per_image"], "n": N + 9}}
    with pytest.raises(DataError, match="bits for"):
        per_image_results(short)


def test_generated_source_bits_sit_at_their_images(monkeypatch):
    """--generate: chunks of GENERATION_CHUNK images per severity; each chunk's bits land at
    its images (checked against the model run on each chunk's own images)."""
    from robustcli.evaluate import GeneratedSource, sources

    monkeypatch.setattr(sources, "GENERATION_CHUNK", 4)  # several chunks per severity
    labels = torch.arange(N) % 10
    right = torch.from_numpy(np.random.default_rng(7).random(N) < 0.5)
    x = torch.from_numpy(_images(labels.numpy(), right.numpy())).permute(0, 3, 1, 2).contiguous()
    source = GeneratedSource(x, labels)
    kw = {"corruptions": ["brightness", "contrast"], "severities": [2, 4], "n_examples": 10}
    tally = evaluate_corruptions(
        PixelReader(), source, mean=MEAN, std=STD, batch_size=3, per_image=True, **kw
    )
    expected = np.zeros((2, 2, 10), dtype=bool)
    model = PixelReader()
    for item in source.items(kw["corruptions"], kw["severities"], 10, 3):
        images, y, sev = item.load()
        pred = model(images.float())  # the normalised input is the pixel value
        si, lo = int(sev[0]), item.offset - int(sev[0]) * 10
        expected[item.row, si, lo : lo + item.size] = (pred.argmax(1) == y).numpy()
    assert tally.hits is not None and (tally.hits == expected).all()
    assert 0 < expected.sum() < expected.size  # both outcomes occur
