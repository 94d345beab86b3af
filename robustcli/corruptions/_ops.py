"""Batched tensor building blocks shared by the corruptions (one import point).

The code lives in three modules; this one re-exports their names so that the corruption
modules and the tests keep using ``_ops.<name>``:

- ``_core``: random numbers, the recipe's conversions, the constant-tensor cache, linear
  filters with SciPy/OpenCV border rules and ``scipy.ndimage.zoom`` as matrices;
- ``_replicas``: ImageMagick's motion blur and rounding, scikit-image's HSV conversions and
  Pillow's BOX resize, exactly;
- ``_opencv``: the OpenCV routines of the spatter corruption (Canny, distance transform, box
  blur, filter2D, equalizeHist), exactly.
"""

from __future__ import annotations

from robustcli.corruptions._core import (
    Tensor,
    apply_pixel_operator,
    border_index,
    cached,
    chunks,
    clipped_zoom_matrix,
    filter_matrix,
    gaussian_filter,
    gaussian_weights,
    pad2d,
    rand,
    randint,
    randn,
    separable,
    to_uint8,
    unit,
    zoom_blur_operator,
    zoom_separable,
)
from robustcli.corruptions._opencv import (
    cv_box3,
    cv_canny,
    cv_distance_transform_l2_5,
    cv_equalize_hist,
    cv_filter2d_u8,
)
from robustcli.corruptions._replicas import (
    MAGICK_SQ2PI,
    hsv_to_rgb,
    magick_round,
    motion_blur,
    motion_blur_kernel,
    motion_blur_offsets,
    pil_box_matrix,
    pil_resize_box,
    rgb_to_hsv,
)

__all__ = [
    "MAGICK_SQ2PI",
    "Tensor",
    "apply_pixel_operator",
    "border_index",
    "cached",
    "chunks",
    "clipped_zoom_matrix",
    "cv_box3",
    "cv_canny",
    "cv_distance_transform_l2_5",
    "cv_equalize_hist",
    "cv_filter2d_u8",
    "filter_matrix",
    "gaussian_filter",
    "gaussian_weights",
    "hsv_to_rgb",
    "magick_round",
    "motion_blur",
    "motion_blur_kernel",
    "motion_blur_offsets",
    "pad2d",
    "pil_box_matrix",
    "pil_resize_box",
    "rand",
    "randint",
    "randn",
    "rgb_to_hsv",
    "separable",
    "to_uint8",
    "unit",
    "zoom_blur_operator",
    "zoom_separable",
]
