"""The registry, model_zoo.yaml and `robust models` agree, with the papers' exact counts."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from robustcli.cli import app
from robustcli.errors import ModelNotFoundError
from robustcli.registry import (
    count_parameters,
    create_model,
    get_model_spec,
    list_models,
    zoo_path,
)

# Trainable-parameter counts published by the papers (paper A Table 3; paper B Table 1).
PAPER_COUNTS = {
    "pp-resnet20": 272_474,
    "ppattn-gelu-resnet20": 273_510,
    "ppattn-simam-gelu-resnet20": 272_474,
    "pp-densenet40": 176_122,
    "ppattn-gelu-densenet40": 176_962,
    "ppattn-simam-gelu-densenet40": 176_122,
}
PAPER_B_COUNTS = {
    "bu-lenetfc": 7_670,
    "td-lenetfc": 14_452,
    "bu-nin-light": 62_094,
    "td-nin-light": 212_670,
    "bu-resnet32": 467_946,
    "td-resnet32": 528_042,
    "td-uni-resnet32": 319_626,
    "td-rev-resnet32": 563_274,
    "bu-nin": 969_822,
    "td-nin": 3_368_478,
}

ALL = list_models()


@pytest.mark.parametrize(("name", "expected"), sorted(PAPER_COUNTS.items()))
def test_paper_a_parameter_counts(name, expected):
    assert count_parameters(create_model(name)) == expected


@pytest.mark.parametrize(("name", "expected"), sorted(PAPER_B_COUNTS.items()))
def test_paper_b_parameter_counts(name, expected):
    if name not in ALL:
        pytest.fail(f"{name} is not registered")
    assert count_parameters(create_model(name)) == expected


@pytest.mark.parametrize("name", ALL)
def test_zoo_count_matches_built_model(name):
    assert count_parameters(create_model(name)) == get_model_spec(name).params


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_at_input_shape(name):
    spec = get_model_spec(name)
    model = create_model(name).train()
    x = torch.randn(2, *spec.input_shape)
    out = model(x)
    assert out.shape == (2, spec.num_classes)
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_zoo_covers_every_paper_variant():
    for bb in ("resnet20", "densenet40"):
        for prefix in ("", "pp-", "pp-gelu-", "ppattn-", "ppattn-gelu-", "mspp-"):
            assert f"{prefix}{bb}" in ALL
        for name in ("ppattn-all-", "ppattn-gelu-all-", "ppattn-simam-gelu-"):
            assert f"{name}{bb}" in ALL
    for bb in ("lenetfc", "nin-light", "nin", "resnet32"):
        for arr in ("bu", "td", "td-uni", "td-rev"):
            assert f"{arr}-{bb}" in ALL


def test_variants_differ_as_the_paper_says():
    pp = create_model("pp-resnet20")
    attn = create_model("ppattn-gelu-resnet20")
    mspp = create_model("mspp-resnet20")
    assert pp.stem.rectify == "relu" and pp.stem.attention is None
    assert attn.stem.rectify == "none" and attn.stem.attention is not None
    assert isinstance(attn.act, torch.nn.GELU)
    assert type(mspp.stem).__name__ == "MultiScalePushPull" and mspp.stem.scales == (2.0, 3.0)
    # Block 1 only: stage 2 keeps plain convolutions
    assert isinstance(pp.layers[3].conv1, torch.nn.Conv2d)
    assert type(create_model("ppattn-all-resnet20").layers[8].conv2).__name__ == "PushPullConv2d"


def test_overrides_reach_the_builder():
    model = create_model("mspp-resnet20", pp={"scales": [2, 3, 4]}, num_classes=100)
    assert model.stem.scales == (2.0, 3.0, 4.0)
    assert model.fc.out_features == 100


def test_list_models_pattern():
    assert list_models("*resnet20") == [n for n in ALL if n.endswith("resnet20")]
    assert "mspp-densenet40" in list_models("mspp")
    assert list_models("no-such-thing") == []


def test_unknown_model_suggests_closest():
    with pytest.raises(ModelNotFoundError, match="did you mean.*mspp-resnet20"):
        create_model("msp-resnet20")
    with pytest.raises(ModelNotFoundError) as info:  # no close match: the list, no dangling "("
        create_model("zzzz")
    assert str(info.value) == f"unknown model 'zzzz': `robust models` lists all {len(ALL)} models"


runner = CliRunner()


def test_cli_models_json_lists_every_zoo_model():
    result = runner.invoke(app, ["models", "--json", "--no-macs"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    zoo = yaml.safe_load(zoo_path().read_text())["models"]
    assert sorted(r["name"] for r in records) == sorted(zoo)
    by_name = {r["name"]: r for r in records}
    assert all(by_name[n]["params"] == zoo[n]["params"] for n in zoo)


def test_cli_models_table_and_macs():
    result = runner.invoke(app, ["models", "*-resnet20", "--format", "csv"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("name,family,backbone,dataset,input,params,MACs,source")
    row = next(line for line in lines if line.startswith("pp-resnet20,"))
    assert ",272474," in row


def test_cli_unknown_model_pattern_exits_nonzero_without_traceback():
    result = runner.invoke(app, ["models", "zzz-unknown"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
