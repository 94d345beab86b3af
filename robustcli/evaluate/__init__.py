"""CIFAR-10-C evaluation (``robust eval-c``): accuracy under common corruptions.

The package, one module per step (each usable on its own; everything is re-exported here):

- ``selection``: ``select_corruptions("common" | "all" | "noise" | "fog,blur" ...)``,
  ``parse_severities("1-5")``, the count and seed checks, and ``resolve_checkpoint(path_or_name)``:
  a ``model.safetensors``, its run folder, or a registered model name whose checkpoint is stored
  under ``checkpoint_home()/<name>/model.safetensors``.
- ``sources``: ``OfficialSource`` (the Zenodo files, memory-mapped) and ``GeneratedSource``
  (corrupted on the fly from clean images with ``robustcli.corruptions``, seeded): where the
  images come from, as ``WorkItem`` chunks; ``load_clean`` for the clean test images.
- ``loop``: ``evaluate_corruptions(model, source, ...) -> Tally``: correct / total counts per
  (corruption, severity) and on the clean images; batched, under ``torch.inference_mode``, bf16
  autocast on GPUs, bf16 with near ties predicted again in fp32 (``bf16-checked``) on CPUs with
  native bf16, sharded over ``torchrun`` ranks (each rank takes every world-size-th chunk of
  work, the counts are all-reduced). The model runs in its inference form,
  ``robustcli.layers.fold.prepare_for_inference`` (exactly equal layers folded).
- ``metrics``: ``Tally``, ``summarize(tally)``, ``corruption_errors(result, baseline)``.
- ``report``: ``eval_c_document(...)``, the versioned result JSON; ``read_result`` (a
  ``--baseline``); ``corruption_table`` / ``summary_table`` (what the CLI renders);
  ``unaggregated_frame(doc)``, RobustBench's ``unaggregated_results.csv`` layout;
  ``write_eval_c(doc, out, force)``.
- ``run``: ``run_eval_c(checkpoint, ...)``: all of the above, what the CLI calls.
- ``paired``: per-image results (``--per-image``: a bit per image and cell in the document)
  and paired comparisons of two models on the same images: ``per_image_metrics``,
  ``paired_bootstrap`` (what ``robust compare --paired`` shows).

Accuracies in the result document are percentages (RobustBench's JSON uses percentages, its
unaggregated CSV fractions; so do we).
"""

from robustcli.evaluate.loop import default_batch_size, eval_precision, evaluate_corruptions
from robustcli.evaluate.metrics import Tally, corruption_errors, summarize
from robustcli.evaluate.report import (
    KIND,
    SCHEMA,
    SCHEMA_VERSION,
    check_outputs,
    corruption_table,
    eval_c_document,
    output_paths,
    read_result,
    summary_table,
    unaggregated_frame,
    write_eval_c,
)
from robustcli.evaluate.run import run_eval_c
from robustcli.evaluate.selection import (
    CHECKPOINTS_ENV,
    SELECTION_WORDS,
    check_count,
    check_seed,
    checkpoint_home,
    clamp_note,
    parse_severities,
    resolve_checkpoint,
    select_corruptions,
    stored_checkpoint,
)
from robustcli.evaluate.sources import (
    GENERATION_CHUNK,
    GeneratedSource,
    OfficialSource,
    WorkItem,
    clean_items,
    clean_provenance,
    load_clean,
    subset_indices,
)

# The inference form moved to robustcli.layers.fold; importable from here as before.
from robustcli.layers.fold import (
    FoldedMultiScalePushPull,
    fold_pushpull,
    folded_pushpull,
    fuse_conv_bn,
    prepare_for_inference,
)

__all__ = [
    "CHECKPOINTS_ENV",
    "GENERATION_CHUNK",
    "KIND",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SELECTION_WORDS",
    "FoldedMultiScalePushPull",
    "GeneratedSource",
    "OfficialSource",
    "Tally",
    "WorkItem",
    "check_count",
    "check_outputs",
    "check_seed",
    "checkpoint_home",
    "clamp_note",
    "clean_items",
    "clean_provenance",
    "corruption_errors",
    "corruption_table",
    "default_batch_size",
    "eval_c_document",
    "eval_precision",
    "evaluate_corruptions",
    "fold_pushpull",
    "folded_pushpull",
    "fuse_conv_bn",
    "load_clean",
    "output_paths",
    "parse_severities",
    "prepare_for_inference",
    "read_result",
    "resolve_checkpoint",
    "run_eval_c",
    "select_corruptions",
    "stored_checkpoint",
    "subset_indices",
    "summarize",
    "summary_table",
    "unaggregated_frame",
    "write_eval_c",
]
