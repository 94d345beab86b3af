"""The model zoo as a table: what `robust models` shows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from robustcli.models.registry import count_parameters, create_model, get_model_spec, list_models

if TYPE_CHECKING:  # loaded by the functions: importing the zoo (e.g. for `robust --help`) is cheap
    import pandas as pd
    import torch


def count_macs(model: torch.nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one input, as the model is implemented.

    Counted with torch's FlopCounterMode (matrix products and convolutions; FLOPs / 2).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *input_shape))
    return int(counter.get_total_flops() // 2)


def models_table(pattern: str = "*", macs: bool = True) -> pd.DataFrame:
    """One row per registered model matching ``pattern``: name, family, backbone, parameters
    (counted on the built model), MACs at the model's input size, input shape and source."""
    import pandas as pd

    rows = []
    for name in list_models(pattern):
        spec = get_model_spec(name)
        model = create_model(name)
        row = {
            "name": name,
            "family": spec.family,
            "backbone": spec.backbone,
            "dataset": spec.dataset,
            "input": "x".join(map(str, spec.input_shape)),
            "params": count_parameters(model),
        }
        if macs:
            row["MACs"] = count_macs(model, spec.input_shape)
        paper = spec.source.get("paper", "").split(",")[0].replace(" et al.", "")
        row["source"] = f"{paper}: {spec.source.get('table', '')}"
        rows.append(row)
    return pd.DataFrame(rows)
