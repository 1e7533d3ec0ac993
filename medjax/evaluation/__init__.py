"""Evaluation: segmentation, classification and detection metrics, accumulators, sliding-window inference.

Metrics are pure numpy functions (each also wrapped by an accumulator). Sliding-window inference is JAX; it is
imported on first use so that the numpy metrics load without JAX.
"""

from medjax.evaluation.accumulators import (
    ClassificationAccumulator,
    DetectionAccumulator,
    SegmentationAccumulator,
    json_safe,
)
from medjax.evaluation.classification import accuracy, auroc, confusion_matrix, sensitivity, specificity
from medjax.evaluation.detection import (
    average_precision,
    froc,
    froc_curve,
    froc_sensitivity,
    iou3d,
    mean_ap,
    nms3d,
    nms3d_padded,
)
from medjax.evaluation.segmentation import (
    dice,
    foreground_labels,
    global_dice,
    hausdorff,
    hd95,
    nsd,
    per_label,
    surface_distances,
    surface_voxels,
)

_LAZY = {"sliding_window_inference", "importance_map", "window_starts"}


def __getattr__(name):
    if name in _LAZY:
        from medjax.evaluation import sliding_window

        return getattr(sliding_window, name)
    raise AttributeError(f"module 'medjax.evaluation' has no attribute {name!r}")


__all__ = [
    "ClassificationAccumulator",
    "DetectionAccumulator",
    "SegmentationAccumulator",
    "accuracy",
    "auroc",
    "average_precision",
    "confusion_matrix",
    "dice",
    "foreground_labels",
    "froc",
    "froc_curve",
    "froc_sensitivity",
    "global_dice",
    "hausdorff",
    "hd95",
    "importance_map",
    "iou3d",
    "json_safe",
    "mean_ap",
    "nms3d",
    "nms3d_padded",
    "nsd",
    "per_label",
    "sensitivity",
    "sliding_window_inference",
    "specificity",
    "surface_distances",
    "surface_voxels",
    "window_starts",
]
