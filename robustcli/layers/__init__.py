"""Network layers (push-pull, multi-scale push-pull, attention, top-down, the fused CPU
kernel) and ``fold``, their exactly equal inference form."""

from robustcli.layers.fold import (
    FoldedMultiScalePushPull,
    fold_pushpull,
    folded_pushpull,
    fuse_conv_bn,
    prepare_for_inference,
)

__all__ = [
    "FoldedMultiScalePushPull",
    "fold_pushpull",
    "folded_pushpull",
    "fuse_conv_bn",
    "prepare_for_inference",
]
