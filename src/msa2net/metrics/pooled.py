"""ISIC 2018: pixels pooled over a split (confusion counts, DSC, IoU, ...) and the post-process of that protocol."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ._masks import _as_mask, _mask_pair

# ----------------------------------------------------------------------------------------------
# ISIC: pooled binary metrics
# ----------------------------------------------------------------------------------------------


def binary_confusion(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int, int]:
    """``(tp, fp, fn, tn)`` pixel counts (Python ints) of a thresholded prediction against the ground truth."""
    pred_mask, gt_mask = _mask_pair(pred, gt)
    tp = int(np.count_nonzero(pred_mask & gt_mask))
    fp = int(np.count_nonzero(pred_mask)) - tp
    fn = int(np.count_nonzero(gt_mask)) - tp
    tn = int(pred_mask.size) - tp - fp - fn
    return tp, fp, fn, tn


def _ratio(numerator: int, denominator: int) -> float:
    return float(numerator / denominator) if denominator else float("nan")


def pooled_binary_metrics(confusion: Sequence[int]) -> dict[str, float]:
    """``dsc``, ``iou``, ``sensitivity``, ``specificity`` and ``accuracy`` of ``(tp, fp, fn, tn)`` counts pooled over a
    test set (the ISIC protocol); each is NaN when its denominator is zero."""
    counts = tuple(int(v) for v in confusion)
    if len(counts) != 4 or any(v < 0 for v in counts):
        raise ValueError(f"confusion must be four non-negative counts (tp, fp, fn, tn), found {tuple(confusion)}")
    tp, fp, fn, tn = counts
    return {
        "dsc": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
    }


def isic_postprocess(mask: np.ndarray, opening: int = 6) -> np.ndarray:
    """Post-processing of the D-LKA / DAE-Former skin-lesion code: binary opening with an ``opening``-sided square
    (0 skips it), then hole filling, of a 2D mask."""
    array = _as_mask(mask)
    if array.ndim != 2:
        raise ValueError(f"isic_postprocess expects one 2D mask (H, W), found shape {array.shape}")
    if int(opening) < 0:
        raise ValueError(f"opening must be a non-negative size in pixels, found {opening}")
    if opening:
        array = ndimage.binary_opening(array, structure=np.ones((int(opening), int(opening)), dtype=bool))
    return ndimage.binary_fill_holes(array)
