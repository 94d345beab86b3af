"""Grad-CAM heatmaps and paper B's weakly supervised localization (Exp. 3, Figs. 7-9).

Grad-CAM (Selvaraju et al. 2017) for a class ``c`` at a layer with activation ``A`` (``N x K x h
x w``): channel weights ``alpha_k = mean_{ij} d y_c / d A_k[i, j]``, map ``L = ReLU(sum_k alpha_k
A_k)``, upsampled bilinearly to the input size and divided by its maximum per image, so every
heatmap lies in [0, 1]. A map with no positive evidence (``L`` zero everywhere) stays all zero
and is flagged ``empty``; it is never rescaled to look like a real map.

- ``grad_cam(model, x, layer=..., target=...)``: batched heatmaps at one layer (default: the
  model's ``last_conv_name``, paper B's choice, else its last conv unit).
- ``layer_heatmaps(model, x)``: Grad-CAM at every conv unit in forward order (paper B, Fig. 7),
  from one forward and one backward pass.
- ``localization_scores(heatmaps, images)``: paper B's Fig. 9 metric (precision and recall of the
  heatmap thresholded at ``t = 0.2`` against the thresholded object); see ``docs/explain.md``.
- ``run_explain(...)``: what ``robust explain`` does: load checkpoints and data, write overlay
  figures (Fig. 8 layout), the per-layer grid (Fig. 7), heatmaps, localization and one JSON.

Models take normalised input (the project contract); heatmaps are at the model's input size.

Modules: ``gradcam`` (layers and heatmaps, on any ``nn.Module``), ``localization`` (masks,
precision / recall, the Fig. 9 report), ``model`` (loading what to explain: ``ExplainModel``),
``figures`` (Figs. 7-9 as matplotlib figures), ``run`` (``run_explain`` and ``explain.json``).
Every public name is importable from ``robustcli.explain`` itself.
"""

from robustcli.explain.figures import (
    HeatmapRow,
    plot_layer_grid,
    plot_localization,
    plot_overlays,
    save_figure,
)
from robustcli.explain.gradcam import (
    NORMALIZATIONS,
    GradCAMResult,
    LayerHeatmap,
    Normalization,
    Target,
    conv_units,
    default_layer,
    describe_layers,
    grad_cam,
    layer_heatmaps,
    normalize_heatmaps,
    resolve_layer,
)
from robustcli.explain.localization import (
    HEATMAP_THRESHOLD,
    LOCALIZATION_DEFINITION,
    OBJECT_THRESHOLD,
    LocalizationScores,
    localization_counts,
    localization_masks,
    localization_report,
    localization_scores,
    scores_from_counts,
)
from robustcli.explain.model import ExplainModel, load_explain_model, model_inputs
from robustcli.explain.run import (
    KIND,
    OUTPUT_FILES,
    ROLES,
    SCHEMA,
    SCHEMA_VERSION,
    ExplainReport,
    check_out_dir,
    jsonable,
    provenance,
    read_result,
    run_explain,
)

__all__ = [
    "HEATMAP_THRESHOLD",
    "KIND",
    "LOCALIZATION_DEFINITION",
    "NORMALIZATIONS",
    "OBJECT_THRESHOLD",
    "OUTPUT_FILES",
    "ROLES",
    "SCHEMA",
    "SCHEMA_VERSION",
    "ExplainModel",
    "ExplainReport",
    "GradCAMResult",
    "HeatmapRow",
    "LayerHeatmap",
    "LocalizationScores",
    "Normalization",
    "Target",
    "check_out_dir",
    "conv_units",
    "default_layer",
    "describe_layers",
    "grad_cam",
    "jsonable",
    "layer_heatmaps",
    "load_explain_model",
    "localization_counts",
    "localization_masks",
    "localization_report",
    "localization_scores",
    "model_inputs",
    "normalize_heatmaps",
    "plot_layer_grid",
    "plot_localization",
    "plot_overlays",
    "provenance",
    "read_result",
    "resolve_layer",
    "run_explain",
    "save_figure",
    "scores_from_counts",
]
