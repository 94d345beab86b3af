"""`robust explain`: Grad-CAM, per-layer heatmaps, paper B's localization metric and the CLI.

Images are sklearn's real 8x8 handwritten digits throughout (no noise presented as data).
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from robustcli.errors import RobustError
from robustcli.explain import (
    conv_units,
    grad_cam,
    layer_heatmaps,
    localization_scores,
    normalize_heatmaps,
    resolve_layer,
)
from robustcli.registry import create_model


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.images, dtype=torch.float32) / 16.0, torch.tensor(d.target)


def _two_by_two(k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """16x16 canvases of four real digits; the label is the top-right digit's."""
    imgs, labels = _digits()
    idx = torch.randint(0, len(imgs), (k, 4), generator=gen)
    top = torch.cat([imgs[idx[:, 0]], imgs[idx[:, 1]]], dim=2)
    bottom = torch.cat([imgs[idx[:, 2]], imgs[idx[:, 3]]], dim=2)
    return torch.cat([top, bottom], dim=1)[:, None], labels[idx[:, 1]]


class RegionMask(nn.Module):
    """Zero everything outside ``region`` (given at input resolution; pooled to coarser maps)."""

    def __init__(self, region: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", region.float()[None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mask
        if m.shape[-1] != x.shape[-1]:
            m = F.avg_pool2d(m, m.shape[-1] // x.shape[-1])
        return x * m


def _region_classifier(region: torch.Tensor, gen: torch.Generator) -> nn.Sequential:
    """A conv net that sees only ``region``: masked input and masked feature maps, random conv
    filters, and a linear readout fitted by least squares to the top-right digit's label."""
    torch.manual_seed(0)
    c = 32
    net = nn.Sequential(
        RegionMask(region),
        nn.Conv2d(1, c, 3, padding=1),
        nn.ReLU(),
        RegionMask(region),  # "3": 16x16 map
        nn.MaxPool2d(2),
        nn.Conv2d(c, c, 3, padding=1),
        nn.ReLU(),
        RegionMask(region),  # "7": 8x8 map
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c, 10),
    ).eval()
    x, y = _two_by_two(1500, gen)
    with torch.no_grad():
        feats = net[:-1](x)
        design = torch.cat([feats, torch.ones(len(feats), 1)], dim=1)
        sol = torch.linalg.lstsq(design, F.one_hot(y, 10).float()).solution
        net[-1].weight.copy_(sol[:-1].T)
        net[-1].bias.copy_(sol[-1])
    return net


def test_heatmap_mass_lies_in_the_region_the_answer_depends_on():
    # The top-right quadrant: not symmetric under transposition or flips, so a heatmap that is
    # transposed or mirrored on its way to input resolution lands elsewhere and fails.
    region = torch.zeros(16, 16, dtype=torch.bool)
    region[:8, 8:] = True
    gen = torch.Generator().manual_seed(0)
    net = _region_classifier(region, gen)
    x, y = _two_by_two(200, gen)
    with torch.no_grad():
        accuracy = (net(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.6  # it really reads the top-right digit (chance: 0.1)

    for layer, per_image_min, overall_min in (("3", 0.999, 0.999), ("7", 0.8, 0.9)):
        res = grad_cam(net, x, layer=layer)
        assert res.heatmaps.shape == (200, 16, 16)
        assert not res.empty.any()
        mass = res.heatmaps.sum(dim=(1, 2))
        inside = (res.heatmaps * region).sum(dim=(1, 2))
        # full-resolution map: exactly inside; 8x8 map: bilinear upsampling may spill half a
        # feature pixel (one input pixel) over the region's edge, so >= 90% of all mass
        assert (inside / mass).min().item() >= per_image_min, layer
        assert (inside.sum() / mass.sum()).item() >= overall_min, layer
        opposite = torch.zeros_like(region)
        opposite[8:, :8] = True  # where a transposed map would put it (only its corner pixel
        assert (res.heatmaps * opposite).sum().item() <= 0.01 * mass.sum().item()  # may spill)


class TinyGapNet(nn.Module):
    """conv(stride 2) -> ReLU -> conv -> ReLU -> global average pool -> linear (no conv bias)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(8, 12, 3, padding=1, bias=False),
            nn.ReLU(),
        )
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_grad_cam_matches_the_closed_form_of_a_gap_linear_head_and_is_batch_independent():
    # For GAP -> linear, d y_c / d A_k[i, j] = W[c, k] / (h w): Grad-CAM weights are known exactly.
    net = TinyGapNet().eval()
    imgs, _ = _digits()
    x = imgs[:24, None]
    res = grad_cam(net, x, layer="features", batch_size=7)
    with torch.no_grad():
        acts = net.features(x)  # 24 x 12 x 4 x 4
        target = net(x).argmax(1)
    alpha = net.fc.weight.detach()[target] / (acts.shape[-2] * acts.shape[-1])
    raw = torch.einsum("nk,nkhw->nhw", alpha, acts)
    assert res.feature_size == (4, 4)
    torch.testing.assert_close(res.raw, raw, rtol=1e-5, atol=1e-6)
    up = F.interpolate(F.relu(raw)[:, None], size=(8, 8), mode="bilinear", align_corners=False)[
        :, 0
    ]
    torch.testing.assert_close(res.heatmaps, up / up.amax(dim=(1, 2), keepdim=True))
    assert torch.equal(res.targets, target)
    assert res.heatmaps.amax(dim=(1, 2)).eq(1).all() and res.heatmaps.min() >= 0
    # one image at a time gives the same maps; a fixed class changes them
    single = grad_cam(net, x, layer="features", batch_size=1)
    torch.testing.assert_close(single.heatmaps, res.heatmaps)
    other = grad_cam(net, x, layer="features", target=(int(target[0]) + 1) % 10)
    assert not torch.allclose(other.raw[0], res.raw[0])


def test_an_all_zero_map_stays_zero_and_is_flagged_empty():
    net = TinyGapNet().eval()
    imgs, _ = _digits()
    blank = torch.zeros(1, 1, 8, 8)  # a blank canvas: every bias-free activation is 0
    res = grad_cam(net, torch.cat([imgs[:1, None], blank]), layer="features")
    assert res.empty.tolist() == [False, True]
    assert torch.isfinite(res.heatmaps).all()
    assert res.heatmaps[1].eq(0).all() and res.heatmaps[0].max() == 1
    heat, empty = normalize_heatmaps(torch.full((1, 3, 3), -2.0), (6, 6))
    assert empty.item() and heat.eq(0).all()


FORWARD_ORDER = {
    "bu-lenetfc": ["stages.0.0", "stages.1.1", "stages.2.1", "head.0"],
    # TD: /4 stage, then per finer scale its branch conv, the merge, that scale's stage
    "td-lenetfc": [
        "low_stage.0",
        "branches.0",
        "merges.0.project",
        "merges.0.fuse.fuse",
        "stages.0.0",
        "branches.1",
        "merges.1.project",
        "merges.1.fuse.fuse",
        "stages.1.0",
        "head.0",
    ],
}


@pytest.mark.parametrize(("name", "last_size"), [("bu-lenetfc", 7), ("td-lenetfc", 28)])
def test_paper_b_heatmaps_have_the_input_shape_and_layers_run_in_forward_order(name, last_size):
    model = create_model(name).eval()
    imgs, _ = _digits()
    x = F.interpolate(imgs[:5, None], size=(28, 28), mode="bilinear", align_corners=False)
    x = (x - 0.1307) / 0.3081
    res = grad_cam(model, x)
    assert res.layer == model.last_conv_name
    assert res.heatmaps.shape == (5, 28, 28)  # the input size whatever the layer's size
    assert res.feature_size == (last_size, last_size)
    assert res.heatmaps.min() >= 0 and res.heatmaps.max() <= 1

    maps = layer_heatmaps(model, x[:1])  # paper B Fig. 7: every conv unit, one image
    assert [m.layer for m in maps] == FORWARD_ORDER[name]
    assert all(m.heatmaps.shape == (1, 28, 28) for m in maps)
    sizes = [m.feature_size[0] for m in maps]
    if name.startswith("bu"):  # fine to coarse
        assert sizes == [28, 14, 7, 7]
    else:  # coarse to fine: starts on the /4 input, ends at full resolution
        assert sizes[0] == 7 and sizes[-2:] == [28, 28]
    last = maps[FORWARD_ORDER[name].index(model.last_conv_name)]
    torch.testing.assert_close(last.heatmaps[0], res.heatmaps[0])  # same map as grad_cam


def test_unknown_or_unsuitable_layers_give_one_line_errors():
    model = create_model("td-lenetfc")
    with pytest.raises(RobustError) as err:
        resolve_layer(model, "stages.9")
    msg = str(err.value)
    assert "\n" not in msg and "stages.9" in msg and "--list-layers" in msg
    assert any(n in msg for n in conv_units(model))
    with pytest.raises(RobustError, match="not an N x C x H x W"):
        grad_cam(model, torch.zeros(1, 1, 28, 28), layer="head.2")  # Flatten: scores, no map


def test_localization_precision_and_recall_on_hand_made_masks():
    t = 0.2
    heat = np.zeros((4, 4, 4), dtype=np.float32)
    img = np.zeros((4, 1, 4, 4), dtype=np.uint8)
    # image 0: H = 6 pixels (values 0.21..1), O = 4 pixels, overlap 3 -> P = 3/6, R = 3/4
    heat[0, 0, :] = [1.0, 0.5, 0.21, 0.2]  # 0.2 itself is not above t
    heat[0, 1, :3] = [0.9, 0.3, 0.25]
    img[0, 0, 0, 0] = img[0, 0, 1, 1] = img[0, 0, 1, 2] = 255
    img[0, 0, 3, 3] = 52  # 52/255 > 0.2: object, outside H
    img[0, 0, 2, 2] = 51  # 51/255 == 0.2: background
    # image 1: empty heatmap (everything <= t) -> precision 0, recall 0
    heat[1] = 0.2
    img[1, 0, 0, :2] = 200
    # image 2: no object pixels -> excluded from both averages
    heat[2, 0, 0] = 1.0
    # image 3: misclassified by one of the models -> not kept
    heat[3] = 1.0
    img[3] = 255
    keep = np.array([True, True, True, False])

    s = localization_scores(heat, img, keep=keep, threshold=t, object_threshold=t)
    assert s.precision.tolist() == [0.5, 0.0]
    assert s.recall.tolist() == [0.75, 0.0]
    summary = s.summary()
    assert summary["images"] == 2
    assert summary["precision"] == 0.25 and summary["recall"] == 0.375
    assert summary["pooled_precision"] == 3 / 6 and summary["pooled_recall"] == 3 / 6
    assert summary["empty_heatmaps"] == 1 and summary["excluded_empty_object"] == 1
    # float images in [0, 1] give the same answer; so do torch tensors
    s2 = localization_scores(
        torch.from_numpy(heat), torch.from_numpy(img).float() / 255, keep=torch.from_numpy(keep)
    )
    assert s2.summary() == summary


def _fitted_gap_net(seed: int) -> TinyGapNet:
    """TinyGapNet with random convs and a least-squares linear readout: a real digit classifier."""
    from robustcli.data import load_dataset

    torch.manual_seed(seed)
    net = TinyGapNet().eval()
    x, y = load_dataset("digits", "train")
    with torch.no_grad():
        feats = net.features(x.float() / 255).mean(dim=(2, 3))
        design = torch.cat([feats, torch.ones(len(feats), 1)], dim=1)
        sol = torch.linalg.lstsq(design, F.one_hot(y, 10).float()).solution
        net.fc.weight.copy_(sol[:-1].T)
        net.fc.bias.copy_(sol[-1])
    return net


def test_localization_report_keeps_only_images_every_model_gets_right():
    from robustcli.data import load_dataset
    from robustcli.explain import ExplainModel, localization_report

    x, y = load_dataset("digits", "test")
    nets = [_fitted_gap_net(1), _fitted_gap_net(2)]
    models = [
        ExplainModel(net, f"net{i}", "test", (0.0,), (1.0,), (1, 8, 8))
        for i, net in enumerate(nets)
    ]
    frame, doc, fig = localization_report(models, ["features", "features"], x, y)

    with torch.no_grad():
        right = [net(x.float() / 255).argmax(1) == y for net in nets]
    keep = (right[0] & right[1]).numpy()
    assert right[0].float().mean() > 0.5 and 0 < keep.sum() < len(y)
    assert doc["images_correct_by_all"] == int(keep.sum()) and doc["images_evaluated"] == len(y)
    for i, net in enumerate(nets):
        heat = grad_cam(net, x.float() / 255, layer="features").heatmaps
        want = localization_scores(heat, x, keep=keep).summary()
        got = frame.iloc[i].to_dict()
        assert got["images"] == want["images"] <= keep.sum()
        for key in ("precision", "recall", "pooled_precision", "pooled_recall"):
            assert got[key] == pytest.approx(want[key])
            assert 0 < got[key] <= 1
    assert fig is not None


def _save_checkpoint(path, name: str) -> None:
    from robustcli.checkpoint import save_checkpoint
    from robustcli.data import dataset_info, input_adapter
    from robustcli.registry import resolve_config

    info = dataset_info("digits")
    adapter = input_adapter(info.input_shape, (1, 28, 28))
    mean, std = adapter.normalization(info.mean, info.std)
    torch.manual_seed(0)
    save_checkpoint(
        path,
        create_model(name),
        model_name=name,
        config=resolve_config(name),
        dataset="digits",
        normalization={"mean": mean, "std": std},
        input=adapter,
    )


def test_cli_writes_figures_json_and_the_localization_table(tmp_path):
    from robustcli.cli import app

    td, bu = tmp_path / "td.safetensors", tmp_path / "bu.safetensors"
    _save_checkpoint(td, "td-lenetfc")
    _save_checkpoint(bu, "bu-lenetfc")
    out = tmp_path / "explain"
    runner = CliRunner()
    args = ["explain", str(td), "--vs", str(bu), "--images", "3", "--out", str(out)]
    args += ["--localization", "--limit", "40", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "precision" in result.output

    figures = ["overlays.png", "layers.png"]
    if (out / "localization.png").exists():  # only when some image is right for both models
        figures.append("localization.png")
    for name in figures:
        with Image.open(out / name) as im:
            im.verify()
        with Image.open(out / name) as im:
            assert im.format == "PNG" and min(im.size) > 100
    doc = json.loads((out / "explain.json").read_text())
    assert (doc["schema"], doc["schema_version"], doc["kind"]) == ("robustcli-result", 1, "explain")
    assert [m["role"] for m in doc["models"]] == ["model", "vs"]
    assert [m["feature_size"] for m in doc["models"]] == [[28, 28], [7, 7]]
    assert doc["config"]["dataset"] == "digits" and len(doc["images"]) == 3
    assert doc["localization"]["images_evaluated"] == 40
    assert (out / "localization.csv").read_text().startswith("model,layer,images,precision")
    assert {"robustcli", "torch", "command"} <= set(doc["provenance"])
    arrays = np.load(out / "heatmaps.npz")
    assert arrays["model_heatmaps"].shape == arrays["vs_heatmaps"].shape == (3, 28, 28)

    again = runner.invoke(app, args)  # the folder is not empty now
    assert again.exit_code == 2 and "--force" in again.output


def test_cli_wants_untrained_spelled_out_for_model_names():
    from robustcli.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["explain", "td-lenetfc", "--list-layers"])
    assert result.exit_code == 2 and "--untrained" in result.output
    result = runner.invoke(app, ["explain", "td-lenetfc", "--untrained", "--list-layers"])
    assert result.exit_code == 0, result.output
    assert "RANDOM" in result.output and "stages.1.0" in result.output


def test_read_result_of_a_missing_or_foreign_file_is_one_line(tmp_path):
    from robustcli.explain import read_result

    with pytest.raises(RobustError, match="explain result .*missing.json not found"):
        read_result(tmp_path / "missing.json")  # was a FileNotFoundError traceback
    other = tmp_path / "other.json"
    other.write_text(
        json.dumps({"schema": "robustcli-result", "schema_version": 1, "kind": "train"})
    )
    with pytest.raises(RobustError, match="is a 'train' result, not 'explain'"):
        read_result(other)
    other.write_text("[]")
    with pytest.raises(RobustError, match="not a JSON object"):
        read_result(other)  # was an AttributeError
